package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/xdprouter/xdprouter/control/daemon"
	"github.com/xdprouter/xdprouter/control/netlink"
	"github.com/xdprouter/xdprouter/dataplane/engine"
	"github.com/xdprouter/xdprouter/internal/cpustat"
	"github.com/xdprouter/xdprouter/internal/labtest"
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
	l := labtest.Up(t, 0)
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

// TestRunFlags: the run command's flags override the config file, and
// without a file they are the whole config; every bad value is named.
func TestRunFlags(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "x.yaml")
	if err := os.WriteFile(file, []byte("interfaces:\n  - {name: eth9, engine: afxdp}\ntable: 100\ncpus: [1]\nmetrics: \"off\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		args    []string
		want    string // fmt of the interesting fields
		wantErr string
	}{
		{"file only", []string{"--config", file}, "[{eth9 afxdp false}] table 100 cpus [1] hk [] aff false metrics off sock /run/xdprouter/xdprouter.sock pins \"\" ns \"\"", ""},
		{"flags replace interfaces", []string{"--config", file, "--xdp", "eth1,eth2", "--pass", "eth3", "--table", "254"},
			"[{eth1 xdp false} {eth2 xdp false} {eth3 pass false}] table 254 cpus [1] hk [] aff false metrics off sock /run/xdprouter/xdprouter.sock pins \"\" ns \"\"", ""},
		{"endpoints, pins, namespace", []string{"--config", file, "--socket", "/tmp/x.sock", "--pin-path", "/sys/fs/bpf/x", "--namespace", "lab-rtr", "--metrics", "off"},
			"[{eth9 afxdp false}] table 100 cpus [1] hk [] aff false metrics off sock /tmp/x.sock pins \"/sys/fs/bpf/x\" ns \"lab-rtr\"", ""},
		{"no file at the default path", []string{"--afxdp", "eth1", "--cpus", "1", "--housekeeping-cpus", "0", "--affinity", "--metrics", "127.0.0.1:9999"},
			"[{eth1 afxdp false}] table 254 cpus [1] hk [0] aff true metrics 127.0.0.1:9999 sock /run/xdprouter/xdprouter.sock pins \"\" ns \"\"", ""},
		{"named file missing", []string{"--config", filepath.Join(dir, "nope.yaml"), "--xdp", "eth1"}, "", "read config"},
		{"bad cpu list", []string{"--xdp", "eth1", "--cpus", "x"}, "", "--cpus"},
		{"nothing at all", nil, "", "interfaces: none"},
		{"worker on a housekeeping cpu", []string{"--afxdp", "eth1", "--cpus", "0", "--housekeeping-cpus", "0"}, "", "housekeeping"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var f runFlags
			cmd := newRunCmdWith(&f)
			if err := cmd.ParseFlags(tt.args); err != nil {
				t.Fatal(err)
			}
			if !cmd.Flags().Changed("config") {
				f.path = filepath.Join(dir, "default-not-there.yaml")
			}
			cfg, err := f.config(cmd)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err %v, want one naming %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := fmt.Sprintf("%v table %d cpus %v hk %v aff %v metrics %s sock %s pins %q ns %q", cfg.Interfaces, cfg.Table, cfg.CPUs, cfg.Housekeeping, cfg.Affinity, cfg.Metrics, cfg.Control, cfg.PinPath, cfg.Namespace)
			if got != tt.want {
				t.Errorf("config\n got %s\nwant %s", got, tt.want)
			}
		})
	}
}

