package main

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"time"

	"github.com/spf13/cobra"

	"github.com/xdprouter/xdprouter/bench"
	"github.com/xdprouter/xdprouter/bench/gen"
	"github.com/xdprouter/xdprouter/bench/sink"
	"github.com/xdprouter/xdprouter/lab"
)

func newDemoCmd() *cobra.Command {
	var bf benchFlags
	var live time.Duration
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Bring up a lab, forward through it live, print the table, tear down",
		Long: `The demo of 'make demo': brings up a private lab, sends 64-byte IPv4
frames as fast as the generator can through the router for --live while
printing one line per second (per-interface pps and Mbit/s, like ifstat),
then runs the benchmark table (see 'xdpbench run --help' for its columns)
and removes the lab, also on Ctrl-C.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			o, err := bf.options()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			w := cmd.OutOrStdout()
			l, err := lab.Up(ctx, lab.Config{Name: fmt.Sprintf("demo%d", os.Getpid()), Queues: o.Queues})
			if err != nil {
				return err
			}
			defer func() {
				if err := l.Down(); err != nil {
					fmt.Fprintln(cmd.ErrOrStderr(), "tearing down the lab:", err)
				} else {
					fmt.Fprintf(w, "\nlab %s removed\n", l.Name)
				}
			}()
			fmt.Fprintf(w, "lab %s is up: %s -> %s -> %s, %d queues per veth\n", l.Name, l.GenNS, l.RouterNS, l.SinkNS, l.Queues)
			if err := liveKernel(ctx, cmd, l, live); err != nil {
				return err
			}
			o.Lab = l
			fmt.Fprintf(w, "\nBenchmark: %d trials of %v per scenario\n", o.Repeats, o.Duration)
			rep, err := bench.Run(ctx, o, func(s string) { fmt.Fprintln(w, "  "+s) })
			if err != nil {
				return err
			}
			fmt.Fprintln(w)
			return bench.WriteTable(w, rep)
		},
	}
	bf.register(cmd, 2*time.Second)
	cmd.Flags().DurationVar(&live, "live", 10*time.Second, "how long to show the live per-second view")
	return cmd
}

// liveKernel forwards through the kernel for d at the maximum rate and
// prints the per-second view while it does.
func liveKernel(ctx context.Context, cmd *cobra.Command, l *lab.Lab, d time.Duration) error {
	w := cmd.OutOrStdout()
	sk, err := sink.Attach(l.SinkNS, []string{l.Egress.B.Name}, sink.DefaultPort)
	if err != nil {
		return err
	}
	defer sk.Close()
	var cpus []int
	for i := range runtime.NumCPU() {
		cpus = append(cpus, i)
	}
	src, dst := gen.DefaultPrefixes(4)
	g, err := gen.New(gen.Config{Namespace: l.GenNS, Links: gen.LabLinks(l), Src: src, Dst: dst, Duration: d, CPUs: cpus})
	if err != nil {
		return err
	}
	defer g.Close()
	fmt.Fprintf(w, "\nLinux kernel forwarding, 64-byte IPv4 UDP from %s to %s, maximum rate, %v\n", src, dst, d)
	fmt.Fprintf(w, "layout: %s\n", bench.Layout(cpus, l))
	fmt.Fprintln(w, "interface columns are the kernel's counters (+4 B FCS a frame); veth counts eth3's frames without their 14-byte Ethernet header")
	wctx, stop := context.WithCancel(ctx)
	watched := make(chan error, 1)
	go func() { watched <- bench.Watch(wctx, w, l, sk, time.Second) }()
	res, err := g.Run(ctx)
	stop()
	if werr := <-watched; err == nil {
		err = werr
	}
	if err != nil {
		return err
	}
	c, err := sk.WaitMatched(ctx, res.Sent, 200*time.Millisecond)
	if err != nil {
		return err
	}
	loss := 0.0
	if res.Sent > 0 && c.MatchedPackets < res.Sent {
		loss = 100 * float64(res.Sent-c.MatchedPackets) / float64(res.Sent)
	}
	fmt.Fprintf(w, "sent %d, forwarded %d (%.3f Mpps over %.1f s), loss %.2f%%\n",
		res.Sent, c.MatchedPackets, float64(c.MatchedPackets)/res.Elapsed.Seconds()/1e6, res.Elapsed.Seconds(), loss)
	return nil
}
