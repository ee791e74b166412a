package bench

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/xdprouter/xdprouter/bench/sink"
	"github.com/xdprouter/xdprouter/lab"
)

// Watch prints one line per interval, like ifstat: packets per second and
// Mbit/s (FCS counted) received on the router's eth1 and eth2, sent on its
// eth3, and counted by the sink, until ctx ends.
func Watch(ctx context.Context, w io.Writer, l *lab.Lab, sk *sink.Sink, interval time.Duration) error {
	ns, err := netns.GetFromName(l.RouterNS)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", l.RouterNS, err)
	}
	h, err := netlink.NewHandleAt(ns)
	ns.Close()
	if err != nil {
		return fmt.Errorf("netlink in %s: %w", l.RouterNS, err)
	}
	defer h.Close()
	type col struct {
		name string
		rx   bool
	}
	var cols []col
	for _, lk := range l.Ingress {
		cols = append(cols, col{lk.B.Name, true})
	}
	cols = append(cols, col{l.Egress.A.Name, false})
	read := func() ([][2]uint64, sink.Counters, error) {
		var v [][2]uint64
		for _, c := range cols {
			link, err := h.LinkByName(c.name)
			if err != nil {
				return nil, sink.Counters{}, fmt.Errorf("read %s: %w", c.name, err)
			}
			st := link.Attrs().Statistics
			if c.rx {
				v = append(v, [2]uint64{st.RxPackets, st.RxBytes})
			} else {
				v = append(v, [2]uint64{st.TxPackets, st.TxBytes})
			}
		}
		sc, err := sk.Counters()
		return v, sc, err
	}
	fmt.Fprintf(w, "%8s", "time")
	for _, c := range cols {
		dir := "tx"
		if c.rx {
			dir = "rx"
		}
		fmt.Fprintf(w, " %10s %8s", c.name+" "+dir+" pps", "Mbit/s")
	}
	fmt.Fprintf(w, " %10s %8s\n", "sink pps", "Mbit/s")
	prev, prevSink, err := read()
	if err != nil {
		return err
	}
	last := time.Now()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		cur, curSink, err := read()
		if err != nil {
			return err
		}
		now := time.Now()
		dt := now.Sub(last).Seconds()
		fmt.Fprintf(w, "%8s", now.Format("15:04:05"))
		for i := range cols {
			p := cur[i][0] - prev[i][0]
			b := cur[i][1] - prev[i][1] + sink.FCSLen*p
			fmt.Fprintf(w, " %10.0f %8.1f", float64(p)/dt, float64(b)*8/dt/1e6)
		}
		r := sink.RateBetween(prevSink, curSink, now.Sub(last))
		fmt.Fprintf(w, " %10.0f %8.1f\n", r.PPS, r.Mbps)
		prev, prevSink, last = cur, curSink, now
	}
}
