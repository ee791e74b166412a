package fib

import (
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	"github.com/xdprouter/xdprouter/internal/testutil"
)

func newTestTable(t testing.TB, cfg Config) *Table {
	t.Helper()
	testutil.Privileged(t)
	tb, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tb.Close() })
	return tb
}

func check(t *testing.T, tb *Table, ref refTable, addrs []netip.Addr, when string) {
	t.Helper()
	bad := 0
	for _, a := range addrs {
		if got, want := tb.Lookup(a), ref.lookup(a); got != want {
			if bad++; bad <= 5 {
				t.Errorf("%s: lookup %s = %v, want %v", when, a, got, want)
			}
		}
	}
	if bad > 0 {
		t.FailNow()
	}
	// The batch API answers exactly as single lookups do.
	r := tb.NewReader()
	defer r.Close()
	var v4 []uint32
	var v6 [][16]byte
	var want4, want6 []Result
	for _, a := range addrs {
		if a.Is4() {
			b := a.As4()
			v4 = append(v4, uint32(b[0])<<24|uint32(b[1])<<16|uint32(b[2])<<8|uint32(b[3]))
			want4 = append(want4, ref.lookup(a))
		} else {
			v6 = append(v6, a.As16())
			want6 = append(want6, ref.lookup(a))
		}
	}
	out := make([]Result, len(addrs))
	r.LookupBatch4(v4, out)
	for i := range v4 {
		if out[i] != want4[i] {
			t.Fatalf("%s: batch lookup of %#x = %v, want %v", when, v4[i], out[i], want4[i])
		}
	}
	r.LookupBatch6(v6, out)
	for i := range v6 {
		if out[i] != want6[i] {
			t.Fatalf("%s: batch lookup of %x = %v, want %v", when, v6[i], out[i], want6[i])
		}
	}
}

func TestDifferential(t *testing.T) {
	tb := newTestTable(t, Config{Nexthops: 1024, ECMPGroups: 64})
	for _, v6 := range []bool{false, true} {
		for seed := range uint64(4) {
			t.Run(fmt.Sprintf("v6=%v/seed=%d", v6, seed), func(t *testing.T) {
				rng := rand.New(rand.NewPCG(seed, 42))
				ref := refTable{}
				var ps []netip.Prefix
				for range 3000 {
					p := randPrefix(rng, v6)
					r := MakeResult(RouteType(1+rng.IntN(6)), uint32(rng.IntN(1000)))
					if err := tb.Insert(p, r); err != nil {
						t.Fatal(err)
					}
					if _, ok := ref[p]; !ok {
						ps = append(ps, p)
					}
					ref[p] = r
				}
				addrs := probes(rng, ps, v6, 2000)
				check(t, tb, ref, addrs, "after inserts")
				// Replace some, delete half (uncovering shorter prefixes).
				rng.Shuffle(len(ps), func(i, j int) { ps[i], ps[j] = ps[j], ps[i] })
				for i, p := range ps {
					switch {
					case i%4 == 0:
						r := MakeResult(RouteNexthop, uint32(i%1000))
						if err := tb.Insert(p, r); err != nil {
							t.Fatal(err)
						}
						ref[p] = r
					case i%2 == 1:
						if err := tb.Delete(p); err != nil {
							t.Fatal(err)
						}
						delete(ref, p)
					}
				}
				check(t, tb, ref, addrs, "after replaces and deletes")
				if err := tb.Delete(netip.MustParsePrefix("203.0.113.0/24")); !errors.Is(err, ErrNotFound) && !v6 {
					t.Errorf("delete of a missing prefix: %v, want ErrNotFound", err)
				}
				// Delete the rest: every node and leaf must be given back.
				for p := range ref {
					if err := tb.Delete(p); err != nil {
						t.Fatal(err)
					}
				}
				check(t, tb, refTable{}, addrs, "after deleting everything")
				st := tb.Stats()
				if st.Routes4+st.Routes6 != 0 || st.Nodes4+st.Leaves4+st.Nodes6+st.Leaves6 != 0 {
					t.Errorf("empty table still holds %+v", st)
				}
				for _, f := range []*family{tb.v4, tb.v6} {
					for i, e := range f.btop {
						if e != 0 {
							t.Fatalf("top level entry %d = %#x in an empty table", i, e)
						}
					}
				}
			})
		}
	}
}

