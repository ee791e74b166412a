package fib_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/xdprouter/xdprouter/dataplane/fib"
	"github.com/xdprouter/xdprouter/dataplane/fib/fibprobe"
	"github.com/xdprouter/xdprouter/internal/testutil"
)

// churnSet is a set of prefixes, each with a result of its own, under one
// base prefix: any answer for an address must be the base's or that of a
// churned prefix covering the address, whatever moment it was read at.
type churnSet struct {
	base   netip.Prefix
	ps     []netip.Prefix
	probes []netip.Addr
	valid  map[netip.Addr]map[fib.Result]bool
}

func newChurnSet(rng *rand.Rand, v6 bool) *churnSet {
	c := &churnSet{valid: map[netip.Addr]map[fib.Result]bool{}}
	if v6 {
		c.base = netip.MustParsePrefix("2001:db8::/32")
	} else {
		c.base = netip.MustParsePrefix("10.0.0.0/8")
	}
	for len(c.ps) < 600 {
		var a netip.Addr
		var l int
		if v6 {
			b := c.base.Addr().As16()
			for i := 4; i < 16; i++ {
				b[i] = byte(rng.IntN(3))
			}
			a, l = netip.AddrFrom16(b), 33+rng.IntN(96)
		} else {
			// 64 /24s under 10.0.0.0/16, prefixes /17 to /32: groups are
			// created and collapsed all the time.
			a, l = netip.AddrFrom4([4]byte{10, 0, byte(rng.IntN(64)), byte(rng.Uint32())}), 17+rng.IntN(16)
		}
		p, _ := a.Prefix(l)
		if !slices.Contains(c.ps, p) {
			c.ps = append(c.ps, p)
		}
	}
	for range 500 {
		p := c.ps[rng.IntN(len(c.ps))]
		c.probes = append(c.probes, p.Addr(), fib.LastAddr(p))
	}
	for _, a := range c.probes {
		v := map[fib.Result]bool{c.result(-1): true}
		for i, p := range c.ps {
			if p.Contains(a) {
				v[c.result(i)] = true
			}
		}
		c.valid[a] = v
	}
	return c
}

// result is prefix i's own result (-1: the base's).
func (c *churnSet) result(i int) fib.Result { return fib.MakeResult(fib.RouteNexthop, uint32(i+1)) }

