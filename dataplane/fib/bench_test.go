package fib_test

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/gaissmai/bart"

	"github.com/xdprouter/xdprouter/dataplane/fib"
	"github.com/xdprouter/xdprouter/dataplane/fib/fibprobe"
	"github.com/xdprouter/xdprouter/dataplane/fib/tablegen"
	"github.com/xdprouter/xdprouter/internal/testutil"
)

// benchEnv is a full table loaded into our FIB and into bart, with address
// sets to look up.
type benchEnv struct {
	source   string
	routes   []fib.Route
	fib      *fib.Table
	bart     *bart.Table[fib.Result]
	bartHeap uint64 // bytes bart's table holds
	old      *fib.DIR248
	addrs    map[string]*addrSet
}

// addrSet holds the same addresses in each form the lookups take.
type addrSet struct {
	v4   []uint32
	v6   [][16]byte
	nets []netip.Addr
}

const nAddrs = 1 << 20

var (
	envMu sync.Mutex
	envs  = map[string]*benchEnv{}
)

// env returns the table "real" (the 2024 table as is) or "today" (scaled
// up to 1.04 M IPv4 and 0.22 M IPv6 prefixes), built once per process.
func env(b *testing.B, which string) *benchEnv {
	testutil.Privileged(b)
	envMu.Lock()
	defer envMu.Unlock()
	if e, ok := envs[which]; ok {
		return e
	}
	n4, n6 := 0, 0
	if which == "today" {
		n4, n6 = tablegen.Today4, tablegen.Today6
	}
	src, err := tablegen.Load(n4, n6, 1)
	if err != nil {
		b.Fatal(err)
	}
	e := &benchEnv{source: src.Source, addrs: map[string]*addrSet{}}
	for i, p := range append(src.V4, src.V6...) {
		e.routes = append(e.routes, fib.Route{Prefix: p, Result: fib.MakeResult(fib.RouteNexthop, uint32(i%1024))})
	}
	e.fib, err = fib.New(fib.Config{})
	if err != nil {
		b.Fatal(err)
	}
	if err := e.fib.Load(e.routes); err != nil {
		b.Fatal(err)
	}
	runtime.GC()
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	e.bart = new(bart.Table[fib.Result])
	for _, r := range e.routes {
		e.bart.Insert(r.Prefix, r.Result)
	}
	runtime.GC()
	runtime.ReadMemStats(&m1)
	e.bartHeap = m1.HeapAlloc - m0.HeapAlloc
	e.old = fib.NewDIR248(16384, 131072)
	for _, r := range e.routes {
		if err := e.old.Insert(r.Prefix, r.Result); err != nil {
			b.Fatal(err)
		}
	}
	st := e.fib.Stats()
	b.Logf("table %s: fib %.2f MiB (%d+%d nodes, %d+%d leaves), DIR-24-8 %.2f MiB, bart %.2f MiB of heap", which,
		float64(st.TableBytes)/(1<<20), st.Nodes4, st.Nodes6, st.Leaves4, st.Leaves6,
		float64(e.old.Bytes())/(1<<20), float64(e.bartHeap)/(1<<20))

	rng := rand.New(rand.NewPCG(7, 8))
	e.addrs["random4"] = makeSet(func() netip.Addr {
		return netip.AddrFrom4([4]byte{byte(rng.Uint32()), byte(rng.Uint32()), byte(rng.Uint32()), byte(rng.Uint32())})
	})
	e.addrs["drawn4"] = makeSet(func() netip.Addr { return inside(rng, src.V4[rng.IntN(len(src.V4))]) })
	// One address under a /24 over and over: every read hits L1, so a
	// lookup costs its instructions (the popcounts clang expands for BPF).
	hot := inside(rng, netip.MustParsePrefix("198.51.100.0/24"))
	for _, p := range src.V4 {
		if p.Bits() == 24 {
			hot = inside(rng, p)
			break
		}
	}
	e.addrs["hot4"] = makeSet(func() netip.Addr { return hot })
	e.addrs["random6"] = makeSet(func() netip.Addr {
		var a [16]byte
		for i := range a {
			a[i] = byte(rng.Uint32())
		}
		a[0] = 0x20 | a[0]&0x1f
		return netip.AddrFrom16(a)
	})
	e.addrs["drawn6"] = makeSet(func() netip.Addr { return inside(rng, src.V6[rng.IntN(len(src.V6))]) })
	b.Logf("table %s: %d routes (%s)", which, len(e.routes), e.source)
	envs[which] = e
	return e
}

