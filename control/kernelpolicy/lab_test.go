package kernelpolicy

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/xdprouter/xdprouter/dataplane/xdp"
	"github.com/xdprouter/xdprouter/internal/labtest"
)

// recorder is a Dataplane that keeps the last policy of each interface.
type recorder struct {
	mu             sync.Mutex
	pol            map[int]xdp.Policy
	rules4, rules6 []xdp.PolicyRule
}

func (r *recorder) SetPolicy(ifindex int, pol xdp.Policy) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.pol[ifindex] = pol
	return nil
}

func (r *recorder) SetPolicyRules(v4, v6 []xdp.PolicyRule) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.rules4, r.rules6 = v4, v6
	return nil
}

func (r *recorder) get(ifindex int) xdp.PolicyFlag {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.pol[ifindex].Flags
}

// TestWatcher: each kernel setting, switched on in the router namespace
// while the watcher runs, reaches the dataplane as the flag it implies on
// exactly the interfaces it concerns, and switched off, goes away again.
func TestWatcher(t *testing.T) {
	l := labtest.Up(t, 2)
	eth1, eth2, eth3 := l.Ingress[0].B, l.Ingress[1].B, l.Egress.A
	ifs := []int{eth1.Index, eth2.Index, eth3.Index}
	rec := &recorder{pol: map[int]xdp.Policy{}}
	w, err := NewWatcher(Config{Namespace: l.RouterNS, Interfaces: ifs, Dataplane: rec, Interval: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	for _, i := range ifs {
		if p := rec.get(i); p&(xdp.Kernel4|xdp.Kernel6|xdp.NoForward4|xdp.NoForward6|xdp.RPFilter) != 0 || p&xdp.MACCheck == 0 {
			t.Fatalf("lab router, ifindex %d: policy %#x, want the MAC check and nothing to the kernel", i, p)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	sh := func(cmd string) error {
		out, err := exec.Command("ip", "netns", "exec", l.RouterNS, "sh", "-c", cmd).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s: %v\n%s", cmd, err, out)
		}
		return nil
	}
	all := []int{eth1.Index, eth2.Index, eth3.Index}
	tests := []struct {
		name    string
		on, off string
		flag    xdp.PolicyFlag
		where   []int
	}{
		{"ipv4 forwarding off on eth1", "sysctl -qw net.ipv4.conf.eth1.forwarding=0", "sysctl -qw net.ipv4.conf.eth1.forwarding=1",
			xdp.NoForward4, []int{eth1.Index}},
		{"ip_forward=0", "sysctl -qw net.ipv4.ip_forward=0", "sysctl -qw net.ipv4.ip_forward=1", xdp.NoForward4, all},
		{"ipv6 forwarding off", "sysctl -qw net.ipv6.conf.all.forwarding=0", "sysctl -qw net.ipv6.conf.all.forwarding=1", xdp.NoForward6, all},
		{"disable_ipv6 on eth2: its IPv6 is not forwarded", "sysctl -qw net.ipv6.conf.eth2.disable_ipv6=1", "sysctl -qw net.ipv6.conf.eth2.disable_ipv6=0",
			xdp.NoForward6, []int{eth2.Index}},
		{"disable_ipv6 on eth2: nothing may leave there", "sysctl -qw net.ipv6.conf.eth2.disable_ipv6=1", "sysctl -qw net.ipv6.conf.eth2.disable_ipv6=0",
			xdp.Kernel6, all},
		{"rp_filter on eth1", "sysctl -qw net.ipv4.conf.eth1.rp_filter=1", "sysctl -qw net.ipv4.conf.eth1.rp_filter=0", xdp.RPFilter, []int{eth1.Index}},
		{"rp_filter all=2 (loose)", "sysctl -qw net.ipv4.conf.all.rp_filter=2", "sysctl -qw net.ipv4.conf.all.rp_filter=0", xdp.RPFilter, all},
		{"nft forward rule", "nft add table inet t && nft 'add chain inet t f { type filter hook forward priority 0; }' && nft add rule inet t f ip daddr 198.19.0.0/24 drop",
			"nft delete table inet t", xdp.Kernel4 | xdp.Kernel6, all},
		{"nft ip masquerade", "nft add table ip n && nft 'add chain ip n p { type nat hook postrouting priority 100; }' && nft add rule ip n p oifname eth3 masquerade",
			"nft delete table ip n", xdp.Kernel4, all},
		{"nft ip6 prerouting drop policy", "nft add table ip6 r && nft 'add chain ip6 r p { type filter hook prerouting priority 0; policy drop; }'",
			"nft delete table ip6 r", xdp.Kernel6, all},
		{"tc ingress filter on eth2", "tc qdisc add dev eth2 clsact && tc filter add dev eth2 ingress bpf bytecode '1,6 0 0 4294967295,'",
			"tc qdisc del dev eth2 clsact", xdp.Kernel4 | xdp.Kernel6, []int{eth2.Index}},
		{"tc egress filter on eth3", "tc qdisc add dev eth3 clsact && tc filter add dev eth3 egress bpf bytecode '1,6 0 0 4294967295,'",
			"tc qdisc del dev eth3 clsact", xdp.EgressKernel, []int{eth3.Index}},
		{"shaping qdisc on eth3", "tc qdisc replace dev eth3 root tbf rate 10mbit burst 32kbit latency 400ms",
			"tc qdisc del dev eth3 root", xdp.EgressKernel, []int{eth3.Index}},
		{"shaping qdisc on eth3: every ingress looks the egress up", "tc qdisc replace dev eth3 root tbf rate 10mbit burst 32kbit latency 400ms",
			"tc qdisc del dev eth3 root", xdp.EgressCheck, all},
		{"eth2 a bridge port", "ip link add xbr0 type bridge && ip link set eth2 master xbr0", "ip link set eth2 nomaster && ip link del xbr0",
			xdp.Kernel4 | xdp.Kernel6, []int{eth2.Index}},
		{"custom local route: every IPv4 source is validated", "ip link set lo up && ip route add local 198.19.99.0/24 dev lo", "ip route del local 198.19.99.0/24 dev lo",
			xdp.SourceRoute, all},
		{"custom rule: every IPv4 source is validated", "ip rule add pref 40000 from 10.0.0.0/8 lookup 100", "ip rule del pref 40000 from 10.0.0.0/8 lookup 100",
			xdp.SourceRoute, all},
		{"ip rule on what XDP cannot see (fwmark)", "ip rule add fwmark 7 lookup 100", "ip rule del fwmark 7 lookup 100", xdp.Kernel4, all},
		{"ip -6 rule on what XDP cannot see (ipproto)", "ip -6 rule add ipproto udp lookup 100", "ip -6 rule del ipproto udp lookup 100", xdp.Kernel6, all},
		{"inverted ip rule", "ip rule add not from 10.0.0.0/8 lookup 100", "ip rule del not from 10.0.0.0/8 lookup 100", xdp.Kernel4, all},
		{"default rule to main deleted", "ip rule del pref 32766", "ip rule add pref 32766 lookup main", xdp.Kernel4, all},
		{"bypass does not bypass disable_ipv6", "sysctl -qw net.ipv6.conf.eth3.disable_ipv6=1", "sysctl -qw net.ipv6.conf.eth3.disable_ipv6=0 && ip -6 addr replace " + eth3.V6.String() + " dev eth3 nodad",
			xdp.Kernel6, all},
	}
	// wait polls until every interface's flag is as wanted; it returns
	// how long that took.
	// wait polls until the policy read from the kernel (not the guard
	// that covers the read) has the flag exactly where wanted, and the
	// dataplane holds it; it returns how long that took.
	wait := func(flag xdp.PolicyFlag, where []int, on bool) (time.Duration, error) {
		t0 := time.Now()
		for {
			snap := w.Snapshot().Policies
			ok := snap != nil
			for _, i := range all {
				want := on && slices.Contains(where, i)
				if ok && ((snap[i].Flags&flag == flag) != want || rec.get(i) != snap[i].Flags) {
					ok = false
				}
			}
			if ok {
				return time.Since(t0), nil
			}
			if time.Since(t0) > 3*time.Second {
				return 0, fmt.Errorf("policies %#x/%#x/%#x", rec.get(eth1.Index), rec.get(eth2.Index), rec.get(eth3.Index))
			}
			time.Sleep(time.Millisecond)
		}
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := sh(tc.on); err != nil {
				t.Fatal(err)
			}
			took, err := wait(tc.flag, tc.where, true)
			if err := sh(tc.off); err != nil {
				t.Fatal(err)
			}
			if err != nil {
				t.Fatalf("switched on: flag %#x not where wanted: %v", tc.flag, err)
			}
			if _, err := wait(tc.flag, tc.where, false); err != nil {
				t.Fatalf("switched off: flag %#x still set: %v", tc.flag, err)
			}
			t.Logf("applied %v after the command returned", took)
		})
	}
	// SetBypass (a reload) follows at once, both ways.
	if err := sh("nft add table inet b && nft 'add chain inet b f { type filter hook forward priority 0; }' && nft add rule inet b f counter"); err != nil {
		t.Fatal(err)
	}
	defer sh("nft delete table inet b")
	for _, bypass := range []bool{true, false} {
		w.SetBypass(bypass)
		if _, err := wait(xdp.Kernel4|xdp.Kernel6, all, !bypass); err != nil {
			t.Errorf("bypass %v: %v", bypass, err)
		}
	}
	if err := sh("nft delete table inet b"); err != nil {
		t.Fatal(err)
	}
	// Rules on what the program sees send only the frames they select.
	for _, tc := range []struct {
		on, off string
		v4, v6  []xdp.PolicyRule
	}{
		{"ip rule add from 10.0.0.0/8 lookup 100", "ip rule del from 10.0.0.0/8 lookup 100",
			[]xdp.PolicyRule{{Src: netip.MustParsePrefix("10.0.0.0/8")}}, nil},
		{"ip rule add to 198.19.98.0/24 iif eth2 prohibit", "ip rule del to 198.19.98.0/24 iif eth2 prohibit",
			[]xdp.PolicyRule{{Dst: netip.MustParsePrefix("198.19.98.0/24"), Iif: eth2.Index}}, nil},
		{"ip -6 rule add from 2001:2::/32 to 2001:2:0:ff00::/56 lookup 100", "ip -6 rule del from 2001:2::/32 to 2001:2:0:ff00::/56 lookup 100",
			nil, []xdp.PolicyRule{{Src: netip.MustParsePrefix("2001:2::/32"), Dst: netip.MustParsePrefix("2001:2:0:ff00::/56")}}},
		{"ip rule add iif nosuch lookup 100", "ip rule del iif nosuch lookup 100", nil, nil},                                 // detached: selects nothing
		{"ip rule add pref 40000 from 10.0.0.0/8 lookup 100", "ip rule del pref 40000 from 10.0.0.0/8 lookup 100", nil, nil}, // after main
	} {
		if err := sh(tc.on); err != nil {
			t.Fatal(err)
		}
		ok := false
		for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
			rec.mu.Lock()
			ok = slices.Equal(rec.rules4, tc.v4) && slices.Equal(rec.rules6, tc.v6) && w.Snapshot().Policies != nil
			rec.mu.Unlock()
			if ok {
				break
			}
		}
		snap := w.Snapshot()
		if !ok || snap.Policies[eth1.Index].Flags&(xdp.Kernel4|xdp.Kernel6) != 0 {
			rec.mu.Lock()
			t.Errorf("%s: selectors %v %v, flags %#x; want %v %v and no family to the kernel", tc.on, rec.rules4, rec.rules6, snap.Policies[eth1.Index].Flags, tc.v4, tc.v6)
			rec.mu.Unlock()
		}
		if sel := slices.Concat(tc.v4, tc.v6); len(sel) > 0 && (len(snap.Rules) != 1 ||
			!strings.Contains(snap.Rules[0], sel[0].Src.String()) && !strings.Contains(snap.Rules[0], sel[0].Dst.String())) {
			t.Errorf("%s: status names %q", tc.on, snap.Rules)
		}
		if err := sh(tc.off); err != nil {
			t.Fatal(err)
		}
	}
}

// TestBypass: with BypassFirewall, a firewall rule is reported as bypassed
// and the fast path stays.
func TestBypass(t *testing.T) {
	l := labtest.Up(t, 1)
	out, err := exec.Command("ip", "netns", "exec", l.RouterNS, "sh", "-c",
		"nft add table inet t && nft 'add chain inet t f { type filter hook forward priority 0; }' && nft add rule inet t f counter").CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, bypass := range []bool{false, true} {
		s, err := Read(l.RouterNS, []int{l.Ingress[0].B.Index}, bypass)
		if err != nil {
			t.Fatal(err)
		}
		f := s.Policies[l.Ingress[0].B.Index].Flags
		if got := f&(xdp.Kernel4|xdp.Kernel6) != 0; got == bypass || (len(s.Bypassed) > 0) != bypass {
			t.Errorf("bypass %v: flags %#x, bypassed %q", bypass, f, s.Bypassed)
		}
	}
}
