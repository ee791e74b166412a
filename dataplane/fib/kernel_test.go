package fib_test

import (
	"errors"
	"math/rand/v2"
	"net"
	"net/netip"
	"testing"

	"github.com/xdprouter/xdprouter/dataplane/fib"
	"github.com/xdprouter/xdprouter/dataplane/fib/fibprobe"
	"github.com/xdprouter/xdprouter/internal/testutil"
)

// TestKernelAgrees fills a table from Go and asks the kernel, through a
// BPF program reading the same mmap'd maps, for every probe address: the
// result, the nexthop and the ECMP member must be the ones Go reads.
func TestKernelAgrees(t *testing.T) {
	testutil.Privileged(t)
	tb, err := fib.New(fib.Config{Nexthops: 256, ECMPGroups: 32})
	if err != nil {
		t.Fatal(err)
	}
	defer tb.Close()
	p, err := fibprobe.Load(tb)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	rng := rand.New(rand.NewPCG(1, 2))
	for id := range uint32(256) {
		nh := fib.Nexthop{Ifindex: int(id) + 1, MTU: 1500 + int(id), State: fib.NexthopState(1 + id%3),
			SrcMAC: net.HardwareAddr{2, 0, 0, 0, 0, byte(id)}, DstMAC: net.HardwareAddr{2, 1, 1, 1, 1, byte(id)}}
		if err := tb.SetNexthop(id, nh); err != nil {
			t.Fatal(err)
		}
	}
	for g := range uint32(32) {
		m := make([]uint32, 1+g%16)
		for i := range m {
			m[i] = uint32(rng.IntN(256))
		}
		if err := tb.SetECMP(g, m); err != nil {
			t.Fatal(err)
		}
	}
	r := tb.NewReader()
	defer r.Close()
	for _, v6 := range []bool{false, true} {
		ref := fib.RefTable{}
		var ps []netip.Prefix
		for range 4000 {
			pf := fib.RandPrefix(rng, v6)
			var res fib.Result
			switch rng.IntN(4) {
			case 0:
				res = fib.MakeResult(fib.RouteECMP, uint32(rng.IntN(32)))
			case 1:
				res = fib.MakeResult(fib.RouteType(3+rng.IntN(5)), 0)
			default:
				res = fib.MakeResult(fib.RouteNexthop, uint32(rng.IntN(256)))
			}
			if err := tb.Insert(pf, res); err != nil {
				t.Fatal(err)
			}
			ref[pf] = res
			ps = append(ps, pf)
		}
		for i, a := range fib.Probes(rng, ps, v6, 3000) {
			io := fibprobe.IO{Mode: fibprobe.ModeLookup, Family: 4, Hash: rng.Uint32()}
			var want fib.Result
			r.Begin()
			if a.Is4() {
				b := a.As4()
				copy(io.Addr[:], b[:])
				want = r.Lookup4(uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]))
			} else {
				io.Family = 6
				io.Addr = a.As16()
				want = r.Lookup6(&io.Addr)
			}
			wantNH, wantID, wantOK := resolve(r, want, io.Hash)
			r.End()
			if o := fib.OracleLookup(ref, a); want != o {
				t.Fatalf("%s: Go reader %v, oracle %v", a, want, o)
			}
			got, err := p.Run(io)
			if err != nil {
				t.Fatal(err)
			}
			if fib.Result(got.Result) != want {
				t.Fatalf("probe %d %s: kernel %v, Go %v", i, a, fib.Result(got.Result), want)
			}
			if (got.NexthopOK == 1) != wantOK || wantOK && (got.NexthopID != wantID || got.Nexthop != wantNH) {
				t.Fatalf("%s (%v): kernel nexthop %d %+v ok=%d, Go %d %+v ok=%v",
					a, want, got.NexthopID, got.Nexthop, got.NexthopOK, wantID, wantNH, wantOK)
			}
		}
	}
}

func resolve(r *fib.Reader, res fib.Result, hash uint32) (fib.NexthopEntry, uint32, bool) {
	id := res.Index()
	switch res.Type() {
	case fib.RouteECMP:
		var ok bool
		if id, ok = r.ECMPMember(id, hash); !ok {
			return fib.NexthopEntry{}, 0, false
		}
	case fib.RouteNexthop:
	default:
		return fib.NexthopEntry{}, 0, false
	}
	nh, ok := r.Nexthop(id)
	return nh, id, ok
}

// TestHashAgrees checks that Go and the kernel hash flows bit for bit alike.
func TestHashAgrees(t *testing.T) {
	testutil.Privileged(t)
	tb, err := fib.New(fib.Config{Nodes4: 16, Leaves4: 32, Nodes6: 16, Leaves6: 32, Nexthops: 1, ECMPGroups: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer tb.Close()
	p, err := fibprobe.Load(tb)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	rng := rand.New(rand.NewPCG(3, 4))
	seen := map[uint32]bool{}
	for i := range 2000 {
		io := fibprobe.IO{Mode: fibprobe.ModeHash, Family: 4, Proto: uint32(rng.IntN(256))}
		sport, dport := uint16(rng.Uint32()), uint16(rng.Uint32())
		io.Ports = uint32(sport)<<16 | uint32(dport)
		var want uint32
		if i%2 == 0 {
			s, d := rng.Uint32(), rng.Uint32()
			for k := range 4 {
				io.Src[k], io.Addr[k] = byte(s>>(24-8*k)), byte(d>>(24-8*k))
			}
			want = fib.FlowHash4(s, d, uint8(io.Proto), sport, dport)
		} else {
			io.Family = 6
			for k := range 16 {
				io.Src[k], io.Addr[k] = byte(rng.Uint32()), byte(rng.Uint32())
			}
			want = fib.FlowHash6(&io.Src, &io.Addr, uint8(io.Proto), sport, dport)
		}
		got, err := p.Run(io)
		if err != nil {
			t.Fatal(err)
		}
		if got.Hash != want {
			t.Fatalf("flow %d (IPv%d): kernel hash %#x, Go %#x", i, io.Family, got.Hash, want)
		}
		seen[want] = true
	}
	if len(seen) < 1990 {
		t.Errorf("only %d distinct hashes for 2000 random flows", len(seen))
	}
}

func errorsIsCapacity(err error) bool { return errors.Is(err, fib.ErrCapacity) }
