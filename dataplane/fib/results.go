package fib

import "sync/atomic"

// MaxResults is how many distinct results (nexthops, ECMP groups, route
// types) the leaves of both families can hold at once: a leaf is a 16-bit
// index into the results array.
const MaxResults = 1 << 16

// results is the array leaves index (fib_results in bpf/fib.h), shared by
// both families. Index 0 is "no route" for good. An index holds one
// result while any leaf block that uses it is live or waits for a grace
// period (it counts a reference per leaf), so a reader that found it in a
// leaf reads the result it meant.
type results struct {
	vals  []uint32 // mapped; written before a leaf can point at it
	index map[Result]uint16
	refs  []uint32
	free  []uint16
	next  int
}

func newResults(vals []uint32) *results {
	return &results{vals: vals, index: map[Result]uint16{}, refs: make([]uint32, len(vals)), next: 1}
}

// peek returns r's index if it has one.
func (rt *results) peek(r Result) (uint16, bool) {
	if r == 0 {
		return 0, true
	}
	i, ok := rt.index[r]
	return i, ok
}

// ref takes a reference on r's index, giving it one if needed; false
// when every index is taken.
func (rt *results) ref(r Result) (uint16, bool) {
	if r == 0 {
		return 0, true
	}
	if i, ok := rt.index[r]; ok {
		rt.refs[i]++
		return i, true
	}
	var i uint16
	switch n := len(rt.free); {
	case n > 0:
		i = rt.free[n-1]
		rt.free = rt.free[:n-1]
	case rt.next < len(rt.vals):
		i = uint16(rt.next)
		rt.next++
	default:
		return 0, false
	}
	atomic.StoreUint32(&rt.vals[i], uint32(r))
	rt.index[r], rt.refs[i] = i, 1
	return i, true
}

// unref drops a reference; an index without any is free again.
func (rt *results) unref(i uint16) {
	if i == 0 {
		return
	}
	if rt.refs[i]--; rt.refs[i] == 0 {
		delete(rt.index, Result(rt.vals[i]))
		rt.free = append(rt.free, i)
	}
}

// used is how many indices hold a result.
func (rt *results) used() int { return len(rt.index) }

// rebuild recounts the references from reopened maps: refs holds, per
// index, the leaves that use it.
func (rt *results) rebuild(refs []uint32) {
	rt.index, rt.free, rt.next = map[Result]uint16{}, rt.free[:0], 1
	copy(rt.refs, refs)
	for i := 1; i < len(rt.refs); i++ {
		if rt.refs[i] > 0 {
			rt.index[Result(rt.vals[i])] = uint16(i)
			rt.next = i + 1
		}
	}
	for i := 1; i < rt.next; i++ {
		if rt.refs[i] == 0 {
			rt.free = append(rt.free, uint16(i))
		}
	}
}
