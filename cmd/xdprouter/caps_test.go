package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xdprouter/xdprouter/bench/gen"
	"github.com/xdprouter/xdprouter/bench/sink"
	"github.com/xdprouter/xdprouter/control/daemon"
	"github.com/xdprouter/xdprouter/internal/labtest"
)

// capNumbers are the capabilities the unit may name.
var capNumbers = map[string]int{
	"net_admin": unix.CAP_NET_ADMIN, "net_raw": unix.CAP_NET_RAW, "ipc_lock": unix.CAP_IPC_LOCK,
	"bpf": unix.CAP_BPF, "perfmon": unix.CAP_PERFMON, "sys_admin": unix.CAP_SYS_ADMIN,
	"sys_nice": unix.CAP_SYS_NICE, "sys_resource": unix.CAP_SYS_RESOURCE,
}

// unitCaps reads CapabilityBoundingSet of deploy/xdprouter.service, as
// setpriv names ("net_admin"), and checks AmbientCapabilities match.
func unitCaps(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("../../deploy/xdprouter.service")
	if err != nil {
		t.Fatal(err)
	}
	sets := map[string][]string{}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), "=")
		if !ok || (k != "CapabilityBoundingSet" && k != "AmbientCapabilities") {
			continue
		}
		for _, c := range strings.Fields(v) {
			n := strings.ToLower(strings.TrimPrefix(c, "CAP_"))
			if _, ok := capNumbers[n]; !ok {
				t.Fatalf("unit names %s, unknown to this test", c)
			}
			sets[k] = append(sets[k], n)
		}
	}
	if len(sets["CapabilityBoundingSet"]) == 0 || !slices.Equal(sets["CapabilityBoundingSet"], sets["AmbientCapabilities"]) {
		t.Fatalf("unit: CapabilityBoundingSet %v and AmbientCapabilities %v must be the same non-empty set", sets["CapabilityBoundingSet"], sets["AmbientCapabilities"])
	}
	return sets["CapabilityBoundingSet"]
}

