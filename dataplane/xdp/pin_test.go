package xdp

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/xdprouter/xdprouter/bench/gen"
	"github.com/xdprouter/xdprouter/bench/sink"
	"github.com/xdprouter/xdprouter/dataplane/fib"
	"github.com/xdprouter/xdprouter/lab"
)

// TestRestartWithPinnedMaps: a router whose FIB and program maps are
// pinned is closed (attachments gone with it, as when the daemon exits),
// then a new table and program reopen the pins and re-attach without
// loading a single route: forwarding is exact again and the counters
// carried over.
func TestRestartWithPinnedMaps(t *testing.T) {
	r := newRig(t, SourceFIB) // for the lab only: its FIB is not pinned
	l := r.lab
	dir := fmt.Sprintf("/sys/fs/bpf/xdprouter-test-%d", os.Getpid())
	t.Cleanup(func() { os.RemoveAll(dir) })
	open := func() (*fib.Table, *Program) {
		tb, err := fib.New(fib.Config{Nodes4: 1024, Leaves4: 2048, Nodes6: 1024, Leaves6: 2048, Nexthops: 16, ECMPGroups: 4, PinPath: dir + "/fib"})
		if err != nil {
			t.Fatal(err)
		}
		prog, err := Load(tb, Options{Source: SourceFIB, PinPath: dir + "/router"})
		if err != nil {
			tb.Close()
			t.Fatal(err)
		}
		err = lab.InNamespace(l.RouterNS, func() error {
			for _, lk := range l.Ingress {
				if err := prog.Attach(lk.B.Index, EngineXDP, AttachOptions{}); err != nil {
					return err
				}
			}
			return prog.AddEgress(l.Egress.A.Index)
		})
		if err != nil {
			t.Fatal(err)
		}
		return tb, prog
	}
	send := func(want uint64) {
		t.Helper()
		sk, err := sink.Attach(l.SinkNS, []string{l.Egress.B.Name}, sink.DefaultPort)
		if err != nil {
			t.Fatal(err)
		}
		defer sk.Close()
		src, dst := gen.DefaultPrefixes(4)
		g, err := gen.New(gen.Config{Namespace: l.GenNS, Links: gen.LabLinks(l), Src: src, Dst: dst, Count: want, Rate: 50000, CPUs: allCPUs()})
		if err != nil {
			t.Fatal(err)
		}
		defer g.Close()
		if _, err := g.Run(context.Background()); err != nil {
			t.Fatal(err)
		}
		got, err := sk.WaitMatched(context.Background(), want, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if got.MatchedPackets != want {
			t.Errorf("sink received %d, want %d", got.MatchedPackets, want)
		}
	}

	tb, prog := open()
	if tb.Reopened() {
		t.Fatal("fresh pins reported reopened")
	}
	if err := tb.SetNexthop(1, fib.Nexthop{Ifindex: l.Egress.A.Index, SrcMAC: l.Egress.A.MAC, DstMAC: l.Egress.B.MAC, MTU: 1500, State: fib.Resolved}); err != nil {
		t.Fatal(err)
	}
	if err := tb.Insert(l.RouteV4, fib.MakeResult(fib.RouteNexthop, 1)); err != nil {
		t.Fatal(err)
	}
	send(5000)
	c0, _ := prog.Counters(l.Ingress[0].B.Index)
	if err := prog.Close(); err != nil {
		t.Fatal(err)
	}
	if err := tb.Close(); err != nil {
		t.Fatal(err)
	}

	tb, prog = open()
	defer tb.Close()
	defer prog.Close()
	if !tb.Reopened() {
		t.Fatal("the FIB did not reopen its pins")
	}
	c1, _ := prog.Counters(l.Ingress[0].B.Index)
	if c1[Forwarded] != c0[Forwarded] || c0[Forwarded] == 0 {
		t.Errorf("counters did not carry over: forwarded %d before, %d after", c0[Forwarded], c1[Forwarded])
	}
	send(5000)
	if err := prog.Unpin(); err != nil {
		t.Error(err)
	}
	if err := tb.Unpin(); err != nil {
		t.Error(err)
	}
}

// TestDetachStale: attachments pinned by a process that died (links
// closed, pins left) are taken over where the new program attaches and
// detached by DetachStale everywhere else, so no interface keeps an
// orphaned program.
func TestDetachStale(t *testing.T) {
	r := newRig(t, SourceFIB)
	l := r.lab
	dir := fmt.Sprintf("/sys/fs/bpf/xdprouter-stale-%d", os.Getpid())
	t.Cleanup(func() { os.RemoveAll(dir) })
	load := func() *Program {
		t.Helper()
		prog, err := Load(nil, Options{Source: SourceStatic, PinPath: dir})
		if err != nil {
			t.Fatal(err)
		}
		return prog
	}
	attached := func() string {
		out, _ := exec.Command("ip", "-n", l.RouterNS, "-o", "link", "show").CombinedOutput()
		var names []string
		for _, line := range strings.Split(string(out), "\n") {
			if strings.Contains(line, "prog/xdp") {
				names = append(names, strings.TrimSuffix(strings.Fields(line)[1], ":"))
			}
		}
		return strings.Join(names, ",")
	}
	inNS := func(fn func() error) {
		t.Helper()
		if err := lab.InNamespace(l.RouterNS, fn); err != nil {
			t.Fatal(err)
		}
	}
	first := load()
	inNS(func() error {
		for _, lk := range l.Ingress {
			if err := first.Attach(lk.B.Index, EngineXDP, AttachOptions{}); err != nil {
				return err
			}
		}
		return nil
	})
	pins, _ := filepath.Glob(filepath.Join(dir, "link-*-*"))
	if len(pins) != 2 {
		t.Fatalf("link pins %v, want two named link-NETNS-IFINDEX", pins)
	}
	// Die without detaching: close every descriptor, leave the pins.
	for _, lk := range first.links {
		lk.Close()
	}
	first.objs.Close()
	if got := attached(); strings.Count(got, ",") != 1 {
		t.Fatalf("after the first program died XDP is on %q, want both ingress interfaces", got)
	}

	second := load()
	defer func() {
		_ = second.Close()
		_ = second.Unpin()
	}()
	inNS(func() error { return second.Attach(l.Ingress[0].B.Index, EngineXDP, AttachOptions{}) })
	n, err := second.DetachStale()
	if err != nil || n != 1 {
		t.Fatalf("DetachStale: %d, %v; want the one attachment not taken over", n, err)
	}
	if got := attached(); !strings.HasPrefix(got, l.Ingress[0].B.Name) || strings.Contains(got, ",") {
		t.Errorf("after DetachStale XDP is on %q, want %s only", got, l.Ingress[0].B.Name)
	}
	if pins, _ := filepath.Glob(filepath.Join(dir, "link-*")); len(pins) != 1 {
		t.Errorf("link pins left: %v, want the taken-over one", pins)
	}
}
