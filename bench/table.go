package bench

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// WriteTable prints the report as a table: one row per scenario with the
// median forwarded rate, its spread over the trials, throughput, loss, the
// ratio to the first scenario (the wire baseline when it ran), CPU time
// per packet (all work runs on the generator's CPUs, so it is their count
// divided by the rate), the same minus the wire row's (what forwarding
// costs), and each CPU's softirq/system/user/idle percentages in the
// median trial.
func WriteTable(w io.Writer, r *Report) error {
	offered := "maximum"
	if r.Rate > 0 {
		offered = fmt.Sprintf("%.0f pps", r.Rate)
	}
	fmt.Fprintf(w, "# IPv%d UDP, %d-byte frames (FCS counted), offered %s, %d trials of %.1f s: median [min - max]\n",
		r.Family, r.Size, offered, r.Repeats, r.Duration)
	fmt.Fprintf(w, "# kernel %s, %s, %d CPUs\n", r.Kernel, r.CPUModel, r.CPUs)
	fmt.Fprintf(w, "# layout: %s\n", r.Layout)
	fmt.Fprintf(w, "# routes: %s; destinations: %s\n", r.Routes, r.Dst)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	hdr := []string{"scenario", "Mpps", "[min - max]", "Mbit/s", "loss %", "vs " + firstName(r), "ns/pkt", "+ns vs wire"}
	if len(r.Results) > 0 {
		for _, c := range r.Results[0].CPU {
			hdr = append(hdr, fmt.Sprintf("cpu%d si/sy/us/id %%", c.CPU))
		}
	}
	fmt.Fprintln(tw, strings.Join(hdr, "\t"))
	wire := 0.0
	for _, res := range r.Results {
		if res.Scenario == "wire" && res.MedianPPS > 0 {
			wire = r.CostNs(res.MedianPPS)
		}
	}
	for _, res := range r.Results {
		cost, above := "-", "-"
		if res.MedianPPS > 0 {
			c := r.CostNs(res.MedianPPS)
			cost = fmt.Sprintf("%.1f", c)
			if wire > 0 && res.Scenario != "wire" {
				above = fmt.Sprintf("%.1f", c-wire)
			}
		}
		ratio := "-"
		if base := r.Results[0].MedianPPS; base > 0 {
			ratio = fmt.Sprintf("%.2f", res.MedianPPS/base)
		}
		row := []string{
			res.Scenario,
			fmt.Sprintf("%.3f", res.MedianPPS/1e6),
			fmt.Sprintf("[%.3f - %.3f]", res.MinPPS/1e6, res.MaxPPS/1e6),
			fmt.Sprintf("%.0f", res.MedianMbps),
			fmt.Sprintf("%.2f", res.MedianLoss),
			ratio, cost, above,
		}
		for _, c := range res.CPU {
			row = append(row, fmt.Sprintf("%.0f/%.0f/%.0f/%.0f", 100*c.SoftIRQ, 100*c.System, 100*c.User, 100*c.Idle))
		}
		fmt.Fprintln(tw, strings.Join(row, "\t"))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, res := range r.Results {
		for _, wk := range res.Workers {
			// The C reference's threads time nothing themselves: no wall
			// figures for them.
			wall := ""
			if wk.WorkNs+wk.KickNs > 0 {
				wall = fmt.Sprintf("; wall per frame %.1f ns working + %.1f ns in sendto", wk.WorkNs, wk.KickNs)
			}
			fmt.Fprintf(w, "# %s worker q%d on cpu%d (median trial): received %d, forwarded %d, dropped %d; CPU per frame %.1f ns user (the worker) + %.1f ns system (sendto: the kernel's copy and transmit)%s; thread CPU %.0f%%; kernel rx_ring_full %d, fill_ring_empty %d\n",
				res.Scenario, wk.Queue, wk.CPU, wk.Received, wk.Forwarded, wk.Dropped, wk.UserNs, wk.SysNs, wall, wk.CPUPct, wk.RingFull, wk.FillEmpty)
		}
	}
	return nil
}

func firstName(r *Report) string {
	if len(r.Results) == 0 {
		return "first"
	}
	return r.Results[0].Scenario
}

// CostNs is the CPU time per packet at a rate: the generator's CPUs do all
// the work in this lab (router and sink NAPI run in the sender's context).
func (r *Report) CostNs(pps float64) float64 {
	return float64(r.GenCPUs) * 1e9 / pps
}
