package lab

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/xdprouter/xdprouter/internal/testutil"
)

// hostState is what a lab must never change outside its namespaces.
func hostState(t *testing.T) (links []string, netnsNames []string) {
	t.Helper()
	ls, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range ls {
		links = append(links, l.Attrs().Name)
	}
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		netnsNames = append(netnsNames, e.Name())
	}
	slices.Sort(links)
	return links, netnsNames
}

func assertNoTrace(t *testing.T, name string, links0, ns0 []string) {
	t.Helper()
	links1, ns1 := hostState(t)
	if !slices.Equal(links0, links1) {
		t.Errorf("host links changed: before %v after %v", links0, links1)
	}
	if !slices.Equal(ns0, ns1) {
		t.Errorf("namespaces changed: before %v after %v", ns0, ns1)
	}
	names, err := List()
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(names, name) {
		t.Errorf("lab %s still listed", name)
	}
}

func TestUpDown(t *testing.T) {
	testutil.Privileged(t)
	links0, ns0 := hostState(t)
	name := testutil.LabName()
	t.Cleanup(func() { _ = Down(name) })

	l, err := Up(context.Background(), Config{Name: name, Queues: 3, MTU: 9000})
	if err != nil {
		t.Fatal(err)
	}
	// Nothing in the host namespace.
	if links1, _ := hostState(t); !slices.Equal(links0, links1) {
		t.Errorf("lab created host links: %v -> %v", links0, links1)
	}
	o, err := Open(name)
	if err != nil {
		t.Fatal(err)
	}
	if o.Queues != 3 || o.MTU != 9000 {
		t.Errorf("queues/mtu = %d/%d, want 3/9000", o.Queues, o.MTU)
	}
	if o.RouteV4 != netip.MustParsePrefix("198.19.0.0/16") || o.RouteV6 != netip.MustParsePrefix("2001:2:0:ff00::/56") {
		t.Errorf("routes read back %s %s", o.RouteV4, o.RouteV6)
	}
	for _, ifc := range []Iface{o.Ingress[0].A, o.Ingress[0].B, o.Ingress[1].B, o.Egress.A, o.Egress.B} {
		if ifc.Index == 0 || ifc.MAC.String() == "" {
			t.Errorf("%s/%s not read back: %+v", ifc.NS, ifc.Name, ifc)
		}
	}
	// The router resolves the route to the fake gateway, whose permanent
	// neighbour entry carries the sink's MAC.
	h, err := handleAt(l.RouterNS)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	for _, dst := range []string{"198.19.0.77", "2001:2:0:ff00::77"} {
		rs, err := h.RouteGet(netip.MustParseAddr(dst).AsSlice())
		if err != nil {
			t.Fatalf("route get %s: %v", dst, err)
		}
		if rs[0].LinkIndex != l.Egress.A.Index {
			t.Errorf("route get %s: dev %d, want eth3 (%d)", dst, rs[0].LinkIndex, l.Egress.A.Index)
		}
	}
	neighs, err := h.NeighList(l.Egress.A.Index, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	perm := 0
	for _, n := range neighs {
		if n.State == netlink.NUD_PERMANENT && n.HardwareAddr.String() == l.Egress.B.MAC.String() {
			perm++
		}
	}
	if perm != 2 {
		t.Errorf("permanent neighbours with the sink's MAC = %d, want 2 (v4 and v6): %+v", perm, neighs)
	}

	// A second lab of the same name is refused and leaves the first alone.
	if _, err := Up(context.Background(), Config{Name: name}); !errors.Is(err, ErrExists) {
		t.Fatalf("second Up: %v, want ErrExists", err)
	}
	if _, err := Open(name); err != nil {
		t.Fatalf("first lab damaged by refused second Up: %v", err)
	}

	if err := l.Down(); err != nil {
		t.Fatal(err)
	}
	assertNoTrace(t, name, links0, ns0)
	if err := Down(name); err != nil {
		t.Errorf("down of a lab that is not there: %v", err)
	}
}

func TestFailureMidSetupLeavesNoTrace(t *testing.T) {
	testutil.Privileged(t)
	links0, ns0 := hostState(t)
	for _, failAt := range []string{"veth gen2", "configure eth3", "router"} {
		t.Run(strings.ReplaceAll(failAt, " ", "_"), func(t *testing.T) {
			name := testutil.LabName()
			t.Cleanup(func() { _ = Down(name) })
			boom := errors.New("injected failure")
			stepHook = func(s string) error {
				if s == failAt {
					return boom
				}
				return nil
			}
			t.Cleanup(func() { stepHook = nil })
			if _, err := Up(context.Background(), Config{Name: name}); !errors.Is(err, boom) {
				t.Fatalf("Up = %v, want the injected failure", err)
			}
			assertNoTrace(t, name, links0, ns0)
		})
	}
}

func TestBadConfig(t *testing.T) {
	testutil.Privileged(t)
	links0, ns0 := hostState(t)
	tests := []struct {
		cfg  Config
		want []string
	}{
		{Config{Name: "Bad Name"}, []string{"name"}},
		{Config{Name: "ok", Queues: 100, MTU: 100}, []string{"queues 100", "mtu 100"}},
		{Config{Name: "ok", RouteV4: netip.MustParsePrefix("2001:db8::/32")}, []string{"route-v4"}},
	}
	for _, tc := range tests {
		_, err := Up(context.Background(), tc.cfg)
		if err == nil {
			t.Fatalf("Up(%+v) succeeded", tc.cfg)
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("Up(%+v) = %q, want it to name %q", tc.cfg, err, w)
			}
		}
	}
	// A real kernel refusal at the last step: the route duplicates eth3's
	// connected prefix, so `ip route add` fails with EEXIST.
	name := testutil.LabName()
	t.Cleanup(func() { _ = Down(name) })
	_, err := Up(context.Background(), Config{Name: name, RouteV4: netip.MustParsePrefix("198.18.3.0/24")})
	if err == nil || !strings.Contains(err.Error(), "ip route add 198.18.3.0/24") {
		t.Fatalf("Up with a route clashing with eth3 = %v, want the route refusal", err)
	}
	assertNoTrace(t, name, links0, ns0)
}
