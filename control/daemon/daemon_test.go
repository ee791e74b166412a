package daemon

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/xdprouter/xdprouter/bench/gen"
	"github.com/xdprouter/xdprouter/bench/sink"
	"github.com/xdprouter/xdprouter/control/affinity"
	"github.com/xdprouter/xdprouter/internal/labtest"
	"github.com/xdprouter/xdprouter/internal/netnsrun"
)

// TestBusyPoll: idle auto busy-polls only when every worker has a CPU of
// its own (isolated).
func TestBusyPoll(t *testing.T) {
	for _, tc := range []struct {
		idle           string
		cpus, isolated []int
		want           bool
	}{
		{"", []int{2, 3}, []int{2, 3}, true},
		{"auto", []int{2, 3}, []int{2, 3, 4}, true},
		{"auto", []int{1, 2}, []int{2, 3}, false}, // worker 0 shares CPU 1
		{"auto", nil, []int{0, 1}, false},         // default placement: q mod the CPUs
		{"auto", []int{0}, nil, false},
		{"poll", []int{2}, []int{2}, false},
		{"busy-poll", []int{0}, nil, true},
	} {
		if got := busyPoll(tc.idle, tc.cpus, func() []int { return tc.isolated }); got != tc.want {
			t.Errorf("busyPoll(%q, cpus %v, isolated %v) = %v, want %v", tc.idle, tc.cpus, tc.isolated, got, tc.want)
		}
	}
}

// TestConfigValidate: every bad field is named, all at once.
func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name, yaml string
		want       []string
	}{
		{"ok", "interfaces: [{name: eth1, engine: afxdp}, {name: eth3}]\n", nil},
		{"normal priority workers", "interfaces: [{name: eth1, engine: afxdp}]\nworker_priority: -1\n", nil},
		{"too low a priority", "interfaces: [{name: eth1, engine: afxdp}]\nworker_priority: -2\n", []string{"worker_priority"}},
		{"busy-poll workers", "interfaces: [{name: eth1, engine: afxdp}]\nidle: busy-poll\n", nil},
		{"unknown idle", "interfaces: [{name: eth1, engine: afxdp}]\nidle: nap\n", []string{"idle"}},
		{"busy-poll and spin", "interfaces: [{name: eth1, engine: afxdp}]\nidle: busy-poll\nspin: 50us\n", []string{"idle"}},
		{"empty", "{}\n", []string{"interfaces: none"}},
		{"unknown field", "interfaces: [{name: eth1}]\nengnie: xdp\n", []string{"field engnie not found"}},
		{"many", `interfaces:
  - {name: eth1, engine: fast}
  - {name: eth1}
  - {name: ""}
  - {name: averyveryverylongname}
table: -3
cpus: [0, 999]
housekeeping_cpus: [0]
queues: 1000
worker_priority: 100
socket: {ring_size: 1000, frames: 10}
metrics: "9470"
control_socket: relative.sock
pin_path: fs/bpf
fib: {nodes4: -1}
`, []string{"interfaces[0].engine", "interfaces[1].name", "interfaces[2].name", "interfaces[3].name", "table", "cpus[1]",
			"housekeeping_cpus[0]", "queues", "worker_priority", "socket", "metrics", "control_socket", "pin_path", "fib.nodes4"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseConfig([]byte(tc.yaml))
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("valid config refused: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("bad config accepted")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not name %q:\n%v", w, err)
				}
			}
		})
	}
}

func unixGet(t *testing.T, sock, path string) string {
	t.Helper()
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	resp, err := c.Get("http://x" + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func metric(t *testing.T, text, series string) uint64 {
	t.Helper()
	for _, line := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				t.Fatalf("%s: %v", series, err)
			}
			return n
		}
	}
	t.Fatalf("no series %s in metrics", series)
	return 0
}

