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
