package daemon

import (
	"slices"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"

	"github.com/xdprouter/xdprouter/internal/netnsrun"
)

// BenchmarkFirewallFollow measures how long the fast path keeps
// forwarding past a firewall rule added while traffic flows: engine xdp
// forwards 100 kpps to the sink; an nftables forward rule dropping that
// traffic is added (and later flushed) 20 times; the sink is polled every
// 200 µs, and the bypass window is the time from the rule's commit (the
// nftables transaction returned) to the sink's last frame. Reported: p50
// and max (the p99 of 20) in ms.
func BenchmarkFirewallFollow(b *testing.B) {
	f := startFlow(b)
	l := f.l
	// nft runs one nftables transaction in the router namespace (through
	// the library: the time measured is the kernel's commit, not a
	// process start) and returns when it is committed.
	nft := func(do func(c *nftables.Conn)) time.Time {
		var done time.Time
		err := netnsrun.Do(l.RouterNS, func() error {
			c, err := nftables.New()
			if err != nil {
				return err
			}
			do(c)
			err = c.Flush()
			done = time.Now()
			return err
		})
		if err != nil {
			b.Fatalf("nftables: %v", err)
		}
		return done
	}
	table := &nftables.Table{Family: nftables.TableFamilyINet, Name: "xft"}
	chain := &nftables.Chain{Name: "c1", Table: table, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter}
	count := f.matched
	// flowing waits until the sink receives again.
	flowing := func() {
		n := count()
		for deadline := time.Now().Add(2 * time.Second); count() == n; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				b.Fatal("no traffic at the sink")
			}
		}
	}
	nft(func(c *nftables.Conn) { c.AddTable(table); c.AddChain(chain) })
	defer nft(func(c *nftables.Conn) { c.DelTable(table) })
	flowing()
	var windows []time.Duration
	b.ResetTimer()
	for range 20 {
		t0 := nft(func(c *nftables.Conn) {
			c.AddRule(&nftables.Rule{Table: table, Chain: chain, Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictDrop}}})
		})
		last, n := t0, count()
		for time.Since(last) < 50*time.Millisecond {
			time.Sleep(200 * time.Microsecond)
			if c := count(); c != n {
				last, n = time.Now(), c
			}
		}
		windows = append(windows, last.Sub(t0))
		nft(func(c *nftables.Conn) { c.FlushChain(chain) })
		flowing()
	}
	b.StopTimer()
	slices.Sort(windows)
	b.ReportMetric(float64(windows[len(windows)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(windows[len(windows)-1].Microseconds())/1000, "max-ms")
	b.Logf("last frame through the fast path after the rule was committed: %v", windows)
}