func makeSet(next func() netip.Addr) *addrSet {
	s := &addrSet{nets: make([]netip.Addr, nAddrs)}
	for i := range s.nets {
		a := next()
		s.nets[i] = a
		if a.Is4() {
			b := a.As4()
			s.v4 = append(s.v4, uint32(b[0])<<24|uint32(b[1])<<16|uint32(b[2])<<8|uint32(b[3]))
		} else {
			s.v6 = append(s.v6, a.As16())
		}
	}
	return s
}

// inside returns a random address of p.
func inside(rng *rand.Rand, p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		if rng.IntN(2) == 1 {
			b[i/8] |= 0x80 >> (i % 8)
		}
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// BenchmarkLookup compares our table, the DIR-24-8 layout it replaced
// and bart, one lookup per op:
// independent lookups (throughput), a serial chain (each address depends
// on the previous result: the latency a lone packet sees) and batches of
// 64 through the Reader API (bart has no batch API: a plain loop).
func BenchmarkLookup(b *testing.B) {
	for _, which := range []string{"real", "today"} {
		for _, set := range []string{"random4", "drawn4", "random6", "drawn6"} {
			for _, impl := range []string{"fib", "dir248", "bart"} {
				for _, mode := range []string{"independent", "chain", "batch"} {
					b.Run(fmt.Sprintf("%s/%s/%s/%s", which, set, impl, mode), func(b *testing.B) {
						e := env(b, which)
						benchLookup(b, e, e.addrs[set], impl, mode)
					})
				}
			}
		}
	}
}

// lookuper is what benchLookup needs of a table: fib.Reader and the old
// layout have it.
type lookuper interface {
	Begin()
	End()
	Lookup4(uint32) fib.Result
	Lookup6(*[16]byte) fib.Result
	LookupBatch4([]uint32, []fib.Result)
	LookupBatch6([][16]byte, []fib.Result)
}

func benchLookup(b *testing.B, e *benchEnv, s *addrSet, impl, mode string) {
	const m = nAddrs - 1
	var sink fib.Result
	rd := e.fib.NewReader()
	defer rd.Close()
	var r lookuper = rd
	if impl == "dir248" {
		r = e.old
	}
	v6 := len(s.v6) > 0
	b.ResetTimer()
	switch {
	case impl == "bart" && mode == "chain":
		idx := 0
		for range b.N {
			res, _ := e.bart.Lookup(s.nets[idx])
			idx = (idx + 1 + int(res&1)) & m
			sink += res
		}
	case impl == "bart":
		for i := range b.N {
			res, _ := e.bart.Lookup(s.nets[i&m])
			sink += res
		}
	case mode == "batch":
		out := make([]fib.Result, 64)
		for i := 0; i < b.N; i += 64 {
			j := i & m
			if v6 {
				r.LookupBatch6(s.v6[j:j+64], out)
			} else {
				r.LookupBatch4(s.v4[j:j+64], out)
			}
			sink += out[0]
		}
	case mode == "chain":
		idx := 0
		r.Begin()
		for range b.N {
			var res fib.Result
			if v6 {
				res = r.Lookup6(&s.v6[idx])
			} else {
				res = r.Lookup4(s.v4[idx])
			}
			idx = (idx + 1 + int(res&1)) & m
			sink += res
		}
		r.End()
	default:
		r.Begin()
		for i := range b.N {
			if v6 {
				sink += r.Lookup6(&s.v6[i&m])
			} else {
				sink += r.Lookup4(s.v4[i&m])
			}
		}
		r.End()
	}
	b.StopTimer()
	if sink == 1 {
		b.Log("unlikely")
	}
}

// BenchmarkKernelLookup measures the XDP side: the probe program looks up
// the same 2^20 IPv4 addresses as BenchmarkLookup in a bpf_loop per run,
// reading the same maps.
func BenchmarkKernelLookup(b *testing.B) {
	for _, set := range []string{"random4", "drawn4", "hot4"} {
		for _, chain := range []bool{false, true} {
			name := "independent"
			if chain {
				name = "chain"
			}
			b.Run(fmt.Sprintf("real/%s/%s", set, name), func(b *testing.B) {
				e := env(b, "real")
				p, err := fibprobe.Load(e.fib)
				if err != nil {
					b.Fatal(err)
				}
				defer p.Close()
				if err := p.SetAddrs(e.addrs[set].v4[:fibprobe.Addrs]); err != nil {
					b.Fatal(err)
				}
				b.ResetTimer()
				per, err := p.Bench(fibprobe.Addrs, chain, uint32(max(1, b.N/fibprobe.Addrs)))
				if err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(float64(per.Nanoseconds()), "ns/lookup")
			})
		}
	}
}

// BenchmarkLoad measures loading a whole family of the table into an
// empty FIB (and building bart from nothing), with memory.
func BenchmarkLoad(b *testing.B) {
	for _, which := range []string{"real", "today"} {
		for _, fam := range []int{4, 6} {
			for _, impl := range []string{"fib", "bart"} {
				b.Run(fmt.Sprintf("%s/v%d/%s", which, fam, impl), func(b *testing.B) {
					e := env(b, which)
					var routes []fib.Route
					for _, r := range e.routes {
						if r.Prefix.Addr().Is4() == (fam == 4) {
							routes = append(routes, r)
						}
					}
					var tb *fib.Table
					if impl == "fib" {
						var err error
						if tb, err = fib.New(fib.Config{}); err != nil {
							b.Fatal(err)
						}
						defer tb.Close()
					}
					var bytes float64
					var took time.Duration
					for range b.N {
						if impl == "bart" {
							runtime.GC()
							var m0, m1 runtime.MemStats
							runtime.ReadMemStats(&m0)
							t0 := time.Now()
							bt := new(bart.Table[fib.Result])
							for _, r := range routes {
								bt.Insert(r.Prefix, r.Result)
							}
							took += time.Since(t0)
							runtime.ReadMemStats(&m1)
							bytes = float64(m1.HeapAlloc - m0.HeapAlloc)
							runtime.KeepAlive(bt)
							continue
						}
						if err := tb.Clear(); err != nil {
							b.Fatal(err)
						}
						t0 := time.Now()
						if err := tb.Load(routes); err != nil {
							b.Fatal(err)
						}
						took += time.Since(t0)
						bytes = float64(tb.Stats().TableBytes)
					}
					b.ReportMetric(float64(took.Milliseconds())/float64(b.N), "ms/load")
					b.ReportMetric(bytes/(1<<20), "MiB")
					b.ReportMetric(float64(len(routes))/took.Seconds()*float64(b.N), "routes/s")
				})
			}
		}
	}
}

// BenchmarkUpdate inserts and deletes a prefix in the full table, one
// pair per op: a /24, a /28 (nodes created and freed) and a /48 for IPv6.
func BenchmarkUpdate(b *testing.B) {
	for _, pf := range []string{"203.0.113.0/24", "203.0.113.16/28", "2001:db8:1234::/48"} {
		for _, impl := range []string{"fib", "dir248", "bart"} {
			b.Run(fmt.Sprintf("%s/%s", pf, impl), func(b *testing.B) {
				e := env(b, "real")
				p := netip.MustParsePrefix(pf)
				res := fib.MakeResult(fib.RouteNexthop, 7)
				for range b.N {
					if err := update(e, impl, p, res, true); err != nil {
						b.Fatal(err)
					}
					if err := update(e, impl, p, res, false); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkChurn changes routes of the full table as BGP does, one change
// per op, and reports changes per second: "replace" points a random
// route at another nexthop, "withdraw" deletes a random route and
// announces it again (two changes).
func BenchmarkChurn(b *testing.B) {
	for _, mode := range []string{"replace", "withdraw"} {
		for _, impl := range []string{"fib", "dir248", "bart"} {
			b.Run(fmt.Sprintf("real/%s/%s", mode, impl), func(b *testing.B) {
				e := env(b, "real")
				rng := rand.New(rand.NewPCG(3, 4))
				b.ResetTimer()
				t0 := time.Now()
				changes := 0
				for i := 0; changes < b.N; i++ {
					r := e.routes[rng.IntN(len(e.routes))]
					if mode == "replace" {
						if err := update(e, impl, r.Prefix, fib.MakeResult(fib.RouteNexthop, uint32(i%1024)), true); err != nil {
							b.Fatal(err)
						}
						// Put it back, so the table stays the real one.
						if err := update(e, impl, r.Prefix, r.Result, true); err != nil {
							b.Fatal(err)
						}
					} else {
						if err := update(e, impl, r.Prefix, 0, false); err != nil {
							b.Fatal(err)
						}
						if err := update(e, impl, r.Prefix, r.Result, true); err != nil {
							b.Fatal(err)
						}
					}
					changes += 2
				}
				b.ReportMetric(float64(changes)/time.Since(t0).Seconds(), "changes/s")
			})
		}
	}
}

// update inserts (or deletes) p in one of the benchmark's tables.
func update(e *benchEnv, impl string, p netip.Prefix, r fib.Result, insert bool) error {
	switch {
	case impl == "bart" && insert:
		e.bart.Insert(p, r)
	case impl == "bart":
		e.bart.Delete(p)
	case impl == "dir248" && insert:
		return e.old.Insert(p, r)
	case impl == "dir248":
		return e.old.Delete(p)
	case insert:
		return e.fib.Insert(p, r)
	default:
		return e.fib.Delete(p)
	}
	return nil
}
