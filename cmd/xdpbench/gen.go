package main

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/spf13/cobra"

	"github.com/xdprouter/xdprouter/bench/gen"
	"github.com/xdprouter/xdprouter/control/affinity"
	"github.com/xdprouter/xdprouter/lab"
)

func newGenCmd() *cobra.Command {
	var (
		labName, src, dst, cpus string
		family, size            int
		rate                    float64
		duration                time.Duration
		count                   uint64
		asJSON                  bool
	)
	cmd := &cobra.Command{
		Use:   "gen",
		Short: "Send UDP traffic from the lab's generator into the router",
		Long: `Sends IPv4 or IPv6 UDP frames (destination port 9) from the generator
namespace into the router's eth1 and eth2, one sending thread per CPU
(thread i uses gen1 or gen2 alternately), with BPF_PROG_RUN live frames.
Source and destination addresses are drawn at random, per frame, from the
two prefixes. Every frame's headers are rewritten on every send.

--size is the Ethernet frame size with its 4-byte FCS (64 to 1518; IPv6
needs at least 66). With --rate the generator paces to that total rate;
without it, it sends as fast as it can.`,
		Example: `  xdpbench gen --duration 10s
  xdpbench gen --family 6 --size 1518 --rate 100000 --count 1000000
  xdpbench gen --src 10.0.0.0/8 --dst 198.19.0.0/24 --cpus 0`,
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := lab.Open(labName)
			if err != nil {
				return err
			}
			cfg := gen.Config{Namespace: l.GenNS, Links: gen.LabLinks(l), Size: size, Rate: rate,
				Duration: duration, Count: count}
			cfg.Src, cfg.Dst = gen.DefaultPrefixes(family)
			if src != "" {
				if cfg.Src, err = netip.ParsePrefix(src); err != nil {
					return fmt.Errorf("--src: %w", err)
				}
			}
			if dst != "" {
				if cfg.Dst, err = netip.ParsePrefix(dst); err != nil {
					return fmt.Errorf("--dst: %w", err)
				}
			}
			if cfg.CPUs, err = affinity.ParseList(cpus); err != nil {
				return fmt.Errorf("--cpus: %w", err)
			}
			if duration == 0 && count == 0 {
				cfg.Duration = 10 * time.Second
			}
			g, err := gen.New(cfg)
			if err != nil {
				return err
			}
			defer g.Close()
			res, err := g.Run(cmd.Context())
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if asJSON {
				return writeJSON(w, map[string]any{"sent": res.Sent, "bytes": res.Bytes,
					"seconds": res.Elapsed.Seconds(), "pps": res.PPS(), "mbps": res.Mbps(), "per_cpu": res.PerCPU})
			}
			fmt.Fprintf(w, "sent %d frames of %d bytes in %.3f s: %.0f pps, %.1f Mbit/s\n",
				res.Sent, size, res.Elapsed.Seconds(), res.PPS(), res.Mbps())
			for _, c := range res.PerCPU {
				fmt.Fprintf(w, "  cpu%d on %s: %d frames, %d BPF_PROG_RUN calls\n", c.CPU, c.Iface, c.Sent, c.Calls)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVarP(&labName, "lab", "l", "lab", "lab name")
	f.IntVarP(&family, "family", "f", 4, "IP version, 4 or 6 (sets default prefixes)")
	f.StringVar(&src, "src", "", "source prefix (default 10.0.0.0/8, or 2001:2:0:8000::/104)")
	f.StringVar(&dst, "dst", "", "destination prefix (default 198.19.0.0/24, or 2001:2:0:ff00::/120)")
	f.IntVarP(&size, "size", "s", 64, "frame size in bytes, FCS included")
	f.Float64VarP(&rate, "rate", "r", 0, "total packets per second (0: as fast as possible)")
	f.DurationVarP(&duration, "duration", "d", 0, "how long to send (default 10s when no --count)")
	f.Uint64VarP(&count, "count", "c", 0, "exact number of frames to send")
	f.StringVar(&cpus, "cpus", "0", "CPUs to send from, one thread each (e.g. 0-1)")
	f.BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}
