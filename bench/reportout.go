package bench

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// WritePlots draws, for every route set, forwarded Mpps and loss % against
// frame size, one line per scenario (like the router text's figures), and
// writes them into dir as SVG and PNG. It returns the files written.
func WritePlots(dir string, r *SweepReport) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var files []string
	for _, rs := range r.Routes {
		for _, what := range []string{"pps", "loss"} {
			p := plot.New()
			p.Title.Text = fmt.Sprintf("IPv%d forwarding, %s", r.Family, routesTitle(rs.Routes))
			p.X.Label.Text = "frame size (bytes, FCS included)"
			if what == "pps" {
				p.Y.Label.Text = fmt.Sprintf("forwarded Mpps (median of %d)", r.Repeats)
			} else {
				p.Y.Label.Text = "loss % at the generator's maximum rate"
			}
			p.Legend.Top = true
			var ticks []plot.Tick
			for _, size := range r.Sizes {
				ticks = append(ticks, plot.Tick{Value: float64(size), Label: fmt.Sprint(size)})
			}
			p.X.Tick.Marker = plot.ConstantTicks(ticks)
			ymax := 0.0
			var lines []any
			for _, sc := range r.Scenarios {
				var xys plotter.XYs
				for _, pt := range rs.Points {
					if pt.Scenario != sc.Name {
						continue
					}
					y := pt.MedianPPS / 1e6
					if what == "loss" {
						y = pt.MedianLoss
					}
					xys = append(xys, plotter.XY{X: float64(pt.Size), Y: y})
					ymax = max(ymax, y)
				}
				if len(xys) > 0 {
					lines = append(lines, sc.Name, xys)
				}
			}
			if err := plotutil.AddLinePoints(p, lines...); err != nil {
				return nil, fmt.Errorf("plot %s: %w", what, err)
			}
			// Room above the lines for the legend.
			p.Y.Min, p.Y.Max = 0, max(ymax*1.45, 1)
			for _, ext := range []string{"svg", "png"} {
				name := fmt.Sprintf("%s-routes-%s.%s", what, rs.Routes, ext)
				if err := p.Save(18*vg.Centimeter, 11*vg.Centimeter, filepath.Join(dir, name)); err != nil {
					return nil, fmt.Errorf("save %s: %w", name, err)
				}
				files = append(files, name)
			}
		}
	}
	return files, nil
}

func routesTitle(routes string) string {
	if routes == "full" {
		return "full table"
	}
	return "1 route"
}

// WriteMarkdown renders the report: how it was run, then per route set
// the forwarded Mpps, Mbit/s and loss % of every scenario at every frame
// size, the RFC 2544 throughput, and the plots (SVG, next to the file).
func WriteMarkdown(w io.Writer, r *SweepReport) error {
	var b strings.Builder
	fmt.Fprintf(&b, "# xdprouter forwarding report\n\n")
	fmt.Fprintf(&b, "Run %s to %s (UTC) by `xdpbench report`.\n\n", r.Started.Format("2006-01-02 15:04"), r.Finished.Format("15:04"))
	fmt.Fprintf(&b, "- Machine: kernel %s, %s, %d CPUs.\n", r.Kernel, r.CPUModel, r.CPUs)
	fmt.Fprintf(&b, "- Layout: %s.\n", r.Layout)
	fmt.Fprintf(&b, "- Traffic: IPv%d UDP to %s, random addresses per frame, at the generator's maximum rate; sizes %s bytes with FCS.\n",
		r.Family, r.Destinations, joinInts(r.Sizes))
	fmt.Fprintf(&b, "- Repeats: %d trials of %.1f s per point, scenarios interleaved; the median is shown, [min-max] in the JSON.\n", r.Repeats, r.Duration)
	if r.NDRDuration > 0 {
		fmt.Fprintf(&b, "- RFC 2544 throughput: binary search for the highest rate with loss <= %g %%, trials of %.1f s, until within %.0f %% of the lowest failing rate.\n",
			r.NDRLoss, r.NDRDuration, 100*r.NDRResolution)
	}
	fmt.Fprintf(&b, "- Reading it: generator, router and sink share the same CPUs (a closed loop), so a cheaper path also lets the generator send more, and loss at the maximum is what a path drops when the generator outruns it on the same CPU. Compare scenarios as ratios at one size; see docs/xdpbench.md.\n")
	fmt.Fprintf(&b, "\nScenarios:\n\n")
	for _, s := range r.Scenarios {
		fmt.Fprintf(&b, "- `%s`: %s\n", s.Name, s.Description)
	}
	for _, rs := range r.Routes {
		fmt.Fprintf(&b, "\n## %s\n\n%s.", routesTitle(rs.Routes), rs.Description)
		if rs.Destinations != "" && rs.Destinations != r.Destinations {
			fmt.Fprintf(&b, " Traffic to %s: lookups spread across the table.", rs.Destinations)
		}
		b.WriteString("\n")
		table := func(title string, cell func(Point) string) {
			fmt.Fprintf(&b, "\n### %s\n\n| scenario |", title)
			for _, s := range r.Sizes {
				fmt.Fprintf(&b, " %d B |", s)
			}
			fmt.Fprintf(&b, "\n|---|%s\n", strings.Repeat("---:|", len(r.Sizes)))
			for _, sc := range r.Scenarios {
				fmt.Fprintf(&b, "| %s |", sc.Name)
				for _, size := range r.Sizes {
					c := "-"
					for _, pt := range rs.Points {
						if pt.Scenario == sc.Name && pt.Size == size {
							c = cell(pt)
						}
					}
					fmt.Fprintf(&b, " %s |", c)
				}
				b.WriteString("\n")
			}
		}
		table("Forwarded Mpps (median)", func(p Point) string { return fmt.Sprintf("%.3f", p.MedianPPS/1e6) })
		table("Forwarded Mbit/s (median, FCS counted)", func(p Point) string { return fmt.Sprintf("%.0f", p.MedianMbps) })
		table("Loss % at the generator's maximum (median)", func(p Point) string { return fmt.Sprintf("%.2f", p.MedianLoss) })
		if len(rs.NDR) > 0 {
			fmt.Fprintf(&b, "\n### RFC 2544 throughput, %d-byte frames\n\n", rs.NDR[0].Size)
			fmt.Fprintf(&b, "| scenario | zero-loss Mpps | Mbit/s | generator maximum Mpps | trials | limited by |\n|---|---:|---:|---:|---:|---|\n")
			for _, n := range rs.NDR {
				fmt.Fprintf(&b, "| %s | %.3f | %.0f | %.3f | %d | %s |\n", n.Scenario, n.PPS/1e6, n.Mbps, n.MaxPPS/1e6, len(n.Steps), n.Limit())
			}
			fmt.Fprintf(&b, "\n\"generator\": no loss even at the generator's maximum, the path's own limit lies above it (the generator shares the CPUs). \"path\": the search found the rate above which the path loses frames.\n")
		}
		fmt.Fprintf(&b, "\n![forwarded Mpps, %[1]s](pps-routes-%[2]s.svg)\n![loss, %[1]s](loss-routes-%[2]s.svg)\n",
			routesTitle(rs.Routes), rs.Routes)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func joinInts(v []int) string {
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = fmt.Sprint(x)
	}
	return strings.Join(s, ", ")
}
