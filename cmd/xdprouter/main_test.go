package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
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

func TestAffinityCommands(t *testing.T) {
	root := t.TempDir()
	if out, err := exec.Command("cp", "-a", "../../control/affinity/testdata/igb-router/.", root).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	rec := filepath.Join(t.TempDir(), "rec.json")
	out, err := run("affinity", "show", "--root", root, "eth1")
	if err != nil || !strings.Contains(out, "eth1-TxRx-0 ·    ×") {
		t.Fatalf("show: %v\n%s", err, out)
	}
	out, err = run("affinity", "plan", "--root", root, "--housekeeping", "0", "--reduce-queues", "eth1")
	if err != nil || !strings.Contains(out, "eth1: 6 queues reduced to 5") || !strings.Contains(out, "> /proc/irq/") {
		t.Fatalf("plan: %v\n%s", err, out)
	}
	if out, err = run("affinity", "apply", "--root", root, "--record", rec, "eth1"); err != nil {
		t.Fatalf("apply: %v\n%s", err, out)
	}
	out, _ = run("affinity", "plan", "--root", root, "eth1")
	if !strings.Contains(out, "0 writes") {
		t.Errorf("plan after apply still has writes:\n%s", out)
	}
	if out, err = run("affinity", "restore", "--root", root, "--record", rec); err != nil {
		t.Fatalf("restore: %v\n%s", err, out)
	}
	out, _ = run("affinity", "show", "--root", root, "eth1")
	if !strings.Contains(out, "eth1-TxRx-2 ·    ·    ×") {
		t.Errorf("show after restore is not the recorded layout:\n%s", out)
	}
}

func TestCheckCommand(t *testing.T) {
	out, err := run("check", "--root", "../../control/affinity/testdata/untuned-router")
	if e, ok := err.(exitError); !ok || e.code != 1 || !strings.Contains(out, "all 6 queue IRQs on cpu0") {
		t.Errorf("check of the untuned router: %v\n%s", err, out)
	}
	out, err = run("check", "--root", "../../control/affinity/testdata/untuned-router", "--json")
	var fs []map[string]string
	if jerr := json.Unmarshal([]byte(out), &fs); jerr != nil || err == nil || len(fs) < 5 {
		t.Errorf("check --json: %v %v\n%s", err, jerr, out)
	}
}
