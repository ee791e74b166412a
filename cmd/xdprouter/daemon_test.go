package main

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/xdprouter/xdprouter/bench/gen"
	"github.com/xdprouter/xdprouter/bench/sink"
	"github.com/xdprouter/xdprouter/control/daemon"
	"github.com/xdprouter/xdprouter/internal/labtest"
	"github.com/xdprouter/xdprouter/internal/netnsrun"
	"github.com/xdprouter/xdprouter/lab"
)

// TestMain lets a test start this package's main as a separate process
// (the daemon a test kills): XDPROUTER_TEST_MAIN=1 runs main with the
// arguments after the binary's name.
func TestMain(m *testing.M) {
	if os.Getenv("XDPROUTER_TEST_MAIN") == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// daemonProc is `xdprouter run` in a child process.
type daemonProc struct {
	cmd  *exec.Cmd
	done chan error
	log  *os.File
}

func startDaemon(t *testing.T, config, sock, logPath string) *daemonProc {
	t.Helper()
	return startDaemonUnder(t, nil, config, sock, logPath)
}

// daemonCommand is `xdprouter run --config config`, run through wrapper
// (e.g. ip netns exec, setpriv) when given.
func daemonCommand(wrapper []string, config string) *exec.Cmd {
	argv := append(slices.Clone(wrapper), os.Args[0], "run", "--config", config)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), "XDPROUTER_TEST_MAIN=1")
	return cmd
}

// terminate sends SIGTERM and waits for a clean exit.
func (p *daemonProc) terminate(t *testing.T, logPath string) {
	t.Helper()
	p.signalExit(t, syscall.SIGTERM, logPath)
}

// signalExit sends sig and waits (20 s at most) for a clean exit.
func (p *daemonProc) signalExit(t *testing.T, sig os.Signal, logPath string) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-p.done:
		if err != nil {
			b, _ := os.ReadFile(logPath)
			t.Errorf("daemon exit after %v: %v\n%s", sig, err, b)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("daemon still running 20 s after %v", sig)
	}
}

// hostAsFound checks that no daemon state is left: no XDP on the router's
// interfaces, XPS/RPS as before (knobs0), no pins, socket, lock or
// affinity record in dir.
func hostAsFound(t *testing.T, l *lab.Lab, knobs0 map[string]string, dir, pins, sock string) {
	t.Helper()
	if out, _ := execOut("ip", "-n", l.RouterNS, "link", "show"); strings.Contains(out, "prog/xdp") {
		t.Errorf("XDP left attached:\n%s", out)
	}
	if k := queueKnobs(t, l); !maps.Equal(k, knobs0) {
		t.Errorf("XPS/RPS not restored:\n%v\nwant\n%v", k, knobs0)
	}
	for _, p := range []string{pins, sock, sock + ".lock"} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s left behind: %v", p, err)
		}
	}
	if recs, _ := filepath.Glob(filepath.Join(dir, "*.affinity.json")); len(recs) > 0 {
		t.Errorf("affinity record left behind: %v", recs)
	}
}

