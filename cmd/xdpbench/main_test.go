package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/xdprouter/xdprouter/internal/testutil"
	"github.com/xdprouter/xdprouter/lab"
)

// xdpbench runs the command line in-process and returns its output.
func xdpbench(ctx context.Context, args ...string) (string, error) {
	root := newRoot()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	return out.String(), err
}

func TestCommandLine(t *testing.T) {
	testutil.Privileged(t)
	name := testutil.LabName()
	t.Cleanup(func() { _ = lab.Down(name) })
	ctx := context.Background()

	if out, err := xdpbench(ctx, "lab", "up", "--name", name, "--queues", "3"); err != nil {
		t.Fatalf("lab up: %v\n%s", err, out)
	}
	out, err := xdpbench(ctx, "lab", "up", "--name", name)
	if err == nil || !strings.Contains(err.Error(), "xdpbench lab down --name "+name) {
		t.Errorf("second lab up: %v, want an error saying how to remove the leftover", err)
	}
	out, err = xdpbench(ctx, "lab", "status", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var labs []lab.Lab
	if err := json.Unmarshal([]byte(out), &labs); err != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	found := false
	for _, l := range labs {
		if l.Name == name {
			found = true
			if l.Queues != 3 || len(l.Ingress) != 2 || l.Egress.A.Name != "eth3" {
				t.Errorf("status of %s: %+v", name, l)
			}
		}
	}
	if !found {
		t.Errorf("status does not list %s: %s", name, out)
	}

	// The sink waits for an exact count while the generator sends it.
	for _, family := range []string{"4", "6"} {
		sinkDone := make(chan error, 1)
		var sinkOut string
		go func() {
			var err error
			sinkOut, err = xdpbench(ctx, "sink", "--lab", name, "--count", "5000", "--timeout", "20s", "--json")
			sinkDone <- err
		}()
		time.Sleep(300 * time.Millisecond) // the sink attaches before traffic starts
		genOut, err := xdpbench(ctx, "gen", "--lab", name, "--family", family, "--count", "5000", "--rate", "20000", "--cpus", "0-1", "--size", "100")
		if err != nil {
			t.Fatalf("gen: %v\n%s", err, genOut)
		}
		if !strings.Contains(genOut, "sent 5000 frames of 100 bytes") {
			t.Errorf("gen output: %s", genOut)
		}
		if err := <-sinkDone; err != nil {
			t.Fatalf("sink: %v\n%s", err, sinkOut)
		}
		var sum struct {
			Matched uint64 `json:"matched_packets"`
			Bytes   uint64 `json:"matched_bytes"`
		}
		if err := json.Unmarshal([]byte(sinkOut), &sum); err != nil {
			t.Fatalf("sink --json: %v\n%s", err, sinkOut)
		}
		if sum.Matched != 5000 || sum.Bytes != 5000*96 {
			t.Errorf("IPv%s sink counted %d frames, %d bytes; want 5000 and %d", family, sum.Matched, sum.Bytes, 5000*96)
		}
	}

	for range 2 { // down twice: the second finds nothing and is fine
		if out, err := xdpbench(ctx, "lab", "down", "--name", name); err != nil {
			t.Fatalf("lab down: %v\n%s", err, out)
		}
	}
	if names, _ := lab.List(); len(names) > 0 {
		for _, n := range names {
			if n == name {
				t.Errorf("lab %s still up after down", name)
			}
		}
	}
}

// TestBadFlags: every bad value is refused, naming what is wrong, before
// anything is set up (the report's are checked without root).
func TestBadFlags(t *testing.T) {
	tests := []struct {
		args []string
		want string // in the error; "" for commands that need root first
	}{
		{[]string{"gen", "--lab", "nosuchlab"}, ""},
		{[]string{"run", "--scenarios", "warp"}, ""},
		{[]string{"run", "--cpus", "3-1"}, ""},
		{[]string{"lab", "up", "--name", "Bad Name"}, ""},
		{[]string{"report", "--sizes", "64,x"}, "--sizes"},
		{[]string{"report", "--routes", "2"}, `routes "2"`},
		{[]string{"report", "--scenarios", "kernel,warp"}, "warp"},
		{[]string{"report", "--sizes", "63", "--routes", "1"}, "size 63"},
		{[]string{"report", "--sizes", "64", "--family", "6", "--ndr-resolution", "1.5"}, "ndr resolution"},
		{[]string{"report", "--full-dst", "2000::/3"}, "not IPv4"},
		{[]string{"report", "--full-dst", "128.0.0.0"}, "--full-dst"},
	}
	for _, tt := range tests {
		dir := t.TempDir()
		args := tt.args
		if args[0] == "report" {
			args = append(slices.Clone(args), "--out", dir+"/r")
		}
		out, err := xdpbench(context.Background(), args...)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("xdpbench %v: %v, want an error naming %q: %s", tt.args, err, tt.want, out)
		}
		if _, serr := os.Stat(dir + "/r"); tt.args[0] == "report" && serr == nil {
			t.Errorf("xdpbench %v created its output directory", tt.args)
		}
	}
}