// TestConcurrentChurn has Go readers and the kernel look up addresses
// while a writer inserts and deletes prefixes in a table with so few
// nodes and leaves that they are freed and reused all the time.
func TestConcurrentChurn(t *testing.T) {
	testutil.Privileged(t)
	for _, v6 := range []bool{false, true} {
		t.Run(fmt.Sprintf("v6=%v", v6), func(t *testing.T) {
			tb, err := fib.New(fib.Config{Nodes4: 384, Leaves4: 768, Nodes6: 2560, Leaves6: 5120, Nexthops: 4, ECMPGroups: 1})
			if err != nil {
				t.Fatal(err)
			}
			defer tb.Close()
			probe, err := fibprobe.Load(tb)
			if err != nil {
				t.Fatal(err)
			}
			defer probe.Close()
			rng := rand.New(rand.NewPCG(5, 6))
			c := newChurnSet(rng, v6)
			if err := tb.Insert(c.base, c.result(-1)); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			var wg sync.WaitGroup
			var reads, kernelReads atomic.Int64
			errc := make(chan error, 4)
			for range 2 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					r := tb.NewReader()
					defer r.Close()
					v4 := make([]uint32, len(c.probes))
					v6a := make([][16]byte, len(c.probes))
					for i, a := range c.probes {
						if a.Is4() {
							b := a.As4()
							v4[i] = uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
						} else {
							v6a[i] = a.As16()
						}
					}
					out := make([]fib.Result, len(c.probes))
					for ctx.Err() == nil {
						if v6 {
							r.LookupBatch6(v6a, out)
						} else {
							r.LookupBatch4(v4, out)
						}
						for i, res := range out {
							if !c.valid[c.probes[i]][res] {
								errc <- fmt.Errorf("Go reader: %s = %v, which no prefix covering it ever held", c.probes[i], res)
								return
							}
						}
						reads.Add(int64(len(out)))
					}
				}()
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; ctx.Err() == nil; i++ {
					a := c.probes[i%len(c.probes)]
					io := fibprobe.IO{Mode: fibprobe.ModeLookup, Family: 6}
					if a.Is4() {
						io.Family = 4
						b := a.As4()
						copy(io.Addr[:], b[:])
					} else {
						io.Addr = a.As16()
					}
					got, err := probe.Run(io)
					if err != nil {
						errc <- err
						return
					}
					if !c.valid[a][fib.Result(got.Result)] {
						errc <- fmt.Errorf("kernel: %s = %v, which no prefix covering it ever held", a, fib.Result(got.Result))
						return
					}
					kernelReads.Add(1)
				}
			}()

			in := make([]bool, len(c.ps))
			start := time.Now()
			ops := 0
			var failed error
			// Churn until the run proves something (enough grace periods
			// and reads on both sides), however fast this machine's RCU
			// grace periods are; give up after 30 s.
			enough := func() bool {
				return time.Since(start) > 1500*time.Millisecond && tb.Stats().GracePeriods >= 100 &&
					kernelReads.Load() >= 10000 && reads.Load() >= 1000000
			}
			for ; failed == nil && !enough() && time.Since(start) < 30*time.Second; ops++ {
				i := rng.IntN(len(c.ps))
				var err error
				if in[i] {
					err = tb.Delete(c.ps[i])
				} else {
					err = tb.Insert(c.ps[i], c.result(i))
				}
				switch {
				case err == nil:
					in[i] = !in[i]
				case errorsIsCapacity(err):
					// Full: delete some present prefix instead, so blocks
					// are retired and then reused after a grace period.
					for j := range in {
						if k := (i + j) % len(in); in[k] {
							// A delete copies a path too: it may be
							// refused while the old blocks wait for readers.
							if failed = tb.Delete(c.ps[k]); failed == nil {
								in[k] = false
							} else if errorsIsCapacity(failed) {
								failed = nil
							}
							break
						}
					}
				default:
					failed = err
				}
				select {
				case failed = <-errc:
				default:
				}
			}
			// Readers stop before the table closes, whatever happened.
			cancel()
			wg.Wait()
			close(errc)
			if failed != nil {
				t.Fatal(failed)
			}
			for err := range errc {
				t.Fatal(err)
			}
			st := tb.Stats()
			t.Logf("%d writes in %v with %d grace periods; %d Go lookups, %d kernel lookups checked",
				ops, time.Since(start).Round(time.Millisecond), st.GracePeriods, reads.Load(), kernelReads.Load())
			if st.GracePeriods < 100 || kernelReads.Load() < 10000 || reads.Load() < 1000000 {
				t.Errorf("churn too gentle to prove anything: %+v", st)
			}
		})
	}
}

// TestReuseWaitsForReaders proves the reclamation rule deterministically:
// blocks unpublished while a Reader is inside a read section are not
// reused until the reader leaves it, and every reuse follows a kernel
// grace period.
func TestReuseWaitsForReaders(t *testing.T) {
	testutil.Privileged(t)
	tb, err := fib.New(fib.Config{Nodes4: 2, Leaves4: 3, Nodes6: 1, Leaves6: 1, Nexthops: 1, ECMPGroups: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer tb.Close()
	a, b := netip.MustParsePrefix("10.0.0.0/25"), netip.MustParsePrefix("10.0.1.0/25")
	if err := tb.Insert(a, fib.MakeResult(fib.RouteNexthop, 1)); err != nil {
		t.Fatal(err)
	}
	r := tb.NewReader()
	defer r.Close()
	r.Begin() // a reader that may hold a pointer into a's nodes
	if err := tb.Delete(a); err != nil {
		t.Fatal(err)
	}
	graces := tb.Stats().GracePeriods
	done := make(chan error, 1)
	go func() { done <- tb.Insert(b, fib.MakeResult(fib.RouteNexthop, 2)) }()
	select {
	case err := <-done:
		t.Fatalf("the only nodes were reused while a reader was inside a read section (insert returned %v)", err)
	case <-time.After(200 * time.Millisecond):
	}
	r.End()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("insert still blocked after the reader left its section")
	}
	if tb.Stats().GracePeriods != graces+1 {
		t.Errorf("grace periods %d -> %d, want one for the reuse", graces, tb.Stats().GracePeriods)
	}
	if got := tb.Lookup(netip.MustParseAddr("10.0.1.1")); got != fib.MakeResult(fib.RouteNexthop, 2) {
		t.Errorf("after reuse: %v", got)
	}
}