// startDaemonUnder starts the daemon through wrapper and waits until its
// operator socket answers.
func startDaemonUnder(t *testing.T, wrapper []string, config, sock, logPath string) *daemonProc {
	t.Helper()
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cmd := daemonCommand(wrapper, config)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &daemonProc{cmd: cmd, done: make(chan error, 1), log: logf}
	go func() { p.done <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-p.done:
			case <-time.After(10 * time.Second):
				_ = cmd.Process.Kill()
			}
		}
		logf.Close()
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := run("status", "--socket", sock, "--json")
		if err == nil {
			var st daemon.Status
			if json.Unmarshal([]byte(out), &st) == nil && len(st.Interfaces) > 0 {
				return p
			}
		}
		select {
		case err := <-p.done:
			b, _ := os.ReadFile(logPath)
			t.Fatalf("daemon exited: %v\n%s", err, b)
		default:
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(logPath)
			t.Fatalf("daemon not ready after 30 s: %v\n%s", err, b)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestKillRestart: a daemon killed with SIGKILL leaves its program
// attached and its FIB pinned, so the router forwards on while nothing
// runs (engine xdp in XDP, the afxdp interface through the kernel); a
// route deleted meanwhile is gone from the FIB once a new daemon starts
// warm from the pins; the new daemon forwards every frame; and its
// SIGTERM leaves no program, pin or socket behind.
func TestKillRestart(t *testing.T) {
	l := labtest.Up(t, 2)
	dir := t.TempDir()
	sock := filepath.Join(dir, "x.sock")
	pins := fmt.Sprintf("/sys/fs/bpf/xdprouter-test-%d", os.Getpid())
	t.Cleanup(func() { os.RemoveAll(pins) })
	config := filepath.Join(dir, "xdprouter.yaml")
	yaml := fmt.Sprintf(`namespace: %s
interfaces:
  - {name: %s, engine: xdp}
  - {name: %s, engine: afxdp}
  - {name: %s, engine: pass}
affinity: true
housekeeping_cpus: [0]
metrics: "off"
control_socket: %s
pin_path: %s
fib: {nodes4: 1024, leaves4: 2048, nodes6: 1024, leaves6: 2048, nexthops: 64}
`, l.RouterNS, l.Ingress[0].B.Name, l.Ingress[1].B.Name, l.Egress.A.Name, sock, pins)
	if err := os.WriteFile(config, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", append([]string{"-n", l.RouterNS}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v\n%s", args, err, out)
		}
	}
	// A second route the daemon mirrors, deleted while it is dead.
	doomed := netip.MustParsePrefix("198.51.100.0/24")
	ip("route", "add", doomed.String(), "via", l.GatewayV4.String())

	sk, err := sink.Attach(l.SinkNS, []string{l.Egress.B.Name}, sink.DefaultPort)
	if err != nil {
		t.Fatal(err)
	}
	defer sk.Close()
	matched := uint64(0)
	// send sends count frames to dst at 50 kpps and returns how many of
	// them the sink matched.
	send := func(dst netip.Prefix, count int) (sent, got uint64) {
		t.Helper()
		src, _ := gen.DefaultPrefixes(4)
		g, err := gen.New(gen.Config{Namespace: l.GenNS, Links: gen.LabLinks(l), Src: src, Dst: dst,
			Count: uint64(count), Rate: 50000, CPUs: []int{0, 1 % runtime.NumCPU()}})
		if err != nil {
			t.Fatal(err)
		}
		defer g.Close()
		res, err := g.Run(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		c, _ := sk.WaitMatched(context.Background(), matched+res.Sent, time.Second)
		got = c.MatchedPackets - matched
		matched = c.MatchedPackets
		if c.MatchedForeignMAC != 0 {
			t.Errorf("%d frames arrived with a wrong MAC", c.MatchedForeignMAC)
		}
		return res.Sent, got
	}
	_, labDst := gen.DefaultPrefixes(4)
	xdpLinks := func() int {
		out, _ := exec.Command("ip", "-n", l.RouterNS, "link", "show").CombinedOutput()
		return strings.Count(string(out), "prog/xdp")
	}

	knobs0 := queueKnobs(t, l)
	logPath := filepath.Join(dir, "daemon.log")
	d1 := startDaemon(t, config, sock, logPath)
	checkAffinity(t, l, sock, d1.cmd.Process.Pid)
	if recs, _ := filepath.Glob(filepath.Join(dir, "*.affinity.json")); len(recs) != 1 {
		t.Errorf("affinity records while the daemon runs: %v, want one", recs)
	}
	if sent, got := send(labDst, 20000); got != sent {
		t.Fatalf("first daemon: sink matched %d of %d", got, sent)
	}
	if sent, got := send(doomed, 5000); got != sent {
		t.Fatalf("first daemon, %s: sink matched %d of %d", doomed, got, sent)
	}

	if err := d1.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-d1.done
	if n := xdpLinks(); n != 3 {
		t.Fatalf("after SIGKILL %d interfaces have XDP, want the 3 it attached", n)
	}
	if _, err := os.Stat(filepath.Join(pins, "fib")); err != nil {
		t.Fatalf("after SIGKILL the FIB pins are gone: %v", err)
	}
	if sent, got := send(labDst, 20000); got != sent {
		t.Errorf("no daemon running: sink matched %d of %d (XDP and the kernel should forward on)", got, sent)
	}
	// A start that fails after reopening the pins (no CAP_NET_RAW: the
	// AF_XDP sockets are refused) keeps them: the router forwards on as
	// the killed daemon left it, and the next start is still warm.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	out, err := cmdOutput(ctx, daemonCommand([]string{"setpriv", "--bounding-set", "-net_raw", "--"}, config))
	cancel()
	if err == nil || !strings.Contains(out, "AF_XDP socket") || !strings.Contains(out, "pinned state of the earlier daemon is kept") {
		t.Errorf("start without CAP_NET_RAW: %v, want it to fail at the AF_XDP sockets keeping the pins:\n%s", err, out)
	}
	if n := xdpLinks(); n != 3 {
		t.Errorf("after a failed warm start %d interfaces have XDP, want the 3 the killed daemon attached", n)
	}
	if sent, got := send(labDst, 20000); got != sent {
		t.Errorf("after a failed warm start: sink matched %d of %d", got, sent)
	}
	ip("route", "del", doomed.String())

	d2 := startDaemon(t, config, sock, logPath)
	checkAffinity(t, l, sock, d2.cmd.Process.Pid)
	// Another daemon on the same pins (own socket) is refused untouched.
	other := filepath.Join(dir, "other.yaml")
	if err := os.WriteFile(other, []byte(strings.Replace(yaml, sock, filepath.Join(dir, "other.sock"), 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel = context.WithTimeout(context.Background(), 30*time.Second)
	out2, err := cmdOutput(ctx, daemonCommand(nil, other))
	cancel()
	if err == nil || !strings.Contains(out2, "is in use by another xdprouter") {
		t.Errorf("a second daemon on the same pin_path: %v\n%s", err, out2)
	}
	out, err = run("status", "--socket", sock, "--json")
	if err != nil {
		t.Fatal(err)
	}
	var st daemon.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil || !st.WarmStart {
		t.Errorf("restarted daemon: warm_start false or %v:\n%s", err, out)
	}
	// The text status says what the fast path honours and what goes to
	// the kernel, per interface.
	if out, err := run("status", "--socket", sock); err != nil || !strings.Contains(out, "eth1 native: ") ||
		!strings.Contains(out, "IPv4 forwarding switch") || !strings.Contains(out, "eth1 to the kernel: ") {
		t.Errorf("status does not list the kernel policy: %v\n%s", err, out)
	}
	if sent, got := send(labDst, 20000); got != sent {
		t.Errorf("restarted daemon: sink matched %d of %d", got, sent)
	}
	// The afxdp interface flaps: its workers forward again afterwards (on
	// veth the sockets survive a flap; the daemon also runs engine.Watch,
	// which rebuilds them where they do not).
	ip("link", "set", l.Ingress[1].B.Name, "down")
	time.Sleep(200 * time.Millisecond)
	ip("link", "set", l.Ingress[1].B.Name, "up")
	time.Sleep(2 * time.Second) // the sockets are rebuilt after the link is up again
	workerFwd := func() uint64 {
		var st daemon.Stats
		if err := get(sock, "/stats", &st); err != nil {
			t.Fatal(err)
		}
		n := uint64(0)
		for _, w := range st.Workers {
			n += w.Forwarded
		}
		return n
	}
	w0 := workerFwd()
	if sent, got := send(labDst, 20000); got != sent {
		b, _ := os.ReadFile(logPath)
		t.Errorf("after a flap of the afxdp interface: sink matched %d of %d\n%s", got, sent, b)
	}
	if n := workerFwd() - w0; n < 5000 {
		t.Errorf("after a flap of the afxdp interface the workers forwarded %d of its ~10000 frames", n)
	}
	// Per-CPU counters add up to each interface's, exactly.
	var ss daemon.Stats
	if err := get(sock, "/stats", &ss); err != nil {
		t.Fatal(err)
	}
	for name, c := range ss.Interfaces {
		var rx, fwd uint64
		for _, pc := range ss.InterfaceCPUs[name] {
			rx, fwd = rx+pc.RxPackets, fwd+pc.Forwarded
		}
		if rx != c["rx_packets"] || fwd != c["forwarded"]+c["to_afxdp"] {
			t.Errorf("%s: per-CPU rx %d forwarded %d, interface rx %d forwarded %d", name, rx, fwd, c["rx_packets"], c["forwarded"]+c["to_afxdp"])
		}
	}
	if len(ss.InterfaceCPUs[l.Ingress[0].B.Name]) == 0 || len(ss.CPUTimes) != runtime.NumCPU() {
		t.Errorf("stats: per-CPU counters %v, CPU times %v", ss.InterfaceCPUs, ss.CPUTimes)
	}
	if out, err := run("stats", "--socket", sock, "--json", "-n", "1"); err != nil {
		t.Errorf("stats: %v\n%s", err, out)
	} else {
		var rows []Rates
		if err := json.Unmarshal([]byte(out), &rows); err != nil {
			t.Errorf("stats --json: %v\n%s", err, out)
		}
		kinds := map[string]int{}
		for _, r := range rows {
			kinds[r.Kind]++
		}
		if kinds["interface"] != 3 || kinds["worker"] != 2 || kinds["cpu"] != runtime.NumCPU() {
			t.Errorf("stats --json rows by kind %v, want 3 interfaces, 2 workers, a row per CPU:\n%s", kinds, out)
		}
	}
	if sent, got := send(doomed, 5000); got != 0 {
		t.Errorf("route %s deleted while no daemon ran: %d of %d frames still forwarded", doomed, got, sent)
	}
	// SIGHUP with the engines swapped in the file, while traffic flows:
	// not a frame lost, and the new engines serve.
	swapped := strings.NewReplacer("engine: xdp}", "engine: afxdp}", "engine: afxdp}", "engine: xdp}").Replace(yaml)
	if err := os.WriteFile(config, []byte(swapped), 0o644); err != nil {
		t.Fatal(err)
	}
	src, _ := gen.DefaultPrefixes(4)
	g, err := gen.New(gen.Config{Namespace: l.GenNS, Links: gen.LabLinks(l), Src: src, Dst: labDst,
		Count: 60000, Rate: 50000, CPUs: []int{0, 1 % runtime.NumCPU()}})
	if err != nil {
		t.Fatal(err)
	}
	genDone := make(chan gen.Result, 1)
	go func() {
		res, err := g.Run(context.Background())
		if err != nil {
			t.Errorf("generator: %v", err)
		}
		genDone <- res
	}()
	time.Sleep(400 * time.Millisecond)
	if err := d2.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	res := <-genDone
	g.Close()
	c, _ := sk.WaitMatched(context.Background(), matched+res.Sent, 2*time.Second)
	if got := c.MatchedPackets - matched; got != res.Sent || res.Sent == 0 {
		b, _ := os.ReadFile(logPath)
		t.Errorf("across a SIGHUP reload: sink matched %d of %d\n%s", got, res.Sent, b)
	}
	matched = c.MatchedPackets
	if err := get(sock, "/status", &st); err != nil {
		t.Fatal(err)
	}
	if e := st.Interfaces[0].Engine + " " + st.Interfaces[1].Engine; e != "afxdp xdp" {
		t.Errorf("after SIGHUP engines of %s, %s are %s, want afxdp xdp", st.Interfaces[0].Name, st.Interfaces[1].Name, e)
	}

	// routes and routes --check answered by the daemon's live mirror.
	out, err = run("routes", "--socket", sock, "--json")
	if err != nil {
		t.Fatalf("routes: %v\n%s", err, out)
	}
	var rr daemon.RoutesReply
	if err := json.Unmarshal([]byte(out), &rr); err != nil {
		t.Fatalf("routes --json: %v\n%s", err, out)
	}
	hasLab := false
	for _, e := range rr.Routes {
		if e.Prefix == doomed {
			t.Errorf("the daemon's FIB still lists %s", doomed)
		}
		hasLab = hasLab || e.Prefix == l.RouteV4
	}
	if !hasLab || rr.Stats.Routes == 0 {
		t.Errorf("the daemon's routes lack %s: %s", l.RouteV4, out)
	}
	if out, err := run("routes", "--socket", sock, "--check", "--all"); err != nil || !strings.Contains(out, "0 differences") {
		t.Errorf("routes --check against the daemon: %v\n%s", err, out)
	}

	// SIGUSR2 hands off for an upgrade: the daemon exits, XDP forwards on
	// with the pinned FIB (the afxdp interface through the kernel), and
	// the next start takes everything over, warm.
	d2.signalExit(t, syscall.SIGUSR2, logPath)
	if n := xdpLinks(); n != 3 {
		t.Errorf("after the handoff %d interfaces have XDP, want 3", n)
	}
	if k := queueKnobs(t, l); runtime.NumCPU() == 2 && maps.Equal(k, knobs0) {
		t.Errorf("the handoff restored the affinity: it should stay applied for the successor")
	}
	if sent, got := send(labDst, 20000); got != sent {
		t.Errorf("between handoff and the next start: sink matched %d of %d", got, sent)
	}
	d3 := startDaemon(t, config, sock, logPath)
	if err := get(sock, "/status", &st); err != nil || !st.WarmStart {
		t.Errorf("start after a handoff: warm %v, %v", st.WarmStart, err)
	}
	checkAffinity(t, l, sock, d3.cmd.Process.Pid)
	if sent, got := send(labDst, 20000); got != sent {
		t.Errorf("after the handoff's successor started: sink matched %d of %d", got, sent)
	}
	d3.terminate(t, logPath)
	hostAsFound(t, l, knobs0, dir, pins, sock)
}

// queueKnobs reads the XPS and RPS masks of every queue of the router's
// interfaces.
func queueKnobs(t *testing.T, l *lab.Lab) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := netnsrun.DoSysfs(l.RouterNS, func() error {
		for _, name := range []string{l.Ingress[0].B.Name, l.Ingress[1].B.Name, l.Egress.A.Name} {
			for q := range l.Queues {
				for _, p := range []string{
					fmt.Sprintf("/sys/class/net/%s/queues/rx-%d/rps_cpus", name, q),
					fmt.Sprintf("/sys/class/net/%s/queues/tx-%d/xps_cpus", name, q),
				} {
					b, err := os.ReadFile(p)
					if err != nil {
						return err
					}
					out[p] = strings.TrimSpace(string(b))
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// checkAffinity checks a daemon started with affinity and housekeeping
// CPU 0 on a 2-CPU machine: the plan puts every queue's XPS on CPU 1 and
// both workers there, the daemon's worker threads run on CPU 1 and every
// other thread on CPU 0.
func checkAffinity(t *testing.T, l *lab.Lab, sock string, pid int) {
	t.Helper()
	if runtime.NumCPU() != 2 {
		t.Logf("affinity checks assume 2 CPUs, this machine has %d", runtime.NumCPU())
		return
	}
	out, err := run("status", "--socket", sock, "--json")
	if err != nil {
		t.Fatal(err)
	}
	var st daemon.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(st.WorkerCPUs) != "[1 1]" || fmt.Sprint(st.Housekeeping) != "[0]" || len(st.Affinity) == 0 {
		t.Errorf("status: worker cpus %v, housekeeping %v, affinity %v; want [1 1], [0] and the plan's writes",
			st.WorkerCPUs, st.Housekeeping, st.Affinity)
	}
	k := queueKnobs(t, l)
	for _, name := range []string{"eth1", "eth2", "eth3"} {
		for q := range 2 {
			if v := k[fmt.Sprintf("/sys/class/net/%s/queues/tx-%d/xps_cpus", name, q)]; v != "2" {
				t.Errorf("%s tx-%d xps_cpus = %q, want 2 (cpu1)", name, q, v)
			}
		}
	}
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		t.Fatal(err)
	}
	onWorker := 0
	for _, task := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/status", pid, task.Name()))
		if err != nil {
			continue // the thread exited
		}
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "Cpus_allowed_list:"); ok {
				switch strings.TrimSpace(v) {
				case "0":
				case "1":
					onWorker++
				default:
					t.Errorf("daemon thread %s may run on cpus %s: want 0 (housekeeping) or 1 (a worker)", task.Name(), v)
				}
			}
		}
	}
	if onWorker != 2 {
		t.Errorf("%d daemon threads on cpu 1, want the 2 workers", onWorker)
	}
}