// TestCapabilities runs the daemon as deploy/xdprouter.service does: uid
// 0 with the bounding set cut to the unit's capabilities, in the
// namespace it routes in (entered by ip netns exec before the drop, as a
// host's own namespace is), pins on a bpffs that is already mounted,
// RLIMIT_MEMLOCK at Linux's default 8 MiB. With the unit's set it starts,
// applies affinity, forwards in both engines and stops clean. Without any
// one of them it refuses to start, says what failed and leaves the
// namespace as found; so does the unit's set with `namespace:` (setns
// needs CAP_SYS_ADMIN, which the unit leaves out).
func TestCapabilities(t *testing.T) {
	caps := unitCaps(t)
	l := labtest.Up(t, 2)
	dir := t.TempDir()
	bpffs := filepath.Join(dir, "bpffs")
	if err := os.Mkdir(bpffs, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("bpf", bpffs, "bpf", 0, "mode=0700"); err != nil {
		t.Fatalf("mount bpffs: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(bpffs, unix.MNT_DETACH) })
	pins := filepath.Join(bpffs, "xdprouter")
	sock := filepath.Join(dir, "x.sock")
	housekeeping := ""
	if runtime.NumCPU() > 1 {
		housekeeping = "housekeeping_cpus: [0]\n"
	}
	writeConfig := func(path, namespace string) {
		t.Helper()
		yaml := fmt.Sprintf(`%sinterfaces:
  - {name: %s, engine: xdp}
  - {name: %s, engine: afxdp}
  - {name: %s, engine: pass}
affinity: true
%smetrics: "off"
control_socket: %s
pin_path: %s
fib: {nodes4: 1024, leaves4: 2048, nodes6: 1024, leaves6: 2048, nexthops: 64}
`, namespace, l.Ingress[0].B.Name, l.Ingress[1].B.Name, l.Egress.A.Name, housekeeping, sock, pins)
		if err := os.WriteFile(path, []byte(yaml), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	config := filepath.Join(dir, "xdprouter.yaml")
	writeConfig(config, "")
	nsConfig := filepath.Join(dir, "xdprouter-ns.yaml")
	writeConfig(nsConfig, "namespace: "+l.RouterNS+"\n")
	wrapper := func(caps []string) []string {
		set := "-all"
		for _, c := range caps {
			set += ",+" + c
		}
		return []string{"ip", "netns", "exec", l.RouterNS, "prlimit", "--memlock=8388608:8388608",
			"setpriv", "--bounding-set", set, "--inh-caps", "-all", "--"}
	}
	knobs0 := queueKnobs(t, l)
	leftovers := func(t *testing.T) { t.Helper(); hostAsFound(t, l, knobs0, dir, pins, sock) }

	t.Run("unit set", func(t *testing.T) {
		logPath := filepath.Join(dir, "unit.log")
		p := startDaemonUnder(t, wrapper(caps), config, sock, logPath)
		var st daemon.Status
		if err := get(sock, "/status", &st); err != nil {
			t.Fatal(err)
		}
		want := uint64(0)
		for _, c := range caps {
			want |= 1 << capNumbers[c]
		}
		if eff := capEff(t, st.PID); eff != want {
			t.Errorf("daemon pid %d CapEff %#x, want exactly the unit's %v = %#x", st.PID, eff, caps, want)
		}
		checkAffinity(t, l, sock, st.PID) // threads pinned (their own: no CAP_SYS_NICE needed for that)
		if len(st.Affinity) == 0 || st.Workers == 0 {
			t.Errorf("status: affinity %v, %d workers; want the plan applied and workers running", st.Affinity, st.Workers)
		}
		sk, err := sink.Attach(l.SinkNS, []string{l.Egress.B.Name}, sink.DefaultPort)
		if err != nil {
			t.Fatal(err)
		}
		defer sk.Close()
		g, err := gen.New(gen.Config{Namespace: l.GenNS, Links: gen.LabLinks(l), Count: 20000, Rate: 50000, CPUs: []int{0, 1 % runtime.NumCPU()}})
		if err != nil {
			t.Fatal(err)
		}
		res, err := g.Run(context.Background())
		g.Close()
		if err != nil {
			t.Fatal(err)
		}
		got, _ := sk.WaitMatched(context.Background(), res.Sent, 2*time.Second)
		var ss daemon.Stats
		if err := get(sock, "/stats", &ss); err != nil {
			t.Fatal(err)
		}
		workers := uint64(0)
		for _, w := range ss.Workers {
			workers += w.Forwarded
		}
		for _, w := range ss.Workers {
			if a, err := unix.SchedGetAttr(w.TID, 0); err != nil || a.Policy != unix.SCHED_FIFO {
				t.Errorf("worker %d (tid %d): scheduling %+v (%v); want SCHED_FIFO (worker_priority)", w.Queue, w.TID, a, err)
			}
		}
		if got.MatchedPackets != res.Sent || ss.Interfaces[l.Ingress[0].B.Name]["forwarded"] == 0 || workers == 0 {
			t.Errorf("sink matched %d of %d; XDP forwarded %d, workers %d (want both engines forwarding)",
				got.MatchedPackets, res.Sent, ss.Interfaces[l.Ingress[0].B.Name]["forwarded"], workers)
		}
		p.terminate(t, logPath)
		leftovers(t)
	})

	// Each capability is needed: without it, start fails at the step
	// that needs it (and undoes what it did).
	fails := map[string]string{
		"net_admin": "xps_cpus: operation not permitted", // the affinity plan's first write
		"net_raw":   "AF_XDP socket",
		"bpf":       "RLIMIT_MEMLOCK",
		"perfmon":   "load router program",
		"ipc_lock":  "XDP_UMEM_REG", // a worker's UMEM (16 MiB per socket) > RLIMIT_MEMLOCK
		"sys_nice":  "SCHED_FIFO",   // the AF_XDP workers' real-time priority
	}
	type failCase struct {
		name   string
		caps   []string
		config string
		want   string
	}
	cases := []failCase{{"namespace needs sys_admin", caps, nsConfig, "enter netns " + l.RouterNS}}
	for _, c := range caps {
		want, ok := fails[c]
		if !ok {
			t.Errorf("the unit grants %s: this test knows no step that needs it (drop it, or add the step here)", c)
			continue
		}
		cases = append(cases, failCase{"without " + c, slices.DeleteFunc(slices.Clone(caps), func(x string) bool { return x == c }), config, want})
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			cmd := daemonCommand(wrapper(tc.caps), tc.config)
			out, err := cmdOutput(ctx, cmd)
			if err == nil || !strings.Contains(out, tc.want) {
				t.Errorf("with %v: exit %v, want a failure naming %q:\n%s", tc.caps, err, tc.want, out)
			}
			for _, line := range strings.Split(out, "\n") {
				if strings.HasPrefix(line, "xdprouter: ") {
					t.Logf("%s", line)
				}
			}
			leftovers(t)
		})
	}
}

// capEff reads a process's effective capability set.
func capEff(t *testing.T, pid int) uint64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatalf("no CapEff in /proc/%d/status", pid)
	return 0
}

func execOut(name string, args ...string) (string, error) {
	b, err := exec.Command(name, args...).CombinedOutput()
	return string(b), err
}

// cmdOutput runs cmd to its end, or kills it when ctx ends, and returns
// its combined output.
func cmdOutput(ctx context.Context, cmd *exec.Cmd) (string, error) {
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := cmd.Start(); err != nil {
		return "", err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return buf.String(), err
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		<-done
		return buf.String(), fmt.Errorf("still running: %w", ctx.Err())
	}
}
