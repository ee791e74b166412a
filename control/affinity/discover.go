// Package affinity finds each NIC queue's IRQ and the host's CPUs, plans
// queue q of every interface, its IRQ, its XPS mask and worker q onto one
// CPU, and renders the plan and the current state as one table (queue,
// IRQ, XPS, CPU): what router tuning guides do by hand with
// /proc/interrupts, smp_affinity and rps_cpus.
//
// Everything is read below a root directory: "/" on a real host, or a
// recorded tree (testdata/NAME) holding the same /proc and /sys files.
package affinity

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// CPU is one online logical CPU.
type CPU struct {
	ID       int
	Core     int // core_id within its package
	Package  int
	Node     int
	Siblings []int // SMT threads of the same core, itself included
	Isolated bool  // isolcpus or nohz_full: the kernel refuses RPS masks there
}

// Host is what discovery found about the machine.
type Host struct {
	Root       string
	CPUs       []CPU
	Isolated   []int // from /sys/devices/system/cpu/isolated and isolcpus=
	NoHZFull   []int
	IRQBalance bool  // an irqbalance process runs
	Banned     []int // CPUs irqbalance is told to leave alone
}

// QueueIRQ is one IRQ of a NIC queue.
type QueueIRQ struct {
	IRQ       int
	Name      string // as in /proc/interrupts
	Queue     int
	Kind      string // "rxtx", "rx" or "tx"
	Affinity  []int  // smp_affinity_list
	Effective []int  // effective_affinity_list, where the kernel has it
}

// Iface is what discovery found about an interface.
type Iface struct {
	Name     string
	Driver   string
	Device   string // the device directory's name (PCI address, virtioN)
	Node     int    // NUMA node, -1 when none
	RxQueues int
	TxQueues int
	IRQs     []QueueIRQ
	RPS      map[int][]int // rx queue -> rps_cpus
	XPS      map[int][]int // tx queue -> xps_cpus
	// Channels are the current and maximum queue counts, when the driver
	// (or the recorded tree) reports them.
	Channels *Channels
}

func (h *Host) path(p string) string { return filepath.Join(h.Root, p) }

func readTrim(path string) (string, error) {
	b, err := os.ReadFile(path)
	return strings.TrimSpace(string(b)), err
}

func readInt(path string, def int) int {
	s, err := readTrim(path)
	if err != nil {
		return def
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return def
	}
	return n
}

// Discover reads the host's CPUs, isolation and irqbalance below root.
func Discover(root string) (*Host, error) {
	h := &Host{Root: root}
	online, err := readTrim(h.path("sys/devices/system/cpu/online"))
	if err != nil {
		return nil, fmt.Errorf("read online cpus: %w", err)
	}
	ids, err := ParseList(online)
	if err != nil {
		return nil, fmt.Errorf("online cpus: %w", err)
	}
	if s, err := readTrim(h.path("sys/devices/system/cpu/isolated")); err == nil && s != "" {
		h.Isolated, _ = ParseList(s)
	}
	if s, err := readTrim(h.path("sys/devices/system/cpu/nohz_full")); err == nil && s != "" && s != "(null)" {
		h.NoHZFull, _ = ParseList(s)
	}
	if cmd, err := readTrim(h.path("proc/cmdline")); err == nil {
		for _, f := range strings.Fields(cmd) {
			if v, ok := strings.CutPrefix(f, "isolcpus="); ok {
				// Flags (managed_irq, domain, nohz) come before the list.
				parts := strings.Split(v, ",")
				var list []string
				for _, p := range parts {
					if p != "" && (p[0] >= '0' && p[0] <= '9') {
						list = append(list, p)
					}
				}
				if l, err := ParseList(strings.Join(list, ",")); err == nil {
					h.Isolated = union(h.Isolated, l)
				}
			}
		}
	}
	nodeOf := map[int]int{}
	nodes, _ := filepath.Glob(h.path("sys/devices/system/node/node[0-9]*"))
	for _, n := range nodes {
		id, _ := strconv.Atoi(strings.TrimPrefix(filepath.Base(n), "node"))
		if s, err := readTrim(filepath.Join(n, "cpulist")); err == nil {
			l, _ := ParseList(s)
			for _, c := range l {
				nodeOf[c] = id
			}
		}
	}
	for _, id := range ids {
		dir := h.path(fmt.Sprintf("sys/devices/system/cpu/cpu%d/topology", id))
		c := CPU{ID: id, Core: readInt(filepath.Join(dir, "core_id"), id),
			Package: readInt(filepath.Join(dir, "physical_package_id"), 0), Node: nodeOf[id]}
		if s, err := readTrim(filepath.Join(dir, "thread_siblings_list")); err == nil {
			c.Siblings, _ = ParseList(s)
		}
		if len(c.Siblings) == 0 {
			c.Siblings = []int{id}
		}
		c.Isolated = slices.Contains(h.Isolated, id) || slices.Contains(h.NoHZFull, id)
		h.CPUs = append(h.CPUs, c)
	}
	h.IRQBalance, h.Banned = h.irqbalance()
	return h, nil
}

