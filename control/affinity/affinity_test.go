package affinity

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/xdprouter/xdprouter/internal/labtest"
	"github.com/xdprouter/xdprouter/internal/testutil"
	"github.com/xdprouter/xdprouter/lab"
)

func load(t *testing.T, root string, names ...string) (*Host, []*Iface) {
	t.Helper()
	h, err := Discover(root)
	if err != nil {
		t.Fatal(err)
	}
	var ifs []*Iface
	for _, n := range names {
		ifc, err := h.Iface(n)
		if err != nil {
			t.Fatal(err)
		}
		ifs = append(ifs, ifc)
	}
	return h, ifs
}

func table(t *testing.T, cpus []int, rows []Row) string {
	t.Helper()
	var b bytes.Buffer
	if err := WriteTable(&b, cpus, rows); err != nil {
		t.Fatal(err)
	}
	// Compare cell by cell, not by padding.
	var lines []string
	for _, l := range strings.Split(strings.TrimRight(b.String(), "\n"), "\n") {
		lines = append(lines, strings.Join(strings.Fields(l), " "))
	}
	return strings.Join(lines, "\n")
}

// TestIGBRouterCurrent renders the recorded router's IRQs as the router
// text printed them for vanilla Linux 3.8.5.
func TestIGBRouterCurrent(t *testing.T) {
	h, ifs := load(t, "testdata/igb-router", "eth1", "eth2", "eth3")
	want := `cpu0 cpu1 cpu2 cpu3 cpu4 cpu5
eth1-TxRx-0 · × · · · ·
eth1-TxRx-1 · · × · · ·
eth1-TxRx-2 · · × · · ·
eth1-TxRx-3 · · · × · ·
eth1-TxRx-4 · · · × · ·
eth1-TxRx-5 · · · · × ·
eth2-TxRx-0 · · · · · ×
eth2-TxRx-1 × · · · · ·
eth2-TxRx-2 × · · · · ·
eth2-TxRx-3 × · · · · ·
eth2-TxRx-4 · × · · · ·
eth2-TxRx-5 · · × · · ·
eth3-TxRx-0 · · · × · ·
eth3-TxRx-1 · · · · × ·
eth3-TxRx-2 · · · · × ·
eth3-TxRx-3 · · · · · ×
eth3-TxRx-4 · · · · · ×
eth3-TxRx-5 × · · · · ·`
	if got := table(t, h.Online(), CurrentRows(ifs)); got != want {
		t.Errorf("current table:\n%s\nwant (the router text's):\n%s", got, want)
	}
	for _, ifc := range ifs {
		if ifc.Driver != "igb" || ifc.Node != 0 || ifc.RxQueues != 6 || len(ifc.IRQs) != 6 {
			t.Errorf("%s: driver %q node %d rx %d irqs %d", ifc.Name, ifc.Driver, ifc.Node, ifc.RxQueues, len(ifc.IRQs))
		}
	}
}

// TestIGBRouterPlan: CPU 0 kept for userland and queues reduced to the
// CPUs gives the router text's final, hand-made layout.
func TestIGBRouterPlan(t *testing.T) {
	h, ifs := load(t, "testdata/igb-router", "eth1", "eth2", "eth3")
	p, err := MakePlan(h, ifs, PlanOptions{Housekeeping: []int{0}, ReduceQueues: true})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(p.CPUs, []int{1, 2, 3, 4, 5}) {
		t.Fatalf("plan CPUs %v", p.CPUs)
	}
	var rows []Row
	for _, a := range p.Ifaces[0].Assign {
		rows = append(rows, Row{Name: "TxRx-" + itoa(a.Queue), CPUs: []int{a.CPU}})
	}
	want := `cpu0 cpu1 cpu2 cpu3 cpu4 cpu5
TxRx-0 · × · · · ·
TxRx-1 · · × · · ·
TxRx-2 · · · × · ·
TxRx-3 · · · · × ·
TxRx-4 · · · · · ×`
	if got := table(t, h.Online(), rows); got != want {
		t.Errorf("plan:\n%s\nwant (the router text's):\n%s", got, want)
	}
	for _, ip := range p.Ifaces {
		if ip.Queues != 5 || len(ip.RPS) != 0 {
			t.Errorf("%s: %d queues, rps %v; want 5 queues, RPS off", ip.Name, ip.Queues, ip.RPS)
		}
		for _, a := range ip.Assign {
			if len(a.IRQs) != 1 || !slices.Equal(ip.XPS[a.Queue], []int{a.CPU}) {
				t.Errorf("%s queue %d: irqs %v xps %v, want its one IRQ and XPS on cpu%d", ip.Name, a.Queue, a.IRQs, ip.XPS[a.Queue], a.CPU)
			}
		}
	}
}

