package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"github.com/spf13/cobra"

	"github.com/xdprouter/xdprouter/bench"
	"github.com/xdprouter/xdprouter/bench/gen"
	"github.com/xdprouter/xdprouter/bench/sink"
	"github.com/xdprouter/xdprouter/control/daemon"
	"github.com/xdprouter/xdprouter/lab"
)

func newDemoCmd() *cobra.Command {
	var bf benchFlags
	var live time.Duration
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Bring up a lab, forward through it live, print the table, tear down",
		Long: `The demo of 'make demo': brings up a private lab and sends 64-byte IPv4
frames as fast as the generator can through the router, --live each, while
printing one line per second (per-interface pps and Mbit/s, like ifstat):
first Linux kernel forwarding, then xdprouter's daemon started in the
router namespace with engine xdp, then the same daemon reloaded to engine
afxdp. It stops the daemon, runs the benchmark table (see 'xdpbench run
--help' for its columns) and removes the lab, also on Ctrl-C.`,
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
			if err := livePhases(ctx, cmd, l, live); err != nil {
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
	cmd.Flags().DurationVar(&live, "live", 5*time.Second, "how long each live phase (kernel, engine xdp, engine afxdp) forwards")
	return cmd
}

// livePhases shows the per-second view while the router forwards at the
// maximum rate three ways: the Linux kernel, then xdprouter's daemon in
// the router namespace with engine xdp, then the same daemon reloaded to
// engine afxdp (the switch happens between phases, without a restart).
func livePhases(ctx context.Context, cmd *cobra.Command, l *lab.Lab, d time.Duration) error {
	w := cmd.OutOrStdout()
	var cpus []int
	for i := range runtime.NumCPU() {
		cpus = append(cpus, i)
	}
	fmt.Fprintf(w, "layout: %s\n", bench.Layout(cpus, l))
	fmt.Fprintln(w, "interface columns are the kernel's counters (+4 B FCS a frame); veth counts eth3's frames without their 14-byte Ethernet header")
	if err := live(ctx, cmd, l, cpus, d, "Linux kernel forwarding"); err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "xdpbench-demo")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	cfg := daemon.Config{Namespace: l.RouterNS, Metrics: "off", Control: filepath.Join(dir, "xdprouter.sock"),
		Interfaces: []daemon.Interface{{Name: l.Ingress[0].B.Name, Engine: "xdp"}, {Name: l.Ingress[1].B.Name, Engine: "xdp"},
			{Name: l.Egress.A.Name, Engine: "pass"}},
		FIB: daemon.FIBConfig{Nodes4: 16384, Leaves4: 32768, Nodes6: 16384, Leaves6: 32768, Nexthops: 1024}}
	fmt.Fprintf(w, "\nstarting xdprouter in %s: program in pass, FIB from the kernel over netlink, then the engines\n", l.RouterNS)
	dm, err := daemon.Start(ctx, cfg)
	if err != nil {
		return err
	}
	defer func() {
		if dm != nil {
			_ = dm.Stop()
		}
	}()
	if err := live(ctx, cmd, l, cpus, d, "xdprouter engine xdp (XDP forwarding with xdprouter's FIB)"); err != nil {
		return err
	}
	for i := range cfg.Interfaces[:2] {
		cfg.Interfaces[i].Engine = "afxdp"
	}
	if err := dm.Reload(cfg); err != nil {
		return err
	}
	fmt.Fprintf(w, "\nreloaded: eth1 and eth2 now engine afxdp, %d workers\n", dm.Status().Workers)
	if err := live(ctx, cmd, l, cpus, d, "xdprouter engine afxdp (AF_XDP sockets, one Go worker per queue)"); err != nil {
		return err
	}
	st := dm.Stats()
	for _, wk := range st.Workers {
		fmt.Fprintf(w, "  worker q%d on cpu%d: received %d, forwarded %d, dropped %d\n", wk.Queue, wk.CPU, wk.RxPackets, wk.Forwarded, wk.Dropped())
	}
	err = dm.Stop()
	dm = nil
	if err != nil {
		return err
	}
	fmt.Fprintln(w, "xdprouter stopped: programs detached, the kernel forwards again")
	return nil
}

// live forwards 64-byte IPv4 frames at the maximum rate for d and prints
// the per-second view while it does.
func live(ctx context.Context, cmd *cobra.Command, l *lab.Lab, cpus []int, d time.Duration, title string) error {
	w := cmd.OutOrStdout()
	sk, err := sink.Attach(l.SinkNS, []string{l.Egress.B.Name}, sink.DefaultPort)
	if err != nil {
		return err
	}
	defer sk.Close()
	src, dst := gen.DefaultPrefixes(4)
	g, err := gen.New(gen.Config{Namespace: l.GenNS, Links: gen.LabLinks(l), Src: src, Dst: dst, Duration: d, CPUs: cpus})
	if err != nil {
		return err
	}
	defer g.Close()
	fmt.Fprintf(w, "\n%s: 64-byte IPv4 UDP from %s to %s, maximum rate, %v\n", title, src, dst, d)
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
