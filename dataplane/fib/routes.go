package fib

import (
	"encoding/binary"
	"errors"
)

// ErrCapacity means the table has no room for a change; the table is left
// exactly as it was.
var ErrCapacity = errors.New("fib capacity exhausted")

// ErrNotFound means a deleted prefix was not in the table.
var ErrNotFound = errors.New("prefix not in fib")

// routeSet is one family's routes: a map per prefix length keyed by the
// masked address in compact form (a uint32 for IPv4), so a full table's
// maps stay small and cache-friendly.
type routeSet struct {
	v4  bool
	by4 [33]map[uint32]Result
	by6 [129]map[[2]uint64]Result
	n   int
}

func key4(a *[16]byte) uint32 { return binary.BigEndian.Uint32(a[:4]) }

func key6(a *[16]byte) [2]uint64 {
	return [2]uint64{binary.BigEndian.Uint64(a[:8]), binary.BigEndian.Uint64(a[8:])}
}

// has reports whether any route of length n exists.
func (rs *routeSet) has(n int) bool {
	if rs.v4 {
		return len(rs.by4[n]) > 0
	}
	return len(rs.by6[n]) > 0
}

func (rs *routeSet) get(a *[16]byte, n int) (Result, bool) {
	var r Result
	var ok bool
	if rs.v4 {
		r, ok = rs.by4[n][key4(a)]
	} else {
		r, ok = rs.by6[n][key6(a)]
	}
	return r, ok
}

func (rs *routeSet) put(a *[16]byte, n int, r Result) {
	if rs.v4 {
		m := rs.by4[n]
		if m == nil {
			m = make(map[uint32]Result)
			rs.by4[n] = m
		}
		before := len(m)
		m[key4(a)] = r
		rs.n += len(m) - before
		return
	}
	m := rs.by6[n]
	if m == nil {
		m = make(map[[2]uint64]Result)
		rs.by6[n] = m
	}
	before := len(m)
	m[key6(a)] = r
	rs.n += len(m) - before
}

func (rs *routeSet) del(a *[16]byte, n int) bool {
	if _, ok := rs.get(a, n); !ok {
		return false
	}
	if rs.v4 {
		delete(rs.by4[n], key4(a))
	} else {
		delete(rs.by6[n], key6(a))
	}
	rs.n--
	return true
}

// grow makes room for more routes of length n before a bulk load.
func (rs *routeSet) grow(n, more int) {
	if rs.v4 && len(rs.by4[n]) == 0 {
		rs.by4[n] = make(map[uint32]Result, more)
	} else if !rs.v4 && len(rs.by6[n]) == 0 {
		rs.by6[n] = make(map[[2]uint64]Result, more)
	}
}

func (rs *routeSet) clear() {
	rs.by4, rs.by6, rs.n = [33]map[uint32]Result{}, [129]map[[2]uint64]Result{}, 0
}

// each calls fn for every route until it returns false.
func (rs *routeSet) each(fn func(a [16]byte, n int, r Result) bool) bool {
	for n, m := range rs.by4 {
		for k, r := range m {
			var a [16]byte
			binary.BigEndian.PutUint32(a[:4], k)
			if !fn(a, n, r) {
				return false
			}
		}
	}
	for n, m := range rs.by6 {
		for k, r := range m {
			var a [16]byte
			binary.BigEndian.PutUint64(a[:8], k[0])
			binary.BigEndian.PutUint64(a[8:], k[1])
			if !fn(a, n, r) {
				return false
			}
		}
	}
	return true
}