// TestStatsRates: two readings one second apart become exact per-second
// rates per interface, per interface and CPU (only CPUs that received),
// per worker and per CPU.
func TestStatsRates(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	a := daemon.Stats{At: t0,
		Interfaces:    map[string]map[string]uint64{"eth1": {"rx_packets": 100, "rx_bytes": 6000, "forwarded": 90, "to_afxdp": 0, "pass_arp": 10, "drop_checksum": 0}},
		InterfaceCPUs: map[string][]daemon.CPUCounters{"eth1": {{CPU: 0, RxPackets: 60, RxBytes: 3600, Forwarded: 50, Passed: 10}, {CPU: 1, RxPackets: 40, RxBytes: 2400, Forwarded: 40}}},
		Workers:       []engine.WorkerStats{{Queue: 0, CPU: 1, RxPackets: 5, Forwarded: 5}},
		CPUTimes:      []cpustat.Times{{CPU: 0, Soft: 100, System: 100, User: 100, Idle: 100}},
	}
	b := daemon.Stats{At: t0.Add(2 * time.Second),
		Interfaces:    map[string]map[string]uint64{"eth1": {"rx_packets": 2100, "rx_bytes": 126000, "forwarded": 1890, "to_afxdp": 200, "pass_arp": 10, "drop_checksum": 0}},
		InterfaceCPUs: map[string][]daemon.CPUCounters{"eth1": {{CPU: 0, RxPackets: 60, RxBytes: 3600, Forwarded: 50, Passed: 10}, {CPU: 1, RxPackets: 2040, RxBytes: 122400, Forwarded: 2040}}},
		Workers:       []engine.WorkerStats{{Queue: 0, CPU: 1, RxPackets: 205, Forwarded: 203, RxBytes: 12000}},
		CPUTimes:      []cpustat.Times{{CPU: 0, Soft: 160, System: 110, User: 110, Idle: 120}},
	}
	got := statsRates(a, b)
	want := []Rates{
		{Kind: "interface", Name: "eth1", RxPPS: 1000, FwdPPS: 1000, RxMbps: 0.48},
		{Kind: "interface_cpu", Name: "eth1", CPU: 1, RxPPS: 1000, FwdPPS: 1000, RxMbps: 0.48},
		{Kind: "worker", Name: "worker q0", CPU: 1, RxPPS: 100, FwdPPS: 99, RxMbps: 0.048},
		{Kind: "cpu", Name: "cpu0", SoftIRQPct: 60, SystemPct: 10, UserPct: 10, IdlePct: 20},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d rows %+v, want %d", len(got), got, len(want))
	}
	near := func(x, y float64) bool { return x-y < 1e-9 && y-x < 1e-9 }
	for i := range want {
		g, w := got[i], want[i]
		if g.Kind != w.Kind || g.Name != w.Name || g.CPU != w.CPU || !near(g.RxPPS, w.RxPPS) || !near(g.FwdPPS, w.FwdPPS) ||
			!near(g.RxMbps, w.RxMbps) || !near(g.PassPPS, w.PassPPS) || !near(g.DropPPS, w.DropPPS) ||
			!near(g.SoftIRQPct, w.SoftIRQPct) || !near(g.SystemPct, w.SystemPct) || !near(g.UserPct, w.UserPct) || !near(g.IdlePct, w.IdlePct) {
			t.Errorf("row %d:\n got %+v\nwant %+v", i, g, w)
		}
	}
	// A restarted daemon or worker set: counters went down, no row
	// rather than a rate of 1.8e19 pps.
	c := b
	c.At = b.At.Add(time.Second)
	c.Interfaces = map[string]map[string]uint64{"eth1": {"rx_packets": 5}}
	c.InterfaceCPUs = map[string][]daemon.CPUCounters{"eth1": {{CPU: 1, RxPackets: 5}}}
	c.Workers = []engine.WorkerStats{{Queue: 0, CPU: 1, RxPackets: 1}}
	for _, r := range statsRates(b, c) {
		if r.Kind != "cpu" {
			t.Errorf("after a counter reset: row %+v", r)
		}
	}
	var out bytes.Buffer
	printRates(&out, b.At, got)
	for _, s := range []string{"eth1", "  cpu1", "worker q0", "on cpu1", "softirq  60%"} {
		if !strings.Contains(out.String(), s) {
			t.Errorf("stats output lacks %q:\n%s", s, out.String())
		}
	}
}
