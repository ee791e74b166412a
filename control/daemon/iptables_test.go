package daemon

import (
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/xdprouter/xdprouter/dataplane/xdp"
)

// TestLegacyIptables: a legacy iptables table sends no notification, yet
// it is a firewall. A FORWARD drop rule (both families) added while
// engine xdp forwards 100 kpps stops every frame at the sink, as Linux
// drops them: the program sends them to the kernel (pass_policy) and
// forwards none. The time from the rule's commit to the sink's last frame
// is logged (the table lists are polled every 5 ms). A legacy table only
// goes with its namespace, so the test has a lab of its own.
func TestLegacyIptables(t *testing.T) {
	ensureIptablesLegacy(t)
	f := startFlow(t)
	l, d, count := f.l, f.d, f.matched
	counters := func() (c xdp.Counters) {
		for _, in := range l.Ingress {
			ci, err := d.prog.SumCounters(in.B.Index)
			if err != nil {
				t.Fatal(err)
			}
			for i := range c {
				c[i] += ci[i]
			}
		}
		return c
	}
	for n, deadline := count(), time.Now().Add(2*time.Second); count() < n+10000; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no traffic at the sink before the rule")
		}
	}
	if c := counters(); c[xdp.Forwarded] < 10000 {
		t.Fatalf("the fast path forwarded %d frames before the rule; want the traffic on it", c[xdp.Forwarded])
	}
	if out, err := exec.Command("ip", "netns", "exec", l.RouterNS, "sh", "-c",
		"iptables-legacy -w -A FORWARD -j DROP && ip6tables-legacy -w -A FORWARD -j DROP").CombinedOutput(); err != nil {
		t.Fatalf("iptables-legacy: %v\n%s", err, out)
	}
	t0 := time.Now()
	last, n := t0, count()
	for time.Since(last) < 100*time.Millisecond {
		time.Sleep(200 * time.Microsecond)
		if c := count(); c != n {
			last, n = time.Now(), c
		}
	}
	t.Logf("last frame at the sink %v after the rules were committed (the commands returned)", last.Sub(t0))
	// Now Linux drops everything: nothing may arrive, nothing may be
	// forwarded by the fast path.
	c0, n0 := counters(), count()
	time.Sleep(300 * time.Millisecond)
	c1, n1 := counters(), count()
	if n1 != n0 {
		t.Errorf("sink received %d frames in 300 ms after the legacy FORWARD drop rules; Linux drops them all", n1-n0)
	}
	if f := c1[xdp.Forwarded] - c0[xdp.Forwarded]; f != 0 {
		t.Errorf("the fast path forwarded %d frames past a legacy iptables table", f)
	}
	if p := c1[xdp.PassPolicy] - c0[xdp.PassPolicy]; p < 10000 {
		t.Errorf("pass_policy moved by %d in 300 ms at 100 kpps; want the frames to the kernel: %v", p, diffCounters(c0, c1))
	}
	s := d.policy.Snapshot()
	for _, want := range []struct {
		why []string
		s   string
	}{{s.Kernel4, "legacy ip_tables table filter"}, {s.Kernel6, "legacy ip6_tables table filter"}} {
		if !slices.ContainsFunc(want.why, func(w string) bool { return strings.Contains(w, want.s) }) {
			t.Errorf("policy does not name %q: IPv4 %q, IPv6 %q", want.s, s.Kernel4, s.Kernel6)
		}
	}
}

// ensureIptablesLegacy installs Debian's iptables (for iptables-legacy)
// when it is missing; it skips only when the package cannot be installed
// (and fails in CI, where a skip is a failure).
func ensureIptablesLegacy(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("iptables-legacy"); err == nil {
		return
	}
	out, err := exec.Command("sh", "-c", "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends iptables").CombinedOutput()
	if _, lerr := exec.LookPath("iptables-legacy"); lerr == nil {
		return
	}
	msg := fmt.Sprintf("iptables-legacy (Debian iptables) is not installed and could not be: %v %s", err, out)
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}
