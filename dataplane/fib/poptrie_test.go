package fib

import (
	"errors"
	"fmt"
	"math/bits"
	"math/rand/v2"
	"net/netip"
	"testing"
)

// memFamily is a family over plain Go memory, as the table uses over
// mmap'd BPF arrays: the same code, no root needed.
func memFamily(v6 bool, nodes, leaves int) *family {
	bits, top := 32, top4
	if v6 {
		bits, top = 128, top6
	}
	f := newFamily(bits, top, make([]uint32, 1<<top), make([]node, nodes), make([]uint16, leaves), newResults(make([]uint32, MaxResults)), nil)
	f.grace = func() error { f.reclaim(); return nil } // no readers here
	return f
}

func key(p netip.Prefix) [16]byte {
	var k [16]byte
	if p.Addr().Is4() {
		b := p.Addr().As4()
		copy(k[:], b[:])
		return k
	}
	return p.Addr().As16()
}

func famLookup(f *family, a netip.Addr) Result {
	if a.Is4() {
		return f.lookup4(addr4(a))
	}
	b := a.As16()
	return f.lookup6(&b)
}

func checkFamily(t *testing.T, f *family, ref refTable, addrs []netip.Addr, when string) {
	t.Helper()
	for _, a := range addrs {
		if got, want := famLookup(f, a), ref.lookup(a); got != want {
			t.Fatalf("%s: lookup %s = %v, want %v", when, a, got, want)
		}
	}
}

// TestFamilyDifferential drives one family with random inserts, replaces
// and deletes and compares every probe with the oracle, then checks that
// deleting everything gives every block back.
func TestFamilyDifferential(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		for seed := range uint64(4) {
			t.Run(fmt.Sprintf("v6=%v/seed=%d", v6, seed), func(t *testing.T) {
				f := memFamily(v6, 1<<18, 1<<18)
				rng := rand.New(rand.NewPCG(seed, 42))
				ref := refTable{}
				var ps []netip.Prefix
				for range 3000 {
					p := randPrefix(rng, v6)
					r := MakeResult(RouteType(1+rng.IntN(6)), uint32(rng.IntN(4)))
					if err := f.insert(key(p), p.Bits(), r); err != nil {
						t.Fatal(err)
					}
					if _, ok := ref[p]; !ok {
						ps = append(ps, p)
					}
					ref[p] = r
				}
				addrs := probes(rng, ps, v6, 2000)
				checkFamily(t, f, ref, addrs, "after inserts")
				checkBlocks(t, f, "after inserts")
				rng.Shuffle(len(ps), func(i, j int) { ps[i], ps[j] = ps[j], ps[i] })
				for i, p := range ps {
					switch {
					case i%4 == 0:
						r := MakeResult(RouteNexthop, uint32(i%3))
						if err := f.insert(key(p), p.Bits(), r); err != nil {
							t.Fatal(err)
						}
						ref[p] = r
					case i%2 == 1:
						if err := f.remove(key(p), p.Bits()); err != nil {
							t.Fatal(err)
						}
						delete(ref, p)
					}
				}
				checkFamily(t, f, ref, addrs, "after replaces and deletes")
				checkBlocks(t, f, "after replaces and deletes")
				for p := range ref {
					if err := f.remove(key(p), p.Bits()); err != nil {
						t.Fatal(err)
					}
				}
				checkFamily(t, f, refTable{}, addrs, "after deleting everything")
				f.reclaim() // a grace period (none needed here): retired leaves drop their results
				if f.gused != 0 || f.na.used != 0 || f.la.used != 0 || f.routes.n != 0 || f.res.used() != 0 {
					t.Errorf("empty family holds %d mirror nodes, %d nodes, %d leaves, %d routes, %d results", f.gused, f.na.used, f.la.used, f.routes.n, f.res.used())
				}
				for k, e := range f.btop {
					if e != 0 {
						t.Fatalf("top entry %d = %#x in an empty family", k, e)
					}
				}
			})
		}
	}
}