func TestEdges(t *testing.T) {
	tb := newTestTable(t, Config{Nodes4: 1024, Leaves4: 2048, Nodes6: 1024, Leaves6: 2048, Nexthops: 16, ECMPGroups: 4})
	nh := func(i uint32) Result { return MakeResult(RouteNexthop, i) }
	steps := []struct {
		op     string // "+" insert, "-" delete
		prefix string
		res    Result
		probes map[string]Result
	}{
		{"+", "0.0.0.0/0", nh(1), map[string]Result{"0.0.0.0": nh(1), "255.255.255.255": nh(1)}},
		{"+", "10.0.0.0/8", nh(2), map[string]Result{"10.255.255.255": nh(2), "11.0.0.0": nh(1), "9.255.255.255": nh(1)}},
		{"+", "10.1.2.3/32", nh(3), map[string]Result{"10.1.2.3": nh(3), "10.1.2.2": nh(2), "10.1.2.4": nh(2)}},
		{"+", "10.1.2.0/25", MakeResult(RouteBlackhole, 0), map[string]Result{"10.1.2.3": nh(3), "10.1.2.127": MakeResult(RouteBlackhole, 0), "10.1.2.128": nh(2)}},
		{"-", "10.0.0.0/8", 0, map[string]Result{"10.1.2.3": nh(3), "10.1.2.128": nh(1), "10.9.9.9": nh(1)}},
		{"-", "10.1.2.0/25", 0, map[string]Result{"10.1.2.3": nh(3), "10.1.2.4": nh(1)}},
		{"-", "10.1.2.3/32", 0, map[string]Result{"10.1.2.3": nh(1)}},
		{"-", "0.0.0.0/0", 0, map[string]Result{"10.1.2.3": 0, "0.0.0.0": 0}},
		{"+", "::/0", nh(4), map[string]Result{"2001:db8::1": nh(4), "::": nh(4)}},
		{"+", "2001:db8::1/128", nh(5), map[string]Result{"2001:db8::1": nh(5), "2001:db8::": nh(4), "2001:db8::2": nh(4)}},
		{"+", "2001:db8::/32", MakeResult(RouteUnreachable, 0), map[string]Result{"2001:db8::1": nh(5), "2001:db8:ffff::": MakeResult(RouteUnreachable, 0)}},
		{"-", "2001:db8::1/128", 0, map[string]Result{"2001:db8::1": MakeResult(RouteUnreachable, 0)}},
		{"-", "::/0", 0, map[string]Result{"2001:db8::1": MakeResult(RouteUnreachable, 0), "2001:db9::": 0}},
	}
	for _, s := range steps {
		p := netip.MustParsePrefix(s.prefix)
		var err error
		if s.op == "+" {
			err = tb.Insert(p, s.res)
		} else {
			err = tb.Delete(p)
		}
		if err != nil {
			t.Fatalf("%s %s: %v", s.op, p, err)
		}
		for a, want := range s.probes {
			if got := tb.Lookup(netip.MustParseAddr(a)); got != want {
				t.Errorf("after %s %s: lookup %s = %v, want %v", s.op, p, a, got, want)
			}
		}
	}
}

