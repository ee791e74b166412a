package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/xdprouter/xdprouter/internal/labtest"
)

// TestCheckPolicy: `xdprouter check` run in a router namespace (under ip
// netns exec, as the help says) lists per interface what the fast path
// honours natively and what goes to the kernel, and warns where a
// firewall or tc takes traffic off the fast path.
func TestCheckPolicy(t *testing.T) {
	l := labtest.Up(t, 1)
	eth1, eth3 := l.Ingress[0].B.Name, l.Egress.A.Name
	sh := func(cmd string) {
		t.Helper()
		if out, err := exec.Command("ip", "netns", "exec", l.RouterNS, "sh", "-c", cmd).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", cmd, err, out)
		}
	}
	sh("nft add table inet t && nft 'add chain inet t f { type filter hook forward priority 0; }' && nft add rule inet t f ip daddr 198.19.0.0/24 drop")
	sh("tc qdisc add dev " + eth3 + " root tbf rate 10mbit burst 32kb latency 50ms")
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ip", "netns", "exec", l.RouterNS, self, "check", "--interval", "0", "--json", eth1, eth3)
	cmd.Env = append(os.Environ(), "XDPROUTER_TEST_MAIN=1")
	out, _ := cmd.Output() // exit 1 when this VM's tuning has a problem: not what this test is about
	var fs []struct{ Check, Severity, Reading, Fix string }
	if err := json.Unmarshal(out, &fs); err != nil {
		t.Fatalf("check --json: %v\n%s", err, out)
	}
	find := func(check string) (sev, reading, fix string) {
		for _, f := range fs {
			if f.Check == check {
				return f.Severity, f.Reading, f.Fix
			}
		}
		t.Errorf("no finding %q in %+v", check, fs)
		return "", "", ""
	}
	for _, want := range []struct{ check, sev, reading string }{
		{"fast path IPv4", "warn", "nftables table inet t chain f (hook forward, 1 rule)"},
		{"fast path IPv6", "warn", "nftables table inet t"},
		{eth1 + " native", "ok", "IPv4 forwarding switch"},
		{eth3 + " to the kernel", "warn", "routed out of " + eth3 + ": qdisc tbf on " + eth3},
	} {
		sev, reading, fix := find(want.check)
		if sev != want.sev || !strings.Contains(reading, want.reading) {
			t.Errorf("%s: %s %q; want %s with %q", want.check, sev, reading, want.sev, want.reading)
		}
		if sev == "warn" && !strings.Contains(fix, "bypass_firewall") {
			t.Errorf("%s: fix %q does not name bypass_firewall", want.check, fix)
		}
	}
}
