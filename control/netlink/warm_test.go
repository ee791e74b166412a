package netlink

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"

	vnl "github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/xdprouter/xdprouter/dataplane/bpffs"
	"github.com/xdprouter/xdprouter/dataplane/fib"
	"github.com/xdprouter/xdprouter/internal/labtest"
)

// TestWarmStartIDs: a mirror on a FIB reopened from pins (a daemon
// restarted after kill -9) never hands out a nexthop or ECMP ID the
// earlier process left in use, because recovered routes still point at
// them until the first sync rewrites them; after that sync the old IDs
// are gone, the FIB holds exactly the new mirror's IDs, and it agrees
// with the kernel, also for a route changed while no mirror ran.
func TestWarmStartIDs(t *testing.T) {
	l := labtest.Up(t, 0)
	pins := filepath.Join(bpffs.DefaultRoot, fmt.Sprintf("xdprouter-warm-%d", os.Getpid()))
	t.Cleanup(func() { os.RemoveAll(pins) })
	fc := fib.Config{Nodes4: 1024, Leaves4: 2048, Nodes6: 1024, Leaves6: 2048, Nexthops: 64, ECMPGroups: 16, PinPath: pins}
	ns, err := netns.GetFromName(l.RouterNS)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	h, err := vnl.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	e := &env{l: l, h: h}
	e.ip(t, "route", "add", "203.0.113.0/24", "via", "198.18.3.254", "proto", "213")
	e.ip(t, "route", "add", "203.0.114.0/24", "via", "198.18.2.2", "proto", "213")
	e.ip(t, "route", "add", "203.0.115.0/24", "proto", "213", "nexthop", "via", "198.18.3.254", "nexthop", "via", "198.18.2.2")
	e.ip(t, "neigh", "replace", "198.18.2.2", "lladdr", "02:00:00:00:02:02", "dev", "eth2", "nud", "permanent")
	probes := []string{"198.19.0.1", "203.0.113.1", "203.0.114.1", "203.0.115.1"}

	open := func() (*fib.Table, *Mirror) {
		t.Helper()
		tb, err := fib.New(fc)
		if err != nil {
			t.Fatal(err)
		}
		m, err := New(tb, Config{Namespace: l.RouterNS})
		if err != nil {
			tb.Close()
			t.Fatal(err)
		}
		return tb, m
	}
	tb1, m1 := open()
	if err := m1.Sync(); err != nil {
		t.Fatal(err)
	}
	oldNH, oldECMP := tb1.LiveIDs()
	if len(oldNH) < 2 || len(oldECMP) != 1 {
		t.Fatalf("first mirror: nexthops %v, ecmp %v; want 2+ and 1", oldNH, oldECMP)
	}
	m1.Close()
	tb1.Close() // pins stay, as after kill -9

	// While no mirror runs: 203.0.113.0/24 goes away, so the new mirror's
	// first nexthop would be another gateway than the old one's first.
	e.ip(t, "route", "del", "203.0.113.0/24")
	e.ip(t, "route", "replace", "203.0.114.0/24", "via", "198.18.3.254", "proto", "213")

	tb2, m2 := open()
	defer func() {
		m2.Close()
		_ = tb2.Unpin()
		tb2.Close()
	}()
	if !tb2.Reopened() {
		t.Fatal("the second table did not reopen the pins")
	}
	if err := m2.Sync(); err != nil {
		t.Fatal(err)
	}
	for _, id := range oldNH {
		if _, ok := m2.nhByID[id]; ok {
			t.Errorf("nexthop id %d of the earlier process handed out again during the first sync", id)
		}
	}
	var mine []uint32
	for id := range m2.nhByID {
		mine = append(mine, id)
	}
	slices.Sort(mine)
	nh, ecmp := tb2.LiveIDs()
	if !slices.Equal(nh, mine) {
		t.Errorf("after the first sync the FIB holds nexthops %v, the mirror uses %v (old ones were %v)", nh, mine, oldNH)
	}
	if len(ecmp) != 1 || slices.Contains(oldECMP, ecmp[0]) {
		t.Errorf("after the first sync ECMP groups %v (old %v): want one new group", ecmp, oldECMP)
	}
	e.tb, e.m = tb2, m2
	e.r = tb2.NewReader()
	defer e.r.Close()
	e.agree(t, "warm start", probes...)
	if v := e.fibView(netip.MustParseAddr("203.0.113.1")); v.typ != fib.RouteNone {
		t.Errorf("route deleted while no mirror ran still in the FIB: %v", v)
	}
}