func TestCapacity(t *testing.T) {
	tb := newTestTable(t, Config{Nodes4: 12, Leaves4: 64, Nodes6: 5, Leaves6: 64, Nexthops: 4, ECMPGroups: 2})
	nh := MakeResult(RouteNexthop, 1)
	// Each /25 in its own /22 needs one more node under 10.0.0.0/16, and
	// the path above it copied: the arrays fill up after a few.
	var refused netip.Prefix
	var loaded []netip.Prefix
	for i := range 12 {
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, byte(4 * i), 0}), 25)
		before, st := tb.Lookup(p.Addr()), tb.Stats()
		err := tb.Insert(p, nh)
		if err == nil {
			loaded = append(loaded, p)
			continue
		}
		if !errors.Is(err, ErrCapacity) {
			t.Fatal(err)
		}
		if got := tb.Lookup(p.Addr()); got != before {
			t.Errorf("refused insert of %s changed the table: %v -> %v", p, before, got)
		}
		if st2 := tb.Stats(); st2.Routes4 != st.Routes4 || st2.Nodes4 != st.Nodes4 || st2.Leaves4 != st.Leaves4 {
			t.Errorf("after a refused insert: %+v, was %+v", st2, st)
		}
		refused = p
		break
	}
	if !refused.IsValid() || len(loaded) < 2 {
		t.Fatalf("loaded %d /25s before a refusal (%v): make the test's arrays fit", len(loaded), refused)
	}
	// A /64 under an empty top entry needs 8 nodes (bits 18-64): refused
	// whole, with nothing half-built.
	if err := tb.Insert(netip.MustParsePrefix("2001:db8:1:2::/64"), nh); !errors.Is(err, ErrCapacity) {
		t.Fatalf("deep IPv6 prefix: %v, want ErrCapacity", err)
	}
	if st := tb.Stats(); st.Nodes6 != 0 || st.Leaves6 != 0 || st.Routes6 != 0 {
		t.Errorf("refused IPv6 insert left %+v", st)
	}
	// Freed blocks come back after a grace period.
	if err := tb.Delete(loaded[0]); err != nil {
		t.Fatal(err)
	}
	if err := tb.Insert(refused, nh); err != nil {
		t.Fatalf("insert after a delete freed nodes: %v", err)
	}
	if tb.Stats().GracePeriods == 0 {
		t.Error("a freed block was reused without a grace period")
	}
	for id := range uint32(4) {
		if err := tb.SetNexthop(id, Nexthop{Ifindex: 1, State: Resolved}); err != nil {
			t.Fatal(err)
		}
	}
	if err := tb.SetNexthop(4, Nexthop{}); err == nil {
		t.Error("nexthop id beyond the table accepted")
	}
	if err := tb.SetECMP(0, make([]uint32, 17)); err == nil {
		t.Error("17-member ECMP group accepted")
	}
}

// TestLoadRefused: a load that does not fit changes nothing, into an
// empty table and into a loaded one, with both families in one load (one
// may fit and be taken out again).
func TestLoadRefused(t *testing.T) {
	for _, cfg := range []Config{
		{Nodes4: 64, Leaves4: 512, Nodes6: 64, Leaves6: 512},     // neither family fits
		{Nodes4: 4096, Leaves4: 65536, Nodes6: 64, Leaves6: 512}, // IPv4 fits and is taken out again
	} {
		t.Run(fmt.Sprintf("nodes4=%d", cfg.Nodes4), func(t *testing.T) {
			cfg.Nexthops, cfg.ECMPGroups = 4, 2
			loadRefused(t, newTestTable(t, cfg))
		})
	}
}

func loadRefused(t *testing.T, tb *Table) {
	rng := rand.New(rand.NewPCG(8, 9))
	var big []Route
	for range 2000 {
		v6 := rng.IntN(2) == 1
		big = append(big, Route{randPrefix(rng, v6), MakeResult(RouteNexthop, uint32(rng.IntN(50)))})
	}
	small := []Route{
		{netip.MustParsePrefix("10.1.0.0/16"), MakeResult(RouteNexthop, 1)},
		{netip.MustParsePrefix("10.1.2.0/24"), MakeResult(RouteNexthop, 2)},
		{netip.MustParsePrefix("2001:db8::/32"), MakeResult(RouteNexthop, 3)},
	}
	var ps []netip.Prefix
	for _, r := range append(append([]Route{}, big...), small...) {
		ps = append(ps, r.Prefix)
	}
	addrs := append(probes(rng, ps, false, 300), probes(rng, ps, true, 300)...)
	snapshot := func() (map[netip.Prefix]Result, []Result, Stats) {
		routes := map[netip.Prefix]Result{}
		tb.Routes(func(r Route) bool { routes[r.Prefix] = r.Result; return true })
		var res []Result
		for _, a := range addrs {
			res = append(res, tb.Lookup(a))
		}
		st := tb.Stats()
		// Retired leaf blocks hold their results until a grace period.
		st.GracePeriods, st.Results, st.TableBytes = 0, 0, 0
		return routes, res, st
	}
	for _, when := range []string{"empty", "loaded"} {
		if when == "loaded" {
			if err := tb.Load(small); err != nil {
				t.Fatal(err)
			}
		}
		r0, l0, s0 := snapshot()
		if err := tb.Load(big); !errors.Is(err, ErrCapacity) {
			t.Fatalf("%s: a load that cannot fit: %v, want ErrCapacity", when, err)
		}
		r1, l1, s1 := snapshot()
		if !maps.Equal(r0, r1) || !slices.Equal(l0, l1) || s0 != s1 {
			t.Errorf("%s: a refused load changed the table: %d -> %d routes, %+v -> %+v", when, len(r0), len(r1), s0, s1)
		}
	}
}
