package fib

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/xdprouter/xdprouter/dataplane/fib/tablegen"
)

// loadFamily loads prefixes into a family over Go memory of the default
// sizes, results drawn round-robin from nexthops IDs.
func loadFamily(t testing.TB, v6 bool, ps []netip.Prefix, nexthops int) *family {
	nodes, leaves := DefaultNodes4, DefaultLeaves4
	if v6 {
		nodes, leaves = DefaultNodes6, DefaultLeaves6
	}
	f := memFamily(v6, nodes, leaves)
	f.ch.log = false
	for i, p := range ps {
		a := mask(key(p), p.Bits())
		r := MakeResult(RouteNexthop, uint32(i%nexthops))
		f.routes.put(&a, p.Bits(), r)
		f.paint(a, p.Bits(), r)
	}
	if err := f.commit(true); err != nil {
		t.Fatal(err)
	}
	return f
}

// TestTableSize loads the real table (or its synthetic twin) and reports
// the emitted table's size, with results spread over 1024 nexthops (each
// prefix's neighbour forwards elsewhere: little to compress) and over 4
// (a router with four upstreams). The defaults must hold it twice over.
func TestTableSize(t *testing.T) {
	src, err := tablegen.Load(tablegen.Today4, tablegen.Today6, 1)
	if err != nil {
		t.Fatal(err)
	}
	for _, nh := range []int{1024, 4} {
		total := 0
		for _, v6 := range []bool{false, true} {
			ps, nodes, leaves := src.V4, DefaultNodes4, DefaultLeaves4
			if v6 {
				ps, nodes, leaves = src.V6, DefaultNodes6, DefaultLeaves6
			}
			f := loadFamily(t, v6, ps, nh)
			b := f.tableBytes()
			total += b
			t.Logf("%s, %d nexthops, IPv%d: %d prefixes, %d nodes, %d leaves, %.2f MiB; mirror %d nodes",
				src.Source, nh, f.version(), len(ps), f.na.used, f.la.used, float64(b)/(1<<20), f.gused)
			if 2*f.na.used > nodes || 2*f.la.used > leaves {
				t.Errorf("IPv%d with %d nexthops: %d nodes and %d leaves do not fit the defaults (%d, %d) twice",
					f.version(), nh, f.na.used, f.la.used, nodes, leaves)
			}
		}
		t.Logf("%d nexthops: both families %.2f MiB", nh, float64(total)/(1<<20))
	}
}

// TestSyntheticSize checks that the synthetic IPv6 table needs about as
// many nodes as the real one, so that benchmarks on a clone without
// ../shared size the FIB alike.
func TestSyntheticSize(t *testing.T) {
	_, v6 := tablegen.Generate(1, 0, 160147, nil, nil)
	s := loadFamily(t, true, v6, 1024)
	msg := fmt.Sprintf("IPv6 nodes: real table %d (measured on 2026-12-04), synthetic %d", realNodes6, s.na.used)
	t.Log(msg)
	if 2*s.na.used < realNodes6 || s.na.used > 2*realNodes6 {
		t.Errorf("%s: want within 2x", msg)
	}
}

// realNodes6 is the number of nodes the real table's 160,147 IPv6
// prefixes take (TestTableSize with the real table, 1024 nexthops).
const realNodes6 = 70282