func itoa(i int) string { return FormatList([]int{i}) }

// TestVirtioVM reads the VM of the RSS text: virtio6 is eth1, CPUs 4-7
// are isolated, and each queue has an input and an output IRQ.
func TestVirtioVM(t *testing.T) {
	h, ifs := load(t, "testdata/virtio-vm", "eth1")
	if !slices.Equal(h.Isolated, []int{4, 5, 6, 7}) || len(h.CPUs) != 8 {
		t.Fatalf("isolated %v of %d CPUs", h.Isolated, len(h.CPUs))
	}
	ifc := ifs[0]
	if ifc.Device != "virtio6" || ifc.Driver != "virtio_net" || ifc.RxQueues != 4 || ifc.Node != -1 {
		t.Fatalf("eth1: %+v", ifc)
	}
	byName := map[string]QueueIRQ{}
	for _, q := range ifc.IRQs {
		byName[q.Name] = q
	}
	if len(ifc.IRQs) != 8 {
		t.Errorf("%d queue IRQs, want 8 (virtio6-config is not a queue): %+v", len(ifc.IRQs), ifc.IRQs)
	}
	in0, in1 := byName["virtio6-input.0"], byName["virtio6-input.1"]
	if in0.IRQ != 53 || in0.Kind != "rx" || in0.Queue != 0 || !slices.Equal(in0.Affinity, []int{0, 1, 2, 3}) {
		t.Errorf("virtio6-input.0: %+v", in0)
	}
	if in1.IRQ != 55 || in1.Queue != 1 || !slices.Equal(in1.Affinity, []int{4, 5, 6, 7}) {
		t.Errorf("virtio6-input.1: %+v", in1)
	}
	p, err := MakePlan(h, ifs, PlanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(p.CPUs, []int{0, 1, 2, 3}) {
		t.Errorf("plan CPUs %v, want 0-3 (4-7 isolated)", p.CPUs)
	}
	for _, a := range p.Ifaces[0].Assign {
		if a.CPU != a.Queue || len(a.IRQs) != 2 {
			t.Errorf("queue %d on cpu%d with irqs %v; want cpu%d, input and output IRQ", a.Queue, a.CPU, a.IRQs, a.Queue)
		}
	}
	if !strings.Contains(strings.Join(p.Notes, "\n"), "isolated CPUs 4-7") {
		t.Errorf("notes do not mention the isolated CPUs: %v", p.Notes)
	}
	// Asked to use an isolated CPU for a single-queue RPS fallback, the
	// plan leaves it out of the RPS mask: the kernel would refuse it.
	one := &Iface{Name: "eth9", RxQueues: 1, TxQueues: 1, Node: -1}
	p, err = MakePlan(h, []*Iface{one}, PlanOptions{CPUs: []int{2, 3, 4}})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(p.Ifaces[0].RPS[0], []int{2, 3}) {
		t.Errorf("RPS over %v, want 2,3 (4 is isolated)", p.Ifaces[0].RPS[0])
	}
}

// TestMLX5TwoSockets: 64 CPUs with SMT on two nodes; the NIC is on node
// 0, so the plan takes one thread of each node-0 core; irqbalance runs.
func TestMLX5TwoSockets(t *testing.T) {
	h, ifs := load(t, "testdata/mlx5-2s", "eth0")
	ifc := ifs[0]
	if ifc.Device != "0000:3b:00.0" || ifc.Driver != "mlx5_core" || ifc.Node != 0 || len(ifc.IRQs) != 64 {
		t.Fatalf("eth0: device %q driver %q node %d irqs %d", ifc.Device, ifc.Driver, ifc.Node, len(ifc.IRQs))
	}
	if c, _ := h.CPU(40); c.Node != 0 || c.Package != 0 || !slices.Equal(c.Siblings, []int{8, 40}) {
		t.Errorf("cpu40: %+v", c)
	}
	if !h.IRQBalance || !slices.Equal(h.Banned, []int{0, 32}) {
		t.Errorf("irqbalance %v banned %v", h.IRQBalance, h.Banned)
	}
	p, err := MakePlan(h, ifs, PlanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}
	if !slices.Equal(p.CPUs, want) {
		t.Errorf("plan CPUs %v, want %v (node 0, one thread per core)", p.CPUs, want)
	}
	if a := p.Ifaces[0].Assign[17]; a.CPU != 1 {
		t.Errorf("queue 17 on cpu%d, want cpu1 (64 queues wrap over 16 CPUs)", a.CPU)
	}
	if !strings.Contains(strings.Join(p.Notes, "\n"), "irqbalance is running") {
		t.Errorf("notes do not warn about irqbalance: %v", p.Notes)
	}
	if got := FormatMask([]int{40}, 64); got != "00000100,00000000" {
		t.Errorf("mask of cpu40 on 64 CPUs = %q", got)
	}
	if got, _ := ParseMask(FormatMask(p.CPUs, 64)); !slices.Equal(got, p.CPUs) {
		t.Errorf("mask round trip: %v", got)
	}
}

func TestMasks(t *testing.T) {
	tests := []struct {
		cpus  []int
		ncpus int
		mask  string
		list  string
	}{
		{[]int{2}, 8, "04", "2"},
		{[]int{3}, 8, "08", "3"},
		{[]int{0, 1, 2, 3, 4, 5}, 6, "3f", "0-5"},
		{[]int{0}, 64, "00000000,00000001", "0"},
		{[]int{39}, 40, "80,00000000", "39"},
		{[]int{1, 3, 4, 5, 33}, 36, "2,0000003a", "1,3-5,33"},
		{nil, 4, "0", ""},
	}
	for _, tc := range tests {
		if got := FormatMask(tc.cpus, tc.ncpus); got != tc.mask {
			t.Errorf("FormatMask(%v, %d) = %q, want %q", tc.cpus, tc.ncpus, got, tc.mask)
		}
		if got, err := ParseMask(tc.mask); err != nil || !slices.Equal(got, tc.cpus) {
			t.Errorf("ParseMask(%q) = %v, %v", tc.mask, got, err)
		}
		if got := FormatList(tc.cpus); got != tc.list {
			t.Errorf("FormatList(%v) = %q, want %q", tc.cpus, got, tc.list)
		}
	}
	if _, err := ParseMask("xyz"); err == nil {
		t.Error("ParseMask accepted xyz")
	}
}

// TestThisMachine reads the real /proc and /sys, read-only.
func TestThisMachine(t *testing.T) {
	h, err := Discover("/")
	if err != nil {
		t.Fatal(err)
	}
	if len(h.CPUs) == 0 {
		t.Fatal("no online CPU found")
	}
	names, err := h.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		ifc, err := h.Iface(n)
		if err != nil {
			t.Fatal(err)
		}
		if ifc.RxQueues == 0 {
			t.Errorf("%s: no rx queue", n)
		}
		t.Logf("%s: driver %s device %s node %d, %d rx / %d tx queues, queue IRQs %+v", n, ifc.Driver, ifc.Device, ifc.Node, ifc.RxQueues, ifc.TxQueues, ifc.IRQs)
	}
}