// TestDaemonLab: the daemon in the lab's router namespace forwards every
// frame (eth1 afxdp, eth2 xdp), its metrics count them, a reload swaps the
// two engines during traffic without losing a frame, and stop leaves no
// XDP program and no socket behind.
func TestDaemonLab(t *testing.T) {
	l := labtest.Up(t, 2)
	sock := filepath.Join(t.TempDir(), "x.sock")
	// A free loopback port for the metrics listener.
	pl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	metricsAddr := pl.Addr().String()
	pl.Close()
	cfg := Config{Namespace: l.RouterNS, Metrics: metricsAddr, Control: sock, CPUs: []int{0, 1 % runtime.NumCPU()},
		Interfaces: []Interface{{Name: l.Ingress[0].B.Name, Engine: "afxdp"}, {Name: l.Ingress[1].B.Name, Engine: "xdp"}, {Name: l.Egress.A.Name, Engine: "pass"}},
		FIB:        FIBConfig{Nodes4: 1024, Leaves4: 2048, Nodes6: 1024, Leaves6: 2048, Nexthops: 64}}
	d, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	defer func() {
		if !stopped {
			d.Stop()
		}
	}()
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("control socket: %v, mode %v; want 0600", err, fi.Mode().Perm())
	}
	// The TCP listener serves /metrics and nothing else: the routes and
	// their check (which walks the table) are for the 0600 socket only.
	for path, want := range map[string]int{"/metrics": http.StatusOK, "/routes": http.StatusNotFound,
		"/routes/check?sample=0": http.StatusNotFound, "/status": http.StatusNotFound} {
		resp, err := http.Get("http://" + metricsAddr + path)
		if err != nil {
			t.Fatalf("metrics listener %s: %v", path, err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("metrics listener %s: HTTP %d, want %d", path, resp.StatusCode, want)
		}
	}
	// A second daemon with the same control socket refuses to start and
	// leaves the first one's socket, program and workers alone.
	if d2, err := Start(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "another xdprouter") {
		if d2 != nil {
			d2.Stop()
		}
		t.Fatalf("second Start with the same control socket: %v, want refused", err)
	}
	sk, err := sink.Attach(l.SinkNS, []string{l.Egress.B.Name}, sink.DefaultPort)
	if err != nil {
		t.Fatal(err)
	}
	defer sk.Close()
	send := func(count int) gen.Result {
		g, err := gen.New(gen.Config{Namespace: l.GenNS, Links: gen.LabLinks(l), Count: uint64(count), Rate: 50000, CPUs: []int{0, 1 % runtime.NumCPU()}})
		if err != nil {
			t.Error(err)
			return gen.Result{}
		}
		defer g.Close()
		res, err := g.Run(context.Background())
		if err != nil {
			t.Error(err)
		}
		return res
	}
	res := send(20000)
	got, _ := sk.WaitMatched(context.Background(), res.Sent, 2*time.Second)
	if got.MatchedPackets != res.Sent || got.MatchedForeignMAC != 0 {
		t.Fatalf("sink matched %d (wrong MAC %d) of %d", got.MatchedPackets, got.MatchedForeignMAC, res.Sent)
	}
	m := unixGet(t, sock, "/metrics")
	e1, e2 := l.Ingress[0].B.Name, l.Ingress[1].B.Name
	toAF := metric(t, m, `xdprouter_xdp_packets_total{interface="`+e1+`",counter="to_afxdp"}`)
	fwd := metric(t, m, `xdprouter_xdp_packets_total{interface="`+e2+`",counter="forwarded"}`)
	w0 := metric(t, m, `xdprouter_worker_packets_total{queue="0",cpu="0",counter="forwarded"}`)
	w1 := metric(t, m, `xdprouter_worker_packets_total{queue="1",cpu="`+strconv.Itoa(1%runtime.NumCPU())+`",counter="forwarded"}`)
	if toAF+fwd != res.Sent || w0+w1 != toAF || toAF == 0 || fwd == 0 {
		t.Errorf("metrics: eth1 to_afxdp %d + eth2 forwarded %d, workers %d+%d; want a sum of %d with the workers forwarding eth1's",
			toAF, fwd, w0, w1, res.Sent)
	}
	if r := metric(t, m, `xdprouter_fib_routes{family="4"}`); r == 0 {
		t.Errorf("metrics: xdprouter_fib_routes{family=\"4\"} 0, want the lab's routes")
	}
	var cpuRx uint64
	for _, line := range strings.Split(m, "\n") {
		if strings.HasPrefix(line, `xdprouter_xdp_cpu_packets_total{interface="`+e2+`",`) && strings.Contains(line, `counter="rx"`) {
			n, _ := strconv.ParseUint(line[strings.LastIndexByte(line, ' ')+1:], 10, 64)
			cpuRx += n
		}
	}
	if rx := metric(t, m, `xdprouter_xdp_packets_total{interface="`+e2+`",counter="rx_packets"}`); cpuRx != rx || rx == 0 {
		t.Errorf("metrics: %s rx per CPU adds up to %d, the interface's rx_packets is %d", e2, cpuRx, rx)
	}
	if st := unixGet(t, sock, "/status"); !strings.Contains(st, `"engine": "afxdp"`) {
		t.Errorf("status: %s", st)
	}
	// Swap the engines while traffic flows.
	done := make(chan gen.Result, 1)
	go func() { done <- send(100000) }()
	time.Sleep(500 * time.Millisecond)
	// Edit the caller's own config in place, as the demo does: the daemon
	// must have kept a copy, or it would see no change to apply.
	cfg2 := cfg
	cfg2.Interfaces[0].Engine, cfg2.Interfaces[1].Engine = "xdp", "afxdp"
	if err := d.Reload(cfg2); err != nil {
		t.Fatal(err)
	}
	res2 := <-done
	got2, _ := sk.WaitMatched(context.Background(), res.Sent+res2.Sent, 2*time.Second)
	if got2.MatchedPackets-got.MatchedPackets != res2.Sent {
		t.Errorf("across the reload: sink matched %d of %d", got2.MatchedPackets-got.MatchedPackets, res2.Sent)
	}
	st := d.Stats()
	if st.Interfaces[e2]["to_afxdp"] == 0 || st.Interfaces[e1]["forwarded"] <= fwd {
		t.Errorf("after the reload eth2 should feed the workers and eth1 forward in XDP: %v / %v", st.Interfaces[e2], st.Interfaces[e1])
	}
	stopped = true
	if err := d.Stop(); err != nil {
		t.Errorf("stop: %v", err)
	}
	out, _ := exec.Command("ip", "-n", l.RouterNS, "link", "show").CombinedOutput()
	if strings.Contains(string(out), "prog/xdp") {
		t.Errorf("XDP left on the router's interfaces:\n%s", out)
	}
	for _, p := range []string{sock, sock + ".lock"} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s left: %v", p, err)
		}
	}
}