// TestFamilyRefused fills tiny arrays until a change is refused and checks
// that a refused change leaves lookups, routes and allocators unchanged.
func TestFamilyRefused(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		t.Run(fmt.Sprintf("v6=%v", v6), func(t *testing.T) {
			f := memFamily(v6, 40, 60)
			rng := rand.New(rand.NewPCG(1, 2))
			ref := refTable{}
			var ps []netip.Prefix
			refused := 0
			for range 400 {
				p := randPrefix(rng, v6)
				r := MakeResult(RouteNexthop, uint32(rng.IntN(50)))
				before := [4]int{f.gused, f.na.used, f.la.used, f.routes.n}
				err := f.insert(key(p), p.Bits(), r)
				if errors.Is(err, ErrCapacity) {
					refused++
					if after := [4]int{f.gused, f.na.used, f.la.used, f.routes.n}; after != before {
						t.Fatalf("refused insert of %s changed mirror/nodes/leaves/routes %v -> %v", p, before, after)
					}
					checkBlocks(t, f, "after a refused insert of "+p.String())
					continue
				}
				if err != nil {
					t.Fatal(err)
				}
				if _, ok := ref[p]; !ok {
					ps = append(ps, p)
				}
				ref[p] = r
				if len(ps) > 0 && rng.IntN(3) == 0 {
					q := ps[rng.IntN(len(ps))]
					if _, ok := ref[q]; ok {
						if err := f.remove(key(q), q.Bits()); errors.Is(err, ErrCapacity) {
							refused++
						} else if err != nil {
							t.Fatal(err)
						} else {
							delete(ref, q)
						}
						checkBlocks(t, f, "after a delete of "+q.String())
					}
				}
			}
			if refused == 0 {
				t.Fatal("no change was refused: make the arrays smaller")
			}
			checkFamily(t, f, ref, probes(rng, ps, v6, 500), fmt.Sprintf("after %d refusals", refused))
			n := 0
			f.routes.each(func([16]byte, int, Result) bool { n++; return true })
			if n != len(ref) {
				t.Errorf("route set holds %d routes, oracle %d", n, len(ref))
			}
		})
	}
}

// checkBlocks checks the allocators and result references against what
// is reachable from the top level: every reachable element is live and
// taken, the live counts match, and each result index is referenced once
// per leaf in a live or retired block.
func checkBlocks(t *testing.T, f *family, when string) {
	t.Helper()
	nodes, leaves := 0, 0
	refs := make([]uint32, len(f.res.refs))
	countLeaves := func(from, to uint32) {
		for i := from; i < to; i++ {
			refs[f.leaves[i]]++
		}
	}
	taken := func(b *blocks, at uint32, n int, what string) {
		for i := int(at); i < int(at)+n; i++ {
			if b.taken[i/64]&(1<<(i%64)) == 0 {
				t.Fatalf("%s: reachable %s element %d is not taken", when, what, i)
			}
		}
	}
	var walk func(i uint32)
	walk = func(i uint32) {
		n := f.nodes[i]
		nc, nl := bits.OnesCount64(n.vector), bits.OnesCount64(n.leafvec)
		nodes += nc
		leaves += nl
		taken(&f.na, n.base1, nc, "node")
		taken(&f.la, n.base0, nl, "leaf")
		countLeaves(n.base0, n.base0+uint32(nl))
		for c := range uint32(nc) {
			walk(n.base1 + c)
		}
	}
	for _, e := range f.btop {
		switch {
		case e&leafFlag != 0:
			at := e &^ leafFlag
			nl := bits.OnesCount64(f.leafVec(at))
			leaves += nl + leafNodeHead
			taken(&f.la, at, nl+leafNodeHead, "leaf")
			countLeaves(at+leafNodeHead, at+leafNodeHead+uint32(nl))
		case e&nodeFlag != 0:
			nodes++
			taken(&f.na, e&^nodeFlag, 1, "node")
			walk(e &^ nodeFlag)
		}
	}
	if nodes != f.na.used || leaves != f.la.used {
		t.Fatalf("%s: %d nodes and %d leaves reachable, allocators count %d and %d", when, nodes, leaves, f.na.used, f.la.used)
	}
	for _, x := range f.la.pending {
		from := x.at
		if x.lnode {
			from += leafNodeHead
		}
		countLeaves(from, x.at+uint32(x.n))
	}
	for i := 1; i < len(refs); i++ {
		if refs[i] != f.res.refs[i] {
			t.Fatalf("%s: result index %d referenced by %d leaves, counted %d", when, i, refs[i], f.res.refs[i])
		}
	}
}
