package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/xdprouter/xdprouter/bench/sink"
	"github.com/xdprouter/xdprouter/lab"
)

func newSinkCmd() *cobra.Command {
	var (
		labName, on    string
		count          uint64
		duration, tick time.Duration
		timeout        time.Duration
		asJSON         bool
	)
	cmd := &cobra.Command{
		Use:   "sink",
		Short: "Count and drop what arrives, with a line per second",
		Long: `Attaches the counting XDP program to the sink's sink0 (--on sink) or to
the router's eth1 and eth2 (--on router, the wire baseline), prints one line
per interval (time, pps, Mbit/s of UDP frames to port 9, FCS counted) and a
summary. With --count it waits for exactly that many frames and exits
non-zero if they do not all arrive before --timeout.`,
		Example: `  xdpbench sink --duration 10s
  xdpbench sink --count 100000 --timeout 30s
  xdpbench sink --on router --json`,
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := lab.Open(labName)
			if err != nil {
				return err
			}
			ns, ifs := l.SinkNS, []string{l.Egress.B.Name}
			switch on {
			case "sink":
			case "router":
				ns, ifs = l.RouterNS, nil
				for _, lk := range l.Ingress {
					ifs = append(ifs, lk.B.Name)
				}
			default:
				return fmt.Errorf("--on %q: use sink or router", on)
			}
			sk, err := sink.Attach(ns, ifs, sink.DefaultPort)
			if err != nil {
				return err
			}
			defer sk.Close()
			w := cmd.OutOrStdout()
			ctx := cmd.Context()
			if count > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, timeout)
				defer cancel()
			} else if duration > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, duration)
				defer cancel()
			}
			start := time.Now()
			prev := sink.Counters{}
			last := start
			t := time.NewTicker(tick)
			defer t.Stop()
			if !asJSON {
				fmt.Fprintf(w, "%8s %12s %10s\n", "time", "pps", "Mbit/s")
			}
			var cur sink.Counters
		loop:
			for {
				select {
				case <-ctx.Done():
					break loop
				case <-t.C:
				}
				if cur, err = sk.Counters(); err != nil {
					return err
				}
				now := time.Now()
				r := sink.RateBetween(prev, cur, now.Sub(last))
				if !asJSON {
					fmt.Fprintf(w, "%8s %12.0f %10.1f\n", now.Format("15:04:05"), r.PPS, r.Mbps)
				}
				prev, last = cur, now
				if count > 0 && cur.MatchedPackets >= count {
					break loop
				}
			}
			if cur, err = sk.Counters(); err != nil {
				return err
			}
			el := time.Since(start)
			if asJSON {
				if err := writeJSON(w, map[string]any{"matched_packets": cur.MatchedPackets, "matched_bytes": cur.MatchedBytes,
					"other_packets": cur.Packets - cur.MatchedPackets, "seconds": el.Seconds()}); err != nil {
					return err
				}
			} else {
				avg := sink.RateBetween(sink.Counters{}, cur, el)
				fmt.Fprintf(w, "total: %d test frames (%d bytes without FCS) in %.1f s, average %.0f pps, %.1f Mbit/s; %d other frames\n",
					cur.MatchedPackets, cur.MatchedBytes, el.Seconds(), avg.PPS, avg.Mbps, cur.Packets-cur.MatchedPackets)
			}
			if count > 0 && cur.MatchedPackets != count {
				return fmt.Errorf("received %d test frames, want exactly %d", cur.MatchedPackets, count)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVarP(&labName, "lab", "l", "lab", "lab name")
	f.StringVar(&on, "on", "sink", "where to count: sink (after the router) or router (its eth1/eth2: the wire)")
	f.Uint64VarP(&count, "count", "c", 0, "wait for exactly this many test frames")
	f.DurationVar(&timeout, "timeout", 60*time.Second, "with --count: give up after this long")
	f.DurationVarP(&duration, "duration", "d", 0, "count for this long (default: until Ctrl-C)")
	f.DurationVarP(&tick, "interval", "i", time.Second, "time between lines")
	f.BoolVar(&asJSON, "json", false, "print JSON (summary only)")
	return cmd
}
