package fib

import (
	"math/rand/v2"
	"net/netip"
)

// refTable is the test oracle: a map of prefixes, looked up by trying
// every prefix length from the longest down.
type refTable map[netip.Prefix]Result

func (r refTable) lookup(a netip.Addr) Result {
	for l := a.BitLen(); l >= 0; l-- {
		p, _ := a.Prefix(l)
		if res, ok := r[p]; ok {
			return res
		}
	}
	return 0
}

// randPrefix draws a prefix whose length follows roughly the real table's
// shape, with the edges (/0, /1, full length) included; addresses are
// squeezed into a few regions so that prefixes overlap a lot.
func randPrefix(rng *rand.Rand, v6 bool) netip.Prefix {
	var a netip.Addr
	var l int
	if v6 {
		var b [16]byte
		b[0], b[1] = 0x20, byte(rng.IntN(4))
		for i := 2; i < 16; i++ {
			b[i] = byte(rng.IntN(4))
			if rng.IntN(3) == 0 {
				b[i] = byte(rng.Uint32())
			}
		}
		a = netip.AddrFrom16(b)
		ls := []int{0, 1, 8, 15, 16, 17, 23, 24, 25, 32, 33, 40, 47, 48, 49, 56, 64, 65, 96, 120, 127, 128}
		l = ls[rng.IntN(len(ls))]
	} else {
		b := [4]byte{byte(10 + rng.IntN(3)), byte(rng.IntN(4)), byte(rng.IntN(4)), byte(rng.Uint32())}
		a = netip.AddrFrom4(b)
		ls := []int{12, 16, 20, 22, 23, 24, 24, 24, 25, 26, 28, 30, 31, 32}
		l = ls[rng.IntN(len(ls))]
		if rng.IntN(100) == 0 {
			// Short prefixes repaint up to 2^24 entries: present, but rare,
			// as in real tables.
			l = []int{0, 1, 7, 8}[rng.IntN(4)]
		}
	}
	p, _ := a.Prefix(l)
	return p
}

// probes returns addresses at and around each prefix's edges plus random
// ones in the same regions.
func probes(rng *rand.Rand, ps []netip.Prefix, v6 bool, n int) []netip.Addr {
	var out []netip.Addr
	for _, p := range ps {
		first := p.Addr()
		last := lastAddr(p)
		out = append(out, first, last)
		if prev := first.Prev(); prev.IsValid() {
			out = append(out, prev)
		}
		if next := last.Next(); next.IsValid() {
			out = append(out, next)
		}
	}
	for range n {
		out = append(out, randPrefix(rng, v6).Addr())
	}
	return out
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}
