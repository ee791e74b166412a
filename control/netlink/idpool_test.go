package netlink

import (
	"slices"
	"testing"
)

// TestIDPool: IDs come from 1 up, skip reserved ones while there is room
// below max, then take reserved ones back (marked taken); unreserve frees
// the rest.
func TestIDPool(t *testing.T) {
	p := idPool{max: 5}
	p.reserve([]uint32{1, 3})
	var got []uint32
	for range 5 {
		got = append(got, p.get())
	}
	if !slices.Equal(got[:3], []uint32{2, 4, 5}) {
		t.Fatalf("first IDs %v, want 2 4 5 (1 and 3 reserved)", got[:3])
	}
	rest := slices.Sorted(slices.Values(got[3:]))
	if !slices.Equal(rest, []uint32{1, 3}) || !p.taken[1] || !p.taken[3] {
		t.Fatalf("without room the pool gave %v (taken %v), want the reserved 1 and 3 back", got[3:], p.taken)
	}
	q := idPool{}
	q.reserve([]uint32{2})
	if a, b := q.get(), q.get(); a != 1 || b != 3 {
		t.Fatalf("unbounded pool gave %d, %d; want 1, 3", a, b)
	}
	q.unreserve()
	if id := q.get(); id != 2 {
		t.Errorf("after unreserve got %d, want the freed 2", id)
	}
}
