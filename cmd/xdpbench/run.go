package main

import (
	"fmt"
	"net/netip"
	"os"
	"runtime/pprof"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/xdprouter/xdprouter/bench"
	"github.com/xdprouter/xdprouter/control/affinity"
	"github.com/xdprouter/xdprouter/lab"
)

// benchFlags are the options shared by run and demo.
type benchFlags struct {
	scenarios, cpus, dst string
	opts                 bench.Options
}

func (b *benchFlags) register(cmd *cobra.Command, trial time.Duration) {
	f := cmd.Flags()
	var names []string
	for _, s := range bench.Scenarios {
		names = append(names, s.Name)
	}
	f.StringVar(&b.scenarios, "scenarios", strings.Join(names, ","), "scenarios to run, in order: "+strings.Join(names, ", "))
	f.IntVarP(&b.opts.Family, "family", "f", 4, "IP version, 4 or 6")
	f.IntVarP(&b.opts.Size, "size", "s", 0, "frame size with FCS (default 64, 66 for IPv6)")
	f.Float64VarP(&b.opts.Rate, "rate", "r", 0, "offered packets per second (0: as fast as the generator can)")
	f.DurationVarP(&b.opts.Duration, "duration", "d", trial, "length of one trial")
	f.IntVar(&b.opts.Repeats, "repeats", 3, "trials per scenario; the median is reported")
	f.StringVar(&b.cpus, "cpus", "", "generator CPUs, one thread each (default: all)")
	f.IntVarP(&b.opts.Queues, "queues", "q", 2, "queues per veth of the lab")
	f.StringVar(&b.opts.Routes, "routes", "1", "1 (the lab's route) or full (the full table in the kernel and the FIB, plus default routes)")
	f.IntVar(&b.opts.FullV4, "full-v4", 0, "with --routes full: scale the IPv4 table up to this many prefixes (e.g. 1040000)")
	f.IntVar(&b.opts.FullV6, "full-v6", 0, "with --routes full: scale the IPv6 table up to this many prefixes (e.g. 220000)")
	f.IntVar(&b.opts.FullNexthops, "full-nexthops", bench.DefaultFullNexthops, "with --routes full: nexthop IDs (all via the gateway) the prefixes take in turn; 1 lets the FIB merge neighbours that forward alike, more is its worst case")
	f.BoolVar(&b.opts.Hot, "hot", false, "also run every scenario as NAME-hot, interleaved, with destinations in the lab's own /24 or /120 (lookups stay in cache): with --routes full and a wide --dst, the ratio is what the spread costs")
	f.StringVar(&b.dst, "dst", "", "destination prefix (default 198.19.0.0/24 or 2001:2:0:ff00::/120; with --routes full, e.g. 128.0.0.0/2 spreads lookups across the table)")
}

func (b *benchFlags) options() (bench.Options, error) {
	o := b.opts
	o.Scenarios = strings.Split(b.scenarios, ",")
	if b.dst != "" {
		var err error
		if o.Dst, err = netip.ParsePrefix(b.dst); err != nil {
			return o, fmt.Errorf("--dst: %w", err)
		}
	}
	if b.cpus != "" {
		var err error
		if o.GenCPUs, err = affinity.ParseList(b.cpus); err != nil {
			return o, fmt.Errorf("--cpus: %w", err)
		}
	}
	for _, s := range o.Scenarios {
		if _, err := bench.ScenarioByName(s); err != nil {
			return o, err
		}
	}
	return o, nil
}

func newRunCmd() *cobra.Command {
	var bf benchFlags
	var asJSON bool
	var profile string
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run forwarding benchmarks and print the table",
		Long: `Brings up a private lab, runs each scenario --repeats times for --duration
with the generator at --rate (default: maximum), and prints one row per
scenario. Scenarios:
  wire        generator into an XDP drop on the router's eth1/eth2: the most
              this lab can deliver, the baseline every other row is divided by
  kernel      Linux forwarding in the router namespace, eth1/eth2 -> eth3 -> sink
  xdp-kfib    XDP forwarding with bpf_fib_lookup (the kernel's FIB, like
              xdp-forward): the peer xdprouter's FIB must beat
  xdp         XDP forwarding with xdprouter's FIB (engine xdp)
  xdp-static  XDP forwarding with no lookup, every frame to one hop: the ceiling
  afxdp       xdprouter's AF_XDP engine: the program steers every forwardable
              frame to the socket of its queue, worker q (pinned to CPU q)
              forwards it in Go; a "# afxdp worker" line per worker gives its
              CPU per frame (user: the worker; system: sendto, the kernel's
              copy and transmit), CPU use and the kernel's socket drops
  afxdp-ref   the reference AF_XDP forwarder in C (bench/afxdpref): a minimal
              program steers IPv4/IPv6 to a socket per queue, thread q (CPU q,
              SCHED_FIFO 1 like the workers) moves each frame to eth3 with
              the same rewrite and no lookup: the best plain AF_XDP here
  afxdp-rx, afxdp-ref-rx
              the same two receiving only: every frame is freed after
              receive, counted by the workers (the sink sees none)

Columns: Mpps is the median over trials of frames received per second (at
the sink) over the generator's sending time; [min - max] the spread over
trials; Mbit/s the median's throughput with FCS; loss % the median of
(sent - received) / sent; "vs" the ratio of medians to the first row;
cpuN si/sy/us/id the softirq, system, user and idle share of each CPU from
/proc/stat during the median trial.

With --routes full the table (../shared/data or its synthetic twin) is
installed into the kernel over netlink and loaded into xdprouter's FIB,
every prefix via the lab's gateway, plus default routes.`,
		Example: `  xdpbench run
  xdpbench run --scenarios kernel --size 1518 --repeats 5 --json
  xdpbench run --routes full --dst 128.0.0.0/2 --scenarios kernel,xdp-kfib,xdp`,
		RunE: func(cmd *cobra.Command, args []string) error {
			o, err := bf.options()
			if err != nil {
				return err
			}
			if err := lab.RequireRoot(); err != nil {
				return err
			}
			if profile != "" {
				f, err := os.Create(profile)
				if err != nil {
					return err
				}
				defer f.Close()
				if err := pprof.StartCPUProfile(f); err != nil {
					return fmt.Errorf("--cpuprofile: %w", err)
				}
				defer pprof.StopCPUProfile()
			}
			rep, err := bench.Run(cmd.Context(), o, func(s string) { fmt.Fprintln(cmd.ErrOrStderr(), s) })
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), rep)
			}
			return bench.WriteTable(cmd.OutOrStdout(), rep)
		},
	}
	bf.register(cmd, 3*time.Second)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the report as JSON")
	cmd.Flags().StringVar(&profile, "cpuprofile", "", "write a Go CPU profile of the whole run (AF_XDP workers included) to this file, for go tool pprof")
	return cmd
}