// irqbalance reports whether irqbalance runs (a process of that name under
// /proc) and which CPUs its configuration bans.
func (h *Host) irqbalance() (bool, []int) {
	running := false
	comms, _ := filepath.Glob(h.path("proc/[0-9]*/comm"))
	for _, c := range comms {
		if s, _ := readTrim(c); s == "irqbalance" {
			running = true
			break
		}
	}
	var banned []int
	for _, f := range []string{"etc/default/irqbalance", "etc/sysconfig/irqbalance"} {
		b, err := os.ReadFile(h.path(f))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(strings.TrimSpace(line), "IRQBALANCE_BANNED_CPULIST="); ok {
				banned, _ = ParseList(strings.Trim(v, `"'`))
			} else if v, ok := strings.CutPrefix(strings.TrimSpace(line), "IRQBALANCE_BANNED_CPUS="); ok {
				banned, _ = ParseMask(strings.Trim(v, `"'`))
			}
		}
	}
	return running, banned
}

// Online returns the online CPU IDs.
func (h *Host) Online() []int {
	var ids []int
	for _, c := range h.CPUs {
		ids = append(ids, c.ID)
	}
	return ids
}

// CPU returns the CPU with that ID.
func (h *Host) CPU(id int) (CPU, bool) {
	for _, c := range h.CPUs {
		if c.ID == id {
			return c, true
		}
	}
	return CPU{}, false
}

// ErrNoIface means the interface is not below the root.
var ErrNoIface = errors.New("no such interface")

