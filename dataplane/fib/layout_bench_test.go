package fib

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/xdprouter/xdprouter/dataplane/fib/tablegen"
)

// BenchmarkIPv6Layout compares first levels of 2^16 (what the table uses)
// and 2^24 for the IPv6 half of the real table: lookups on table-drawn
// addresses, groups and memory. Both run on plain Go memory here, so only
// the layout differs.
func BenchmarkIPv6Layout(b *testing.B) {
	src, err := tablegen.Load(0, 0, 1)
	if err != nil {
		b.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(9, 9))
	addrs := make([][16]byte, 1<<20)
	for i := range addrs {
		p := src.V6[rng.IntN(len(src.V6))]
		a := p.Addr().As16()
		for k := p.Bits(); k < 128; k++ {
			if rng.IntN(2) == 1 {
				a[k/8] |= 0x80 >> (k % 8)
			}
		}
		addrs[i] = a
	}
	for _, first := range []int{16, 24} {
		tr := newTrie(128, first, make([]uint32, 1<<first), make([]uint32, 80000*groupSize), func() error { return nil })
		for i, p := range src.V6 {
			a := p.Addr().As16()
			if err := tr.insert(a, p.Bits(), MakeResult(RouteNexthop, uint32(i%1024))); err != nil {
				b.Fatal(err)
			}
		}
		mib := float64((1<<first)*4+tr.used*groupSize*4) / (1 << 20)
		for _, mode := range []string{"independent", "chain", "batch"} {
			b.Run(fmt.Sprintf("first%d/%s", first, mode), func(b *testing.B) {
				const m = 1<<20 - 1
				var sink Result
				switch mode {
				case "independent":
					for i := range b.N {
						sink += tr.lookup(&addrs[i&m])
					}
				case "chain":
					idx := 0
					for range b.N {
						r := tr.lookup(&addrs[idx])
						idx = (idx + 1 + int(r&1)) & m
						sink += r
					}
				case "batch":
					out := make([]Result, 64)
					for i := 0; i < b.N; i += 64 {
						j := i & m
						tr.lookupBatch(addrs[j:j+64], out)
						sink += out[0]
					}
				}
				b.ReportMetric(float64(tr.used), "groups")
				b.ReportMetric(mib, "MiB")
				if sink == 1 {
					b.Log(netip.Addr{})
				}
			})
		}
	}
}

// TestSyntheticGroups checks that the synthetic IPv6 table needs about as
// many second-level groups as the real one (38,155 for 160,147 prefixes),
// so that benchmarks on a clone without ../shared size the FIB alike.
func TestSyntheticGroups(t *testing.T) {
	_, v6 := tablegen.Generate(1, 0, 160147, nil, nil)
	tr := newTrie(128, first6, make([]uint32, 1<<first6), make([]uint32, 131072*groupSize), func() error { return nil })
	for _, p := range v6 {
		if err := tr.insert(p.Addr().As16(), p.Bits(), MakeResult(RouteNexthop, 1)); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("synthetic IPv6 table: %d prefixes, %d groups (real: 38155)", len(v6), tr.used)
	if tr.used < 19000 || tr.used > 76000 {
		t.Errorf("synthetic IPv6 table needs %d groups, want within 2x of the real table's 38155", tr.used)
	}
}
