package main

import (
	"bytes"
	"context"
	"encoding/json"
	"testing"

	"github.com/xdprouter/xdprouter/control/netlink"
	"github.com/xdprouter/xdprouter/internal/testutil"
	"github.com/xdprouter/xdprouter/lab"
)

func run(args ...string) (string, error) {
	root := newRoot()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	return out.String(), err
}

func TestRoutesCommand(t *testing.T) {
	testutil.Privileged(t)
	name := testutil.LabName()
	t.Cleanup(func() { _ = lab.Down(name) })
	l, err := lab.Up(context.Background(), lab.Config{Name: name})
	if err != nil {
		t.Fatal(err)
	}
	out, err := run("routes", "-n", l.RouterNS, "--json")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	var got struct {
		Routes []netlink.Entry `json:"routes"`
		Stats  netlink.Stats   `json:"stats"`
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	ok := false
	for _, e := range got.Routes {
		if e.Prefix == l.RouteV4 && e.Type == "nexthop" && len(e.Nexthops) == 1 &&
			e.Nexthops[0].Dev == "eth3" && e.Nexthops[0].MAC == l.Egress.B.MAC.String() && e.Nexthops[0].State == "resolved" {
			ok = true
		}
	}
	if !ok || got.Stats.Routes == 0 {
		t.Errorf("routes --json lacks %s via eth3 resolved:\n%s", l.RouteV4, out)
	}
	if out, err := run("routes", "-n", l.RouterNS, "--check", "--all"); err != nil {
		t.Errorf("check of a fresh mirror: %v\n%s", err, out)
	}
	if _, err := run("routes", "-n", "xdpl-no-such-ns"); err == nil {
		t.Error("routes in a namespace that does not exist succeeded")
	}
}
