package netlink

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	vnl "github.com/vishvananda/netlink"

	"github.com/xdprouter/xdprouter/dataplane/fib"
	"github.com/xdprouter/xdprouter/dataplane/fib/tablegen"
)

// ensureBIRD returns the bird binary, installing Debian's bird2 when it is
// missing; it skips only when the package cannot be installed (and fails
// in CI, where a skip is a failure).
func ensureBIRD(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("bird"); err == nil {
		return p
	}
	out, err := exec.Command("sh", "-c", "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bird2").CombinedOutput()
	if p, lerr := exec.LookPath("bird"); lerr == nil {
		return p
	}
	msg := fmt.Sprintf("BIRD 2 (Debian bird2) is not installed and could not be: %v %s", err, out)
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// birdConfig writes a BIRD 2 configuration exporting static routes via
// the lab's gateways into the kernel's main table.
func birdConfig(t *testing.T, path string, e *env, v4, v6 []netip.Prefix) {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "router id %s;\nprotocol device {}\n", e.l.Egress.A.V4.Addr())
	fmt.Fprintf(&b, "protocol kernel k4 { ipv4 { import none; export all; }; }\n")
	fmt.Fprintf(&b, "protocol kernel k6 { ipv6 { import none; export all; }; }\n")
	fmt.Fprintf(&b, "protocol static s4 { ipv4;\n")
	for _, p := range v4 {
		fmt.Fprintf(&b, "  route %s via %s;\n", p, e.l.GatewayV4)
	}
	fmt.Fprintf(&b, "}\nprotocol static s6 { ipv6;\n")
	for _, p := range v6 {
		fmt.Fprintf(&b, "  route %s via %s;\n", p, e.l.GatewayV6)
	}
	b.WriteString("}\n")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
}

// kernelBIRDRoutes counts the router's main-table routes from BIRD.
func (e *env) kernelBIRDRoutes(t *testing.T) int {
	t.Helper()
	rs, err := e.h.RouteListFiltered(vnl.FAMILY_ALL, &vnl.Route{Protocol: 12}, vnl.RT_FILTER_PROTOCOL)
	if err != nil && !strings.Contains(err.Error(), "interrupted") {
		t.Fatal(err)
	}
	return len(rs)
}

// TestBIRD runs a real routing daemon in the router namespace: BIRD
// exports 100 k IPv4 and 20 k IPv6 routes to the kernel, and the FIB
// converges to them; BIRD withdraws half, and the FIB follows.
func TestBIRD(t *testing.T) {
	bird := ensureBIRD(t)
	e := newEnv(t, Config{})
	tb, err := tablegen.Load(0, 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	lab4, lab6 := netip.MustParsePrefix("198.18.0.0/15"), netip.MustParsePrefix("2001:2::/32")
	pick := func(ps []netip.Prefix, n int, avoid netip.Prefix) []netip.Prefix {
		var out []netip.Prefix
		for _, p := range ps {
			if !p.Overlaps(avoid) {
				out = append(out, p)
			}
			if len(out) == n {
				break
			}
		}
		return out
	}
	v4, v6 := pick(tb.V4, 100000, lab4), pick(tb.V6, 20000, lab6)
	dir := t.TempDir()
	conf, sock, pidf := filepath.Join(dir, "bird.conf"), filepath.Join(dir, "bird.ctl"), filepath.Join(dir, "bird.pid")
	birdConfig(t, conf, e, v4, v6)
	t0 := time.Now()
	if out, err := exec.Command("ip", "netns", "exec", e.l.RouterNS, bird, "-c", conf, "-s", sock, "-P", pidf).CombinedOutput(); err != nil {
		t.Fatalf("start bird: %v %s", err, out)
	}
	t.Cleanup(func() {
		if b, err := os.ReadFile(pidf); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
				syscall.Kill(pid, syscall.SIGTERM)
				time.Sleep(200 * time.Millisecond)
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})
	want := len(v4) + len(v6)
	waitLong(t, "BIRD's routes in the kernel", 120*time.Second, func() bool { return e.kernelBIRDRoutes(t) == want })
	kernelDone := time.Since(t0)
	rng := rand.New(rand.NewPCG(1, 1))
	sample := func(ps []netip.Prefix) []netip.Prefix {
		var s []netip.Prefix
		for range 1000 {
			s = append(s, ps[rng.IntN(len(ps))])
		}
		return s
	}
	all := append(append([]netip.Prefix{}, v4...), v6...)
	// Both gateways' permanent neighbour entries carry the sink's MAC.
	out := fmt.Sprintf("%d/%s", e.l.Egress.A.Index, e.l.Egress.B.MAC)
	routed := func(p netip.Prefix) bool {
		v := e.fibView(p.Addr())
		return v.typ == fib.RouteNexthop && v.outs[out]
	}
	waitLong(t, "FIB converged to BIRD's table", 60*time.Second, func() bool {
		if e.m.Stats().Routes < want {
			return false
		}
		for _, p := range sample(all) {
			if !routed(p) {
				return false
			}
		}
		return true
	})
	t.Logf("BIRD: %d routes in the kernel after %v, in the FIB %v after that; mirror %+v",
		want, kernelDone.Round(time.Millisecond), (time.Since(t0) - kernelDone).Round(time.Millisecond), e.m.Stats())

	// Withdraw half: BIRD reconfigures with the first half only.
	birdConfig(t, conf, e, v4[:len(v4)/2], v6[:len(v6)/2])
	if out, err := exec.Command("ip", "netns", "exec", e.l.RouterNS, "birdc", "-s", sock, "configure").CombinedOutput(); err != nil {
		t.Fatalf("birdc configure: %v %s", err, out)
	}
	half := len(v4)/2 + len(v6)/2
	waitLong(t, "BIRD withdrew half from the kernel", 120*time.Second, func() bool { return e.kernelBIRDRoutes(t) == half })
	gone := append(append([]netip.Prefix{}, v4[len(v4)/2:]...), v6[len(v6)/2:]...)
	kept := append(append([]netip.Prefix{}, v4[:len(v4)/2]...), v6[:len(v6)/2]...)
	waitLong(t, "FIB followed the withdrawal", 60*time.Second, func() bool {
		for _, p := range sample(kept) {
			if !routed(p) {
				return false
			}
		}
		// A withdrawn prefix may still be covered by a kept shorter one:
		// the FIB must then answer as the kernel does.
		for _, p := range sample(gone) {
			kt, kout, err := e.kernelView(p.Addr())
			if err != nil {
				return false
			}
			v := e.fibView(p.Addr())
			if v.typ != kt && !(kt == fib.RouteNexthop && v.typ == fib.RouteNexthop && v.outs[kout]) {
				return false
			}
		}
		return true
	})
	t.Logf("after the withdrawal: mirror %+v", e.m.Stats())
}

func waitLong(t *testing.T, what string, d time.Duration, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if ok() {
			return
		}
	}
	t.Fatalf("timed out after %v waiting: %s", d, what)
}
