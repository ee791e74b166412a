package main

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/xdprouter/xdprouter/bench"
	"github.com/xdprouter/xdprouter/control/affinity"
	"github.com/xdprouter/xdprouter/lab"
)

func newReportCmd() *cobra.Command {
	var (
		o                      bench.SweepOptions
		scenarios, sizes, cpus string
		routes                 string
		out, from, fullDst     string
	)
	cmd := &cobra.Command{
		Use:   "report",
		Short: "Run the benchmark report: every engine across frame sizes and route sets, RFC 2544 throughput, plots",
		Long: `Reproduces the seed router experiment on the lab and goes past it. For each
route set (--routes: the lab's 1 route, the full table) and frame size
(--sizes), every scenario runs --repeats trials of --duration at the
generator's maximum rate (scenarios interleaved, the median kept):
  kernel-1cpu   Linux forwarding untuned: RPS sends every frame of eth1/eth2
                to CPU 0, the router's forwarding runs on one CPU
  kernel-tuned  Linux forwarding tuned by xdprouter's affinity plan (queue q's
                XPS on CPU q on every interface)
  xdp-kfib      XDP forwarding with bpf_fib_lookup (the kernel's FIB)
  xdp           xdprouter engine xdp (its own FIB in XDP)
  afxdp         xdprouter engine afxdp (AF_XDP sockets, one Go worker per queue)
Then, per route set and scenario, the RFC 2544 throughput at the smallest
size: a trial at the maximum rate, then a binary search for the highest
rate with zero loss (--ndr-loss), trials of --ndr-duration, until the gap
is within --ndr-resolution. ('xdpbench run' knows more scenarios: kernel,
wire, xdp-static.)

Writes into --out: report.json (every trial), report.md (the tables, the
run's machine, layout and repeats) and pps-routes-R.{svg,png} and
loss-routes-R.{svg,png}; prints report.md. A full run (defaults) takes
about 12 minutes on 2 CPUs. --from renders report.md and the plots of an
earlier run's report.json again, without running anything.`,
		Example: `  xdpbench report --full-dst 128.0.0.0/2 --out docs/report
  xdpbench report --routes 1 --sizes 64,1518 --duration 500ms --repeats 1 --ndr-duration 300ms --out /tmp/r`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if from != "" {
				b, err := os.ReadFile(from)
				if err != nil {
					return err
				}
				var rep bench.SweepReport
				if err := json.Unmarshal(b, &rep); err != nil {
					return fmt.Errorf("--from %s: %w", from, err)
				}
				return writeReport(cmd, out, &rep, false)
			}
			var err error
			if scenarios != "" {
				o.Scenarios = strings.Split(scenarios, ",")
				for _, s := range o.Scenarios {
					if _, err := bench.ScenarioByName(s); err != nil {
						return fmt.Errorf("--scenarios: %w", err)
					}
				}
			}
			if sizes != "" {
				for _, s := range strings.Split(sizes, ",") {
					n, err := strconv.Atoi(strings.TrimSpace(s))
					if err != nil {
						return fmt.Errorf("--sizes %q: %w", sizes, err)
					}
					o.Sizes = append(o.Sizes, n)
				}
			}
			o.Routes = strings.Split(routes, ",")
			if cpus != "" {
				if o.GenCPUs, err = affinity.ParseList(cpus); err != nil {
					return fmt.Errorf("--cpus: %w", err)
				}
			}
			if fullDst != "" {
				p, err := netip.ParsePrefix(fullDst)
				if err != nil {
					return fmt.Errorf("--full-dst: %w", err)
				}
				o.FullDst = p.Masked()
			}
			if err := o.Validate(); err != nil {
				return err
			}
			if err := lab.RequireRoot(); err != nil {
				return err
			}
			if err := os.MkdirAll(out, 0o755); err != nil {
				return err
			}
			rep, err := bench.Sweep(cmd.Context(), o, func(s string) { fmt.Fprintln(cmd.ErrOrStderr(), s) })
			if err != nil {
				return err
			}
			return writeReport(cmd, out, rep, true)
		},
	}
	f := cmd.Flags()
	f.StringVar(&scenarios, "scenarios", strings.Join(bench.ReportScenarios, ","), "scenarios, in order (see 'xdpbench run --help' for all)")
	f.StringVar(&sizes, "sizes", "64,128,256,512,1024,1518", "frame sizes with FCS (64 becomes 66 for IPv6)")
	f.StringVar(&routes, "routes", "1,full", "route sets: 1 (the lab's route) and/or full (the full table in the kernel and the FIB)")
	f.IntVarP(&o.Family, "family", "f", 4, "IP version, 4 or 6")
	f.DurationVarP(&o.Duration, "duration", "d", 3*time.Second, "length of one trial")
	f.IntVar(&o.Repeats, "repeats", 3, "trials per point; the median is reported")
	f.DurationVar(&o.NDRDuration, "ndr-duration", 2*time.Second, "length of one RFC 2544 throughput trial (negative: no search)")
	f.Float64Var(&o.NDRResolution, "ndr-resolution", 0.02, "stop the throughput search when within this fraction of the lowest failing rate")
	f.Float64Var(&o.NDRLoss, "ndr-loss", 0, "loss % a throughput trial may have and pass (RFC 2544: 0)")
	f.StringVar(&cpus, "cpus", "", "generator CPUs, one thread each (default: all)")
	f.IntVarP(&o.Queues, "queues", "q", 2, "queues per veth of the lab")
	f.IntVar(&o.FullV4, "full-v4", 0, "scale the full IPv4 table up to this many prefixes")
	f.IntVar(&o.FullV6, "full-v6", 0, "scale the full IPv6 table up to this many prefixes")
	f.StringVarP(&out, "out", "o", "report", "directory for report.json, report.md and the plots")
	f.StringVar(&fullDst, "full-dst", "", "destinations of the full-table route set (default the lab's /24; 128.0.0.0/2 or 2000::/3 spreads lookups across the table)")
	f.StringVar(&from, "from", "", "render report.md and the plots from this report.json instead of running")
	return cmd
}

// writeReport writes report.json (withJSON), report.md and the plots into
// out and prints report.md.
func writeReport(cmd *cobra.Command, out string, rep *bench.SweepReport, withJSON bool) error {
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	if withJSON {
		jf, err := os.Create(filepath.Join(out, "report.json"))
		if err != nil {
			return err
		}
		err = writeJSON(jf, rep)
		if cerr := jf.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("report.json: %w", err)
		}
	}
	var md strings.Builder
	if err := bench.WriteMarkdown(&md, rep); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(out, "report.md"), []byte(md.String()), 0o644); err != nil {
		return err
	}
	files, err := bench.WritePlots(out, rep)
	if err != nil {
		return err
	}
	fmt.Fprint(cmd.OutOrStdout(), md.String())
	fmt.Fprintf(cmd.OutOrStdout(), "\nwrote %s: report.md, %s\n", out, strings.Join(files, ", "))
	return nil
}
