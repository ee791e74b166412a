package fib_test

import (
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"testing"

	"github.com/xdprouter/xdprouter/dataplane/fib"
	"github.com/xdprouter/xdprouter/dataplane/fib/fibprobe"
	"github.com/xdprouter/xdprouter/internal/testutil"
)

// TestPinnedReopen: a table pinned in bpffs and closed (a daemon exiting)
// is reopened by a new table with the same path: it answers every lookup
// as before, in Go and in the kernel, before any route is loaded again;
// loading the same routes changes nothing readers see; new routes still
// allocate nodes and slots without clobbering live ones; pruning the
// recovered routes that were not loaded again leaves exactly the table a
// fresh start would build.
func TestPinnedReopen(t *testing.T) {
	testutil.Privileged(t)
	dir := fmt.Sprintf("/sys/fs/bpf/xdprouter-test-%d", os.Getpid())
	t.Cleanup(func() { os.RemoveAll(dir) })
	cfg := fib.Config{Nexthops: 64, ECMPGroups: 8, PinPath: dir}
	tb, err := fib.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if tb.Reopened() {
		t.Fatal("a fresh directory reported reopened maps")
	}
	rng := rand.New(rand.NewPCG(11, 12))
	for id := range uint32(20) {
		nh := fib.Nexthop{Ifindex: int(id) + 1, MTU: 1500, State: fib.Resolved, DstMAC: net.HardwareAddr{2, 0, 0, 0, 0, byte(id)}}
		if err := tb.SetNexthop(id, nh); err != nil {
			t.Fatal(err)
		}
	}
	if err := tb.SetECMP(3, []uint32{1, 2, 3}); err != nil {
		t.Fatal(err)
	}
	var routes []fib.Route
	seen := map[netip.Prefix]bool{}
	for range 3000 {
		p := fib.RandPrefix(rng, rng.IntN(2) == 1)
		if seen[p] {
			continue
		}
		seen[p] = true
		res := fib.MakeResult(fib.RouteNexthop, uint32(rng.IntN(20)))
		if rng.IntN(5) == 0 {
			res = fib.MakeResult(fib.RouteECMP, 3)
		}
		routes = append(routes, fib.Route{Prefix: p, Result: res})
	}
	if err := tb.Load(routes); err != nil {
		t.Fatal(err)
	}
	ps := make([]netip.Prefix, len(routes))
	for i, r := range routes {
		ps[i] = r.Prefix
	}
	addrs := append(fib.Probes(rng, ps[:200], false, 500), fib.Probes(rng, ps[200:400], true, 500)...)
	want := make([]fib.Result, len(addrs))
	for i, a := range addrs {
		want[i] = tb.Lookup(a)
	}
	st := tb.Stats()
	if err := tb.Close(); err != nil {
		t.Fatal(err)
	}

	tb2, err := fib.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer tb2.Close()
	if !tb2.Reopened() {
		t.Fatal("pinned maps were not reopened")
	}
	p, err := fibprobe.Load(tb2)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	check := func(when string) {
		t.Helper()
		for i, a := range addrs {
			if got := tb2.Lookup(a); got != want[i] {
				t.Fatalf("%s: Go lookup %s = %v, want %v", when, a, got, want[i])
			}
			io := fibprobe.IO{Mode: fibprobe.ModeLookup, Family: 4}
			if a.Is4() {
				b := a.As4()
				copy(io.Addr[:], b[:])
			} else {
				io.Family, io.Addr = 6, a.As16()
			}
			got, err := p.Run(io)
			if err != nil {
				t.Fatal(err)
			}
			if fib.Result(got.Result) != want[i] {
				t.Fatalf("%s: kernel lookup %s = %v, want %v", when, a, fib.Result(got.Result), want[i])
			}
		}
	}
	check("reopened, no routes loaded")
	// The recovered routes are prefixes covering what the table
	// forwards, not necessarily those loaded: they must forward the same.
	recovered := fib.RefTable{}
	tb2.Routes(func(r fib.Route) bool {
		recovered[r.Prefix] = r.Result
		return true
	})
	for i, a := range addrs {
		if got := fib.OracleLookup(recovered, a); got != want[i] {
			t.Fatalf("the %d recovered routes forward %s to %v, the table did to %v", len(recovered), a, got, want[i])
		}
	}
	st2 := tb2.Stats()
	if st2.Nexthops != st.Nexthops || st2.ECMPGroups != st.ECMPGroups || st2.TableBytes != st.TableBytes {
		t.Errorf("reopened as %+v, was %+v", st2, st)
	}
	if err := tb2.Load(routes); err != nil {
		t.Fatal(err)
	}
	check("same routes loaded again")
	if st3 := tb2.Stats(); st3.TableBytes != st.TableBytes {
		t.Errorf("reloading the same routes changed the table: %+v, was %+v", st3, st)
	}
	// New state allocates around the live one.
	if err := tb2.SetNexthop(40, fib.Nexthop{Ifindex: 9, State: fib.Resolved}); err != nil {
		t.Fatal(err)
	}
	if err := tb2.Insert(netip.MustParsePrefix("203.0.113.128/25"), fib.MakeResult(fib.RouteNexthop, 40)); err != nil {
		t.Fatal(err)
	}
	check("after new routes")

	// A restart with routes gone meanwhile: load what is left, delete
	// every recovered route that is not (the mirror's prune); the table
	// must then answer exactly like a fresh one with what is left.
	keep := append(append([]fib.Route{}, routes[:len(routes)/2]...),
		fib.Route{Prefix: netip.MustParsePrefix("203.0.113.128/25"), Result: fib.MakeResult(fib.RouteNexthop, 40)})
	if err := tb2.Load(keep); err != nil {
		t.Fatal(err)
	}
	kept := map[netip.Prefix]bool{}
	for _, r := range keep {
		kept[r.Prefix] = true
	}
	var stale []netip.Prefix
	tb2.Routes(func(r fib.Route) bool {
		if !kept[r.Prefix] {
			stale = append(stale, r.Prefix)
		}
		return true
	})
	for _, p := range stale {
		if err := tb2.Delete(p); err != nil {
			t.Fatal(err)
		}
	}
	fresh, err := fib.New(fib.Config{Nexthops: 64, ECMPGroups: 8})
	if err != nil {
		t.Fatal(err)
	}
	defer fresh.Close()
	if err := fresh.Load(keep); err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if got, want := tb2.Lookup(a), fresh.Lookup(a); got != want {
			t.Fatalf("after pruning %d stale routes: lookup %s = %v, a fresh table says %v", len(stale), a, got, want)
		}
	}
	if err := tb2.Unpin(); err != nil {
		t.Fatal(err)
	}
}
