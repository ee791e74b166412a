package fib

import (
	"net/netip"
	"sync"
	"testing"

	"github.com/xdprouter/xdprouter/internal/testutil"
)

var (
	fuzzOnce  sync.Once
	fuzzTable *Table
	fuzzErr   error
)

// FuzzUpdates decodes the input as a sequence of inserts and deletes of
// prefixes drawn from a small address space (so they overlap), and after
// each one compares lookups at the prefix's edges with the oracle. At the
// end everything is deleted and the table must be empty again, every
// group given back.
func FuzzUpdates(f *testing.F) {
	testutil.Privileged(f)
	f.Add([]byte{0x01, 24, 10, 0, 0, 0, 0x01, 25, 10, 0, 0, 128, 0x00, 24, 10, 0, 0, 0})
	f.Add([]byte{0x03, 48, 0x20, 1, 0, 1, 0x03, 128, 0x20, 1, 0, 1, 0x02, 48, 0x20, 1, 0, 1})
	f.Add([]byte{0x01, 0, 0, 0, 0, 0, 0x01, 32, 255, 255, 255, 255, 0x00, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		fuzzOnce.Do(func() {
			fuzzTable, fuzzErr = New(Config{Nodes4: 8192, Leaves4: 16384, Nodes6: 32768, Leaves6: 65536, Nexthops: 1, ECMPGroups: 1})
		})
		if fuzzErr != nil {
			t.Fatal(fuzzErr)
		}
		tb := fuzzTable
		ref := refTable{}
		defer func() {
			for p := range ref {
				if err := tb.Delete(p); err != nil {
					t.Fatalf("cleanup delete %s: %v", p, err)
				}
			}
			if st := tb.Stats(); st.Routes4+st.Routes6 != 0 || st.Nodes4+st.Leaves4+st.Nodes6+st.Leaves6 != 0 {
				t.Fatalf("table not empty after deleting every route: %+v", st)
			}
		}()
		for i := 0; i+6 <= len(data) && i < 6*64; i += 6 {
			op, l, b := data[i], int(data[i+1]), data[i+2:i+6]
			var p netip.Prefix
			if op&2 == 0 {
				a := netip.AddrFrom4([4]byte{b[0], b[1], b[2], b[3]})
				p, _ = a.Prefix(l % 33)
			} else {
				// Spread the 4 bytes over the 16 so that deep levels are used.
				var a [16]byte
				a[0], a[1], a[5], a[15] = b[0], b[1], b[2], b[3]
				a[7], a[11] = b[2]^b[3], b[1]
				p, _ = netip.AddrFrom16(a).Prefix(l % 129)
			}
			if op&1 == 1 {
				r := MakeResult(RouteNexthop, uint32(i))
				if err := tb.Insert(p, r); err != nil {
					t.Fatalf("insert %s: %v", p, err)
				}
				ref[p] = r
			} else {
				_, had := ref[p]
				err := tb.Delete(p)
				if had != (err == nil) {
					t.Fatalf("delete %s: %v (present: %v)", p, err, had)
				}
				delete(ref, p)
			}
			for _, a := range []netip.Addr{p.Addr(), lastAddr(p), p.Addr().Prev(), lastAddr(p).Next()} {
				if a.IsValid() {
					if got, want := tb.Lookup(a), ref.lookup(a); got != want {
						t.Fatalf("after op %d on %s: lookup %s = %v, want %v", i/6, p, a, got, want)
					}
				}
			}
		}
	})
}