// TestLeftoverAffinity: a start restores the affinity record a killed
// daemon left even when this config applies no affinity, and refuses to
// start over a record it cannot read (it would lose the host's values).
func TestLeftoverAffinity(t *testing.T) {
	l := labtest.Up(t, 2)
	dir := t.TempDir()
	cfg := Config{Namespace: l.RouterNS, Metrics: "off", Control: filepath.Join(dir, "x.sock"),
		Interfaces: []Interface{{Name: l.Ingress[0].B.Name, Engine: "xdp"}, {Name: l.Egress.A.Name, Engine: "pass"}},
		FIB:        FIBConfig{Nodes4: 1024, Leaves4: 2048, Nodes6: 1024, Leaves6: 2048, Nexthops: 64}}
	xps := "sys/class/net/" + l.Ingress[0].B.Name + "/queues/tx-0/xps_cpus"
	read := func() string {
		var v string
		err := netnsrun.DoSysfs(l.RouterNS, func() error {
			b, err := os.ReadFile("/" + xps)
			v = strings.TrimSpace(string(b))
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	orig := read()
	// What a daemon killed after applying its plan leaves: the change
	// made and its record.
	w := []affinity.Write{{Path: xps, Value: "2", Old: orig, What: "eth1 tx queue 0 XPS -> cpus 1"}}
	if orig == "2" {
		w[0].Value = "1"
	}
	if err := netnsrun.DoSysfs(l.RouterNS, func() error { _, err := affinity.Apply("/", w); return err }); err != nil {
		t.Fatal(err)
	}
	record := cfg.WithDefaults().affinityRecord()
	if err := affinity.SaveRecord(record, w); err != nil {
		t.Fatal(err)
	}
	d, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if got := read(); got != orig {
		t.Errorf("xps_cpus %q after a start without affinity, want the restored %q", got, orig)
	}
	if _, err := os.Stat(record); !os.IsNotExist(err) {
		t.Errorf("record still there after it was restored: %v", err)
	}
	if err := d.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(record, []byte("{half a reco"), 0o600); err != nil {
		t.Fatal(err)
	}
	if d, err := Start(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "restore it by hand") {
		if d != nil {
			d.Stop()
		}
		t.Errorf("start over an unreadable record: %v, want refused", err)
	}
	if out, _ := exec.Command("ip", "-n", l.RouterNS, "link", "show").CombinedOutput(); strings.Contains(string(out), "prog/xdp") {
		t.Errorf("a refused start left XDP attached:\n%s", out)
	}
}

// TestExampleConfig: the shipped example config is valid.
func TestExampleConfig(t *testing.T) {
	c, err := LoadConfig("../../deploy/xdprouter.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !c.Affinity || c.StateDir == "" || c.PinPath == "" || len(c.Interfaces) != 3 {
		t.Errorf("example config: %+v", c)
	}
}