// Interfaces lists the interfaces that have queues (not bonds' members'
// virtual children, not loopback).
func (h *Host) Interfaces() ([]string, error) {
	ents, err := os.ReadDir(h.path("sys/class/net"))
	if err != nil {
		return nil, fmt.Errorf("list interfaces: %w", err)
	}
	var out []string
	for _, e := range ents {
		if e.Name() == "lo" {
			continue
		}
		if _, err := os.Stat(h.path("sys/class/net/" + e.Name() + "/queues")); err == nil {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// Iface discovers one interface: queues, driver, NUMA node, the IRQ of
// each queue and the current RPS and XPS masks.
func (h *Host) Iface(name string) (*Iface, error) {
	dir := h.path("sys/class/net/" + name)
	if _, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("%w: %s", ErrNoIface, name)
	}
	ifc := &Iface{Name: name, Node: readInt(filepath.Join(dir, "device/numa_node"), -1),
		RPS: map[int][]int{}, XPS: map[int][]int{}}
	if dev, err := filepath.EvalSymlinks(filepath.Join(dir, "device")); err == nil {
		ifc.Device = filepath.Base(dev)
	}
	if drv, err := filepath.EvalSymlinks(filepath.Join(dir, "device/driver")); err == nil {
		ifc.Driver = filepath.Base(drv)
	}
	qs, _ := os.ReadDir(filepath.Join(dir, "queues"))
	for _, q := range qs {
		kind, n, ok := strings.Cut(q.Name(), "-")
		idx, err := strconv.Atoi(n)
		if !ok || err != nil {
			continue
		}
		switch kind {
		case "rx":
			ifc.RxQueues = max(ifc.RxQueues, idx+1)
			if m, err := readTrim(filepath.Join(dir, "queues", q.Name(), "rps_cpus")); err == nil {
				ifc.RPS[idx], _ = ParseMask(m)
			}
		case "tx":
			ifc.TxQueues = max(ifc.TxQueues, idx+1)
			if m, err := readTrim(filepath.Join(dir, "queues", q.Name(), "xps_cpus")); err == nil {
				ifc.XPS[idx], _ = ParseMask(m)
			}
		}
	}
	irqs, err := h.queueIRQs(ifc)
	if err != nil {
		return nil, err
	}
	ifc.IRQs = irqs
	if c, err := ChannelsFor(h.Root).Channels(name); err == nil {
		ifc.Channels = &c
	}
	return ifc, nil
}

// Patterns of queue IRQ names in /proc/interrupts. %s is the interface
// name, or the device name for virtio and mlx5.
var irqPatterns = []struct {
	re   string
	kind string
	dev  bool // matches the device name, not the interface's
}{
	{`^(?:\S+-)?%s-(?:TxRx|Tx-Rx|txrx|rxtx|combined)-(\d+)$`, "rxtx", false}, // igb, ixgbe, i40e ("i40e-eth1-TxRx-0"), ice, ena
	{`^(?:\S+-)?%s-(?:rx|Rx)-(\d+)$`, "rx", false},
	{`^(?:\S+-)?%s-(?:tx|Tx)-(\d+)$`, "tx", false},
	{`^%s-input\.(\d+)$`, "rx", true},  // virtio_net
	{`^%s-output\.(\d+)$`, "tx", true}, // virtio_net
	{`^mlx5_comp(\d+)@pci:%s$`, "rxtx", true},
}

// queueIRQs reads /proc/interrupts for the interface's queue IRQs and
// their affinity.
func (h *Host) queueIRQs(ifc *Iface) ([]QueueIRQ, error) {
	f, err := os.Open(h.path("proc/interrupts"))
	if err != nil {
		return nil, fmt.Errorf("read /proc/interrupts: %w", err)
	}
	defer f.Close()
	var res []*regexp.Regexp
	for _, p := range irqPatterns {
		name := ifc.Name
		if p.dev {
			name = ifc.Device
		}
		res = append(res, regexp.MustCompile(fmt.Sprintf(p.re, regexp.QuoteMeta(name))))
	}
	var out []QueueIRQ
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) < 2 {
			continue
		}
		irq, err := strconv.Atoi(strings.TrimSuffix(fs[0], ":"))
		if err != nil {
			continue
		}
		name := fs[len(fs)-1]
		for i, re := range res {
			m := re.FindStringSubmatch(name)
			if m == nil || (irqPatterns[i].dev && ifc.Device == "") {
				continue
			}
			q, _ := strconv.Atoi(m[1])
			qi := QueueIRQ{IRQ: irq, Name: name, Queue: q, Kind: irqPatterns[i].kind}
			if s, err := readTrim(h.path(fmt.Sprintf("proc/irq/%d/smp_affinity_list", irq))); err == nil {
				qi.Affinity, _ = ParseList(s)
			}
			if s, err := readTrim(h.path(fmt.Sprintf("proc/irq/%d/effective_affinity_list", irq))); err == nil && s != "" {
				qi.Effective, _ = ParseList(s)
			}
			out = append(out, qi)
			break
		}
	}
	return out, sc.Err()
}

func union(a, b []int) []int {
	out := slices.Clone(a)
	for _, x := range b {
		if !slices.Contains(out, x) {
			out = append(out, x)
		}
	}
	slices.Sort(out)
	return out
}