// copyTree copies a recorded tree so that apply can write into it.
func copyTree(t *testing.T, src string) string {
	t.Helper()
	dst := t.TempDir()
	if out, err := exec.Command("cp", "-a", src+"/.", dst).CombinedOutput(); err != nil {
		t.Fatalf("copy %s: %v %s", src, err, out)
	}
	return dst
}

// snapshot reads every regular file of a tree.
func snapshot(t *testing.T, root string) map[string]string {
	t.Helper()
	m := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.Type()&fs.ModeSymlink != 0 || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		m[strings.TrimPrefix(p, root)] = string(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestApplyRestore applies the igb router's plan into a copy of its tree:
// afterwards discovery sees the plan, and restore leaves every file
// exactly as it was.
func TestApplyRestore(t *testing.T) {
	root := copyTree(t, "testdata/igb-router")
	before := snapshot(t, root)
	h, ifs := load(t, root, "eth1", "eth2", "eth3")
	p, err := MakePlan(h, ifs, PlanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ws, err := p.Writes(h, ifs)
	if err != nil {
		t.Fatal(err)
	}
	// 18 IRQs of which 3 are already in place (eth1-TxRx-1 on cpu2 ...),
	// 18 XPS masks, RPS already off everywhere.
	irqWrites, xpsWrites, rpsWrites := 0, 0, 0
	for _, w := range ws {
		switch {
		case strings.HasSuffix(w.Path, "smp_affinity_list"):
			irqWrites++
		case strings.HasSuffix(w.Path, "xps_cpus"):
			xpsWrites++
		case strings.HasSuffix(w.Path, "rps_cpus"):
			rpsWrites++
		}
	}
	if xpsWrites != 18 || rpsWrites != 0 || irqWrites == 0 || irqWrites == 18 {
		t.Errorf("writes: %d IRQ, %d XPS, %d RPS", irqWrites, xpsWrites, rpsWrites)
	}
	rec, err := Apply(root, ws)
	if err != nil {
		t.Fatal(err)
	}
	recPath := filepath.Join(t.TempDir(), "record.json")
	if err := SaveRecord(recPath, rec); err != nil {
		t.Fatal(err)
	}
	h2, ifs2 := load(t, root, "eth1", "eth2", "eth3")
	for _, ifc := range ifs2 {
		for _, irq := range ifc.IRQs {
			if !slices.Equal(irq.Affinity, []int{irq.Queue}) {
				t.Errorf("after apply %s on %v, want cpu%d", irq.Name, irq.Affinity, irq.Queue)
			}
		}
		for q, cpus := range ifc.XPS {
			if !slices.Equal(cpus, []int{q}) {
				t.Errorf("after apply %s tx-%d xps %v", ifc.Name, q, cpus)
			}
		}
	}
	if again, _ := p.Writes(h2, ifs2); len(again) != 0 {
		t.Errorf("applied plan still wants %d writes: %+v", len(again), again)
	}
	loaded, err := LoadRecord(recPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := Restore(root, loaded); err != nil {
		t.Fatal(err)
	}
	after := snapshot(t, root)
	for k, v := range before {
		if strings.TrimSpace(after[k]) != strings.TrimSpace(v) {
			t.Errorf("%s: %q after restore, was %q", k, after[k], v)
		}
	}
}

// TestReduceQueues: with CPU 0 kept for userland the router text ran 5
// queues on CPUs 1-5; apply reduces the channels (like `ethtool -L eth1
// combined 5`) and restore brings back 6.
func TestReduceQueues(t *testing.T) {
	root := copyTree(t, "testdata/igb-router")
	before := snapshot(t, root)
	h, ifs := load(t, root, "eth1")
	if c := ifs[0].Channels; c == nil || c.Combined != 6 || c.MaxCombined != 8 {
		t.Fatalf("channels %+v", ifs[0].Channels)
	}
	p, err := MakePlan(h, ifs, PlanOptions{Housekeeping: []int{0}, ReduceQueues: true})
	if err != nil {
		t.Fatal(err)
	}
	ws, err := p.Writes(h, ifs)
	if err != nil {
		t.Fatal(err)
	}
	if !ws[0].Channels || !strings.Contains(ws[0].What, "combined 6 -> combined 5") {
		t.Fatalf("first write %+v, want the channel reduction", ws[0])
	}
	rec, err := Apply(root, ws)
	if err != nil {
		t.Fatal(err)
	}
	if _, ifs2 := load(t, root, "eth1"); ifs2[0].Channels.Combined != 5 {
		t.Errorf("after apply: %+v", ifs2[0].Channels)
	}
	if err := Restore(root, rec); err != nil {
		t.Fatal(err)
	}
	after := snapshot(t, root)
	for k, v := range before {
		if strings.TrimSpace(after[k]) != strings.TrimSpace(v) {
			t.Errorf("%s: %q after restore, was %q", k, after[k], v)
		}
	}
}

// TestRealChannels changes a real veth's channels with ethtool ioctls in
// a lab namespace, the way apply does on a live host, and restores them.
func TestRealChannels(t *testing.T) {
	l := labtest.Up(t, 2)
	err := lab.InNamespace(l.RouterNS, func() error {
		cur, err := Ethtool{}.Channels("eth1")
		if err != nil {
			return err
		}
		if cur.Rx != 2 || cur.Tx != 2 || cur.MaxRx != 2 {
			return fmt.Errorf("veth eth1 channels %+v, want rx 2 tx 2 of 2", cur)
		}
		nv, _ := json.Marshal(cur.Reduced(1))
		ov, _ := json.Marshal(cur)
		rec, err := Apply("/", []Write{{Path: "eth1", Value: string(nv), Old: string(ov), Channels: true, What: "eth1 to 1 queue"}})
		if err != nil {
			return err
		}
		if got, _ := (Ethtool{}).Channels("eth1"); got.Rx != 1 || got.Tx != 1 {
			return fmt.Errorf("after apply: %+v", got)
		}
		if err := Restore("/", rec); err != nil {
			return err
		}
		if got, _ := (Ethtool{}).Channels("eth1"); got != cur {
			return fmt.Errorf("after restore %+v, was %+v", got, cur)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestApplyFailureRestores: a write that cannot be made undoes the ones
// before it.
func TestApplyFailureRestores(t *testing.T) {
	root := copyTree(t, "testdata/igb-router")
	before := snapshot(t, root)
	h, ifs := load(t, root, "eth1")
	p, err := MakePlan(h, ifs, PlanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ws, err := p.Writes(h, ifs)
	if err != nil {
		t.Fatal(err)
	}
	ws = append(ws, Write{Path: "proc/irq/999/nowhere/smp_affinity_list", Value: "1", What: "impossible"})
	if _, err := Apply(root, ws); err == nil {
		t.Fatal("apply with an impossible write succeeded")
	}
	after := snapshot(t, root)
	for k, v := range before {
		if strings.TrimSpace(after[k]) != strings.TrimSpace(v) {
			t.Errorf("%s: %q after a failed apply, was %q", k, after[k], v)
		}
	}
}

// TestApplyRealIRQs applies the plan's IRQ placement on this machine's
// real IRQs, checks the kernel took it, restores, and requires every file
// exactly as found. Only smp_affinity_list is written: the host's own
// interfaces keep their RPS and XPS.
func TestApplyRealIRQs(t *testing.T) {
	testutil.Privileged(t)
	h, err := Discover("/")
	if err != nil {
		t.Fatal(err)
	}
	names, err := h.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	var ifs []*Iface
	for _, n := range names {
		if ifc, err := h.Iface(n); err == nil && len(ifc.IRQs) > 0 {
			ifs = append(ifs, ifc)
		}
	}
	if len(ifs) == 0 {
		t.Skip("no interface with queue IRQs on this machine")
	}
	p, err := MakePlan(h, ifs, PlanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	all, err := p.Writes(h, ifs)
	if err != nil {
		t.Fatal(err)
	}
	var ws []Write
	found := map[string]string{}
	for _, w := range all {
		if strings.HasSuffix(w.Path, "smp_affinity_list") {
			ws = append(ws, w)
			found[w.Path] = w.Old
		}
	}
	if len(ws) == 0 {
		t.Skip("the IRQs are already where the plan puts them")
	}
	t.Cleanup(func() { _ = Restore("/", ws) }) // whatever happens below
	rec, err := Apply("/", ws)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range rec {
		t.Logf("applied %s", w.What)
	}
	h2, err := Discover("/")
	if err != nil {
		t.Fatal(err)
	}
	for _, ifc := range ifs {
		again, _ := h2.Iface(ifc.Name)
		for _, irq := range again.IRQs {
			want := []int{p.WorkerCPU(irq.Queue)}
			if !slices.Equal(irq.Affinity, want) {
				t.Errorf("%s affinity %v after apply, want %v", irq.Name, irq.Affinity, want)
			}
		}
	}
	if err := Restore("/", rec); err != nil {
		t.Fatal(err)
	}
	for path, old := range found {
		got, err := readTrim("/" + path)
		if err != nil || got != old {
			t.Errorf("/%s = %q after restore, was %q (%v)", path, got, old, err)
		}
	}
}

func findings(t *testing.T, root string, names ...string) ([]Finding, map[string]Finding) {
	t.Helper()
	h, ifs := load(t, root, names...)
	fs, err := Audit(h, ifs, nil, AuditOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]Finding{}
	for _, f := range fs {
		m[f.Check] = f
	}
	return fs, m
}

// TestAuditUntunedRouter: the router text's failure (every IRQ on CPU 0,
// backlog drops, time squeeze) is reported with fixes and fails the check.
func TestAuditUntunedRouter(t *testing.T) {
	fs, m := findings(t, "testdata/untuned-router", "eth1", "eth2", "eth3")
	if !Failed(fs) {
		t.Errorf("the untuned router passed: %+v", fs)
	}
	for check, want := range map[string]Severity{"softnet drops": Problem, "time squeeze": Warn, "eth1 irqs": Problem,
		"eth2 irqs": Problem, "eth1 queue cpus": Warn, "irqbalance": OK} {
		if f := m[check]; f.Severity != want {
			t.Errorf("%s: %+v, want %s", check, f, want)
		}
	}
	if f := m["softnet drops"]; !strings.Contains(f.Reading, "cpu0 123456") || !strings.Contains(f.Fix, "netdev_max_backlog") {
		t.Errorf("softnet drops: %+v", f)
	}
	if f := m["eth1 irqs"]; !strings.Contains(f.Reading, "all 6 queue IRQs on cpu0") {
		t.Errorf("eth1 irqs: %+v", f)
	}
}

// TestAuditTunedAndOthers: the tuned router (after apply) passes; the
// mlx5 host warns about irqbalance; the virtio VM's split IRQs are off
// their workers' CPUs.
func TestAuditTunedAndOthers(t *testing.T) {
	root := copyTree(t, "testdata/igb-router")
	h, ifs := load(t, root, "eth1", "eth2", "eth3")
	p, _ := MakePlan(h, ifs, PlanOptions{})
	ws, _ := p.Writes(h, ifs)
	if _, err := Apply(root, ws); err != nil {
		t.Fatal(err)
	}
	fs, m := findings(t, root, "eth1", "eth2", "eth3")
	if Failed(fs) || m["eth1 queue cpus"].Severity != OK {
		t.Errorf("tuned router: %+v", fs)
	}
	_, m = findings(t, "testdata/mlx5-2s", "eth0")
	if m["irqbalance"].Severity != Warn || !strings.Contains(m["irqbalance"].Reading, "0,32") {
		t.Errorf("mlx5: irqbalance %+v", m["irqbalance"])
	}
	_, m = findings(t, "testdata/virtio-vm", "eth1")
	if m["eth1 queue cpus"].Severity != Warn {
		t.Errorf("virtio: %+v", m["eth1 queue cpus"])
	}
}
