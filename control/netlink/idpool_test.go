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

// TestIDPoolGrace: a released ID is never handed out again before a grace
// period has passed (a reader that looked a route up just before the
// release may still read that nexthop by its ID); fresh IDs go first, and
// one grace period recycles every ID released since the last.
func TestIDPoolGrace(t *testing.T) {
	graces := 0
	released := map[uint32]bool{} // released since the last grace period
	p := idPool{max: 4, grace: func() error { graces++; clear(released); return nil }}
	ids := []uint32{p.get(), p.get(), p.get()}
	for _, id := range ids[:2] {
		p.put(id)
		released[id] = true
	}
	for range 3 {
		id := p.get()
		if released[id] {
			t.Fatalf("ID %d handed out again before a grace period (graces %d)", id, graces)
		}
		if id == 4 && graces != 0 {
			t.Errorf("a grace period was waited for although ID 4 was fresh")
		}
	}
	if graces != 1 {
		t.Errorf("%d grace periods for one batch of releases, want 1", graces)
	}
}
