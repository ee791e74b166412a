package netlink

import (
	"net"
	"net/netip"
	"runtime/debug"
	"slices"
	"strconv"
	"testing"
	"time"

	vnl "github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/xdprouter/xdprouter/dataplane/fib"
	"github.com/xdprouter/xdprouter/dataplane/fib/tablegen"
	"github.com/xdprouter/xdprouter/lab"
)

// BenchmarkFullTable installs the full table (../shared/data or its
// synthetic twin) into the router's kernel over netlink, one route a
// message, while a mirror follows; then starts a second mirror cold on
// the loaded kernel. It reports the kernel's install time, how far the
// live mirror was behind the kernel when it finished, the cold sync, and
// the process's resident memory (mirror and FIB, plus the benchmark's own
// prefix list) once the live mirror caught up and at its peak.
func BenchmarkFullTable(b *testing.B) {
	for range b.N {
		e := newEnv(b, Config{})
		tb, err := tablegen.Load(0, 0, 1)
		if err != nil {
			b.Fatal(err)
		}
		lab4, lab6 := netip.MustParsePrefix("198.18.0.0/15"), netip.MustParsePrefix("2001:2::/32")
		var ps []netip.Prefix
		for _, p := range append(tb.V4, tb.V6...) {
			if !p.Overlaps(lab4) && !p.Overlaps(lab6) {
				ps = append(ps, p)
			}
		}
		gw4, gw6 := e.l.GatewayV4.AsSlice(), e.l.GatewayV6.AsSlice()
		if err := resetPeakRSS(); err != nil {
			b.Fatal(err)
		}
		t0 := time.Now()
		for _, p := range ps {
			gw := gw4
			if p.Addr().Is6() {
				gw = gw6
			}
			r := &vnl.Route{LinkIndex: e.l.Egress.A.Index, Gw: gw, Protocol: lab.RouteProtocol,
				Dst: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
			if err := e.h.RouteAdd(r); err != nil && err != unix.EEXIST {
				b.Fatalf("route add %s: %v", p, err)
			}
		}
		kernel := time.Since(t0)
		want := len(ps)
		t1 := time.Now()
		for e.m.Stats().Routes < want {
			if time.Since(t1) > time.Minute {
				b.Fatalf("live mirror stuck at %d of %d routes", e.m.Stats().Routes, want)
			}
			time.Sleep(time.Millisecond)
		}
		lag := time.Since(t1)
		_, peak := rss()
		debug.FreeOSMemory() // steady: what stays after a collection
		steady, _ := rss()

		// A cold start on the loaded kernel: dump and load.
		tb2, err := fib.New(fib.Config{Nexthops: 1024, ECMPGroups: 64})
		if err != nil {
			b.Fatal(err)
		}
		m2, err := New(tb2, Config{Namespace: e.l.RouterNS})
		if err != nil {
			b.Fatal(err)
		}
		t2 := time.Now()
		if err := m2.Sync(); err != nil {
			b.Fatal(err)
		}
		cold := time.Since(t2)
		st := m2.Stats()
		m2.Close()
		tb2.Close()
		if st.Routes < want {
			b.Fatalf("cold sync mirrored %d of %d routes", st.Routes, want)
		}
		b.ReportMetric(float64(len(ps)), "routes")
		b.ReportMetric(kernel.Seconds(), "s-kernel-install")
		b.ReportMetric(lag.Seconds()*1000, "ms-live-lag")
		b.ReportMetric(cold.Seconds(), "s-cold-sync")
		b.ReportMetric(steady, "MiB-rss-loaded")
		b.ReportMetric(peak, "MiB-rss-peak")
	}
}

// BenchmarkRouteChange replaces one route's gateway back and forth 1000
// times and measures, for each, the time until the FIB forwards to the new
// gateway: p50 and p99 in ms.
func BenchmarkRouteChange(b *testing.B) {
	e := newEnv(b, Config{})
	p := netip.MustParsePrefix("203.0.113.0/24")
	dst := &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(24, 32)}
	gws := []struct {
		ip      net.IP
		ifindex int
	}{{e.l.GatewayV4.AsSlice(), e.l.Egress.A.Index}, {e.l.Ingress[1].A.V4.Addr().AsSlice(), e.l.Ingress[1].B.Index}}
	// Resolve the second gateway first, so every change is a route change.
	if err := e.h.RouteReplace(&vnl.Route{Dst: dst, Gw: gws[1].ip, LinkIndex: gws[1].ifindex, Protocol: lab.RouteProtocol}); err != nil {
		b.Fatal(err)
	}
	waitFor(b, "second gateway resolved", func() bool { return e.fibView(p.Addr()).outs[itoa(gws[1].ifindex)+"/"+e.l.Ingress[1].A.MAC.String()] })
	var lat []time.Duration
	for range b.N {
		lat = lat[:0]
		for i := range 1000 {
			g := gws[i%2]
			t0 := time.Now()
			if err := e.h.RouteReplace(&vnl.Route{Dst: dst, Gw: g.ip, LinkIndex: g.ifindex, Protocol: lab.RouteProtocol}); err != nil {
				b.Fatal(err)
			}
			for {
				res := e.tb.Lookup(p.Addr())
				e.r.Begin()
				nh, ok := e.r.Nexthop(res.Index())
				e.r.End()
				if ok && int(nh.Ifindex) == g.ifindex {
					break
				}
				if time.Since(t0) > time.Second {
					b.Fatalf("change %d not in the FIB after 1 s", i)
				}
			}
			lat = append(lat, time.Since(t0))
		}
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "ms-p50")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "ms-p99")
	b.ReportMetric(float64(lat[len(lat)-1].Microseconds())/1000, "ms-max")
}

func itoa(i int) string { return strconv.Itoa(i) }
