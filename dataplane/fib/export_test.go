package fib

import "net/netip"

// Test helpers shared with the external tests of this package.
var (
	RandPrefix = randPrefix
	Probes     = probes
)

// RefTable is the test oracle.
type RefTable = refTable

// LastAddr is the last address of a prefix.
var LastAddr = lastAddr

// OracleLookup is the oracle's longest-prefix match.
func OracleLookup(r RefTable, a netip.Addr) Result { return r.lookup(a) }

// DIR248 is the layout used until 2026-12 (dir248_test.go) over Go
// memory, for benchmarks against the current one.
type DIR248 struct{ v4, v6 *trie }

// NewDIR248 makes an empty old-layout table with room for groups4 and
// groups6 second-level groups.
func NewDIR248(groups4, groups6 int) *DIR248 {
	none := func() error { return nil }
	return &DIR248{
		v4: newTrie(32, 24, make([]uint32, 1<<24), make([]uint32, groups4*groupSize), none),
		v6: newTrie(128, 16, make([]uint32, 1<<16), make([]uint32, groups6*groupSize), none),
	}
}

// Insert adds a route.
func (d *DIR248) Insert(p netip.Prefix, r Result) error {
	if p.Addr().Is4() {
		var k [16]byte
		b := p.Addr().As4()
		copy(k[:], b[:])
		return d.v4.insert(k, p.Bits(), r)
	}
	return d.v6.insert(p.Addr().As16(), p.Bits(), r)
}

// Delete removes a route.
func (d *DIR248) Delete(p netip.Prefix) error {
	if p.Addr().Is4() {
		var k [16]byte
		b := p.Addr().As4()
		copy(k[:], b[:])
		return d.v4.remove(k, p.Bits())
	}
	return d.v6.remove(p.Addr().As16(), p.Bits())
}

// Bytes is the memory of the first levels and the groups in use.
func (d *DIR248) Bytes() int {
	return (len(d.v4.l0) + len(d.v6.l0) + (d.v4.used+d.v6.used)*groupSize) * 4
}

// Begin and End do nothing: the benchmarks do not write while reading.
func (d *DIR248) Begin() {}

// End does nothing.
func (d *DIR248) End() {}

// Lookup4 looks up an IPv4 address in host order.
func (d *DIR248) Lookup4(a uint32) Result { return d.v4.lookup4(a) }

// Lookup6 looks up an IPv6 address.
func (d *DIR248) Lookup6(a *[16]byte) Result { return d.v6.lookup(a) }

// LookupBatch4 looks up a batch of IPv4 addresses.
func (d *DIR248) LookupBatch4(dst []uint32, out []Result) { d.v4.lookupBatch4(dst, out[:len(dst)]) }

// LookupBatch6 looks up a batch of IPv6 addresses level by level.
func (d *DIR248) LookupBatch6(dst [][16]byte, out []Result) { d.v6.lookupBatch(dst, out[:len(dst)]) }
