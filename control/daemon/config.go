// Package daemon is the xdprouter daemon: it loads the router program,
// fills the FIB from the kernel over netlink, runs the engines each
// interface asks for, and serves status, statistics and Prometheus
// metrics, in an order that never blackholes traffic.
package daemon

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/xdprouter/xdprouter/dataplane/xdp"
	"github.com/xdprouter/xdprouter/dataplane/xsk"
)

// Config is the daemon's YAML configuration.
type Config struct {
	// Namespace is the named network namespace of the interfaces and
	// routes ("" = the daemon's own, the usual case; the lab uses one).
	Namespace string `yaml:"namespace"`
	// Interfaces are the router's ports with their engine.
	Interfaces []Interface `yaml:"interfaces"`
	// Table is the kernel routing table mirrored into the FIB (default
	// 254, main).
	Table int `yaml:"table"`
	// BypassFirewall keeps the fast path even when nftables or iptables
	// rules, tc filters, shaping qdiscs or policy rules could affect
	// forwarded traffic (by default such traffic goes to the kernel).
	// Dangerous: the fast path then skips them (docs/operator.md).
	BypassFirewall bool `yaml:"bypass_firewall"`
	// CPUs are the AF_XDP workers' CPUs: worker q on CPUs[q] (default:
	// q mod the number of CPUs).
	CPUs []int `yaml:"cpus"`
	// Housekeeping CPUs run the control plane (netlink, metrics); they
	// must not be worker CPUs.
	Housekeeping []int `yaml:"housekeeping_cpus"`
	// Affinity applies xdprouter's affinity plan at start (queue q of
	// every interface, its IRQ and XPS on one CPU, RPS off, housekeeping
	// CPUs left out; workers on the plan's CPUs when cpus is empty) and
	// restores what it changed at stop.
	Affinity bool `yaml:"affinity"`
	// Queues is the number of AF_XDP workers (default: the fewest queues
	// of the afxdp interfaces).
	Queues int `yaml:"queues"`
	// Socket sizes the AF_XDP sockets.
	Socket SocketConfig `yaml:"socket"`
	// Spin is how long an idle worker busy-polls before sleeping
	// (default 0: sleep in poll(2) as soon as its rx rings are empty;
	// "-1ns": never sleep). Spin only on CPUs nothing else needs.
	Spin time.Duration `yaml:"spin"`
	// WorkerPriority is the AF_XDP workers' SCHED_FIFO priority (default
	// 1; -1: normal scheduling). A woken worker runs at once, like the
	// softirq that fills its rings, instead of waiting behind a busy
	// task on its CPU while the ring fills.
	WorkerPriority int `yaml:"worker_priority"`
	// Idle is what an AF_XDP worker does when its rx rings are empty:
	// "poll" sleeps in poll(2) at once; "busy-poll" never sleeps and
	// polls its queues' NAPI from its own syscalls (SO_PREFER_BUSY_POLL),
	// only for workers with CPUs of their own; "auto" (default) chooses
	// busy-poll when every worker's CPU (cpus) is isolated (isolcpus or
	// nohz_full), else poll. The affinity plan never places workers on
	// isolated CPUs, so auto busy-polls only with cpus given.
	Idle string `yaml:"idle"`
	// Metrics is the Prometheus listen address (default 127.0.0.1:9470;
	// "off" to disable).
	Metrics string `yaml:"metrics"`
	// Control is the operator socket (default /run/xdprouter/xdprouter.sock).
	Control string `yaml:"control_socket"`
	// PinPath keeps the FIB and the program's maps on bpffs, so a
	// restarted daemon forwards at once with the table it had (default
	// none).
	PinPath string `yaml:"pin_path"`
	// StateDir keeps the affinity record (what the applied plan changed,
	// restored at stop or at the next start after a crash); it must
	// survive the daemon (default: the control socket's directory; the
	// unit uses /var/lib/xdprouter).
	StateDir string `yaml:"state_dir"`
	// FIB sizes the table (0: defaults fit a full Internet table).
	FIB FIBConfig `yaml:"fib"`
}

// Interface is one router port.
type Interface struct {
	Name   string `yaml:"name"`
	Engine string `yaml:"engine"` // xdp, afxdp or pass
	// Generic attaches XDP in generic (SKB) mode, for drivers without
	// native XDP.
	Generic bool `yaml:"generic"`
}

// SocketConfig sizes the AF_XDP sockets (zero: defaults).
type SocketConfig struct {
	Frames    int  `yaml:"frames"`
	FrameSize int  `yaml:"frame_size"`
	RingSize  int  `yaml:"ring_size"`
	Copy      bool `yaml:"copy"`
}

// FIBConfig sizes the FIB (zero: defaults).
type FIBConfig struct {
	// Nodes and leaves of each family's table (fib.Config).
	Nodes4   int `yaml:"nodes4"`
	Leaves4  int `yaml:"leaves4"`
	Nodes6   int `yaml:"nodes6"`
	Leaves6  int `yaml:"leaves6"`
	Nexthops int `yaml:"nexthops"`
}

// Defaults for the daemon's endpoints.
const (
	DefaultMetrics = "127.0.0.1:9470"
	DefaultControl = "/run/xdprouter/xdprouter.sock"
)

// LoadConfig reads, decodes (unknown fields are errors) and validates a
// YAML file.
func LoadConfig(path string) (Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("read config: %w", err)
	}
	return ParseConfig(b)
}

// ParseConfig decodes and validates YAML.
func ParseConfig(b []byte) (Config, error) {
	c, err := DecodeConfig(b)
	if err != nil {
		return Config{}, err
	}
	return c, c.Validate()
}

// DecodeConfig decodes YAML (unknown fields are errors) and fills in
// defaults, without validating: for callers that override fields first.
func DecodeConfig(b []byte) (Config, error) {
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		if strings.Contains(err.Error(), "groups4") || strings.Contains(err.Error(), "groups6") {
			err = fmt.Errorf("%w (the FIB's layout changed in 2026-12: fib.groups4/groups6 are now nodes4, leaves4, nodes6, leaves6, see docs/fib.md; the defaults hold a full table)", err)
		}
		return Config{}, fmt.Errorf("config: %w", err)
	}
	return c.WithDefaults(), nil
}

// WithDefaults returns a copy of c (slices included) with every unset
// field at its default.
func (c Config) WithDefaults() Config {
	// The daemon keeps its own copy: a caller editing its slices for the
	// next Reload must not change the running config behind its back.
	c.Interfaces = slices.Clone(c.Interfaces)
	c.CPUs = slices.Clone(c.CPUs)
	c.Housekeeping = slices.Clone(c.Housekeeping)
	if c.Table == 0 {
		c.Table = 254
	}
	if c.Metrics == "" {
		c.Metrics = DefaultMetrics
	}
	if c.Control == "" {
		c.Control = DefaultControl
	}
	for i := range c.Interfaces {
		if c.Interfaces[i].Engine == "" {
			c.Interfaces[i].Engine = "xdp"
		}
	}
	return c
}

// Validate reports every problem of the config at once, each naming its
// field.
func (c Config) Validate() error {
	var errs []error
	bad := func(field, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, a...)))
	}
	if len(c.Interfaces) == 0 {
		bad("interfaces", "none: list the router's ports")
	}
	seen := map[string]bool{}
	for i, ifc := range c.Interfaces {
		f := fmt.Sprintf("interfaces[%d]", i)
		switch {
		case ifc.Name == "":
			bad(f+".name", "empty")
		case len(ifc.Name) > 15:
			bad(f+".name", "%q is longer than 15 characters", ifc.Name)
		case seen[ifc.Name]:
			bad(f+".name", "%q listed twice", ifc.Name)
		}
		seen[ifc.Name] = true
		if _, err := xdp.ParseEngine(ifc.Engine); err != nil {
			bad(f+".engine", "%q: use xdp, afxdp or pass", ifc.Engine)
		}
	}
	if c.Table < 1 || c.Table > 0xffffffff {
		bad("table", "%d: a kernel table ID (254 is main)", c.Table)
	}
	n := runtime.NumCPU()
	for i, cpu := range c.CPUs {
		if cpu < 0 || cpu >= n {
			bad(fmt.Sprintf("cpus[%d]", i), "CPU %d: this machine has CPUs 0-%d", cpu, n-1)
		}
	}
	for i, cpu := range c.Housekeeping {
		if cpu < 0 || cpu >= n {
			bad(fmt.Sprintf("housekeeping_cpus[%d]", i), "CPU %d: this machine has CPUs 0-%d", cpu, n-1)
		} else if slices.Contains(c.CPUs, cpu) {
			bad(fmt.Sprintf("housekeeping_cpus[%d]", i), "CPU %d is also a worker CPU", cpu)
		}
	}
	if c.Queues < 0 || c.Queues > xdp.MaxQueues {
		bad("queues", "%d: between 1 and %d (0: one per queue)", c.Queues, xdp.MaxQueues)
	}
	switch c.Idle {
	case "", "auto", "poll", "busy-poll":
	default:
		bad("idle", "%q: auto, poll or busy-poll", c.Idle)
	}
	if c.Idle == "busy-poll" && c.Spin != 0 {
		bad("idle", "busy-poll never sleeps: spin (%v) says how long to spin before sleeping; set one", c.Spin)
	}
	if c.WorkerPriority < -1 || c.WorkerPriority > 99 {
		bad("worker_priority", "%d: a SCHED_FIFO priority 1-99 (0: the default, 1; -1: normal scheduling)", c.WorkerPriority)
	}
	if err := c.socketOptions().Validate(); err != nil {
		bad("socket", "%v", err)
	}
	if c.Metrics != "off" {
		if _, _, err := net.SplitHostPort(c.Metrics); err != nil {
			bad("metrics", "%q: host:port or off", c.Metrics)
		}
	}
	if c.Control == "" || c.Control[0] != '/' {
		bad("control_socket", "%q: an absolute path", c.Control)
	}
	if c.PinPath != "" && c.PinPath[0] != '/' {
		bad("pin_path", "%q: an absolute path on bpffs", c.PinPath)
	}
	for name, v := range map[string]int{"fib.nodes4": c.FIB.Nodes4, "fib.leaves4": c.FIB.Leaves4,
		"fib.nodes6": c.FIB.Nodes6, "fib.leaves6": c.FIB.Leaves6, "fib.nexthops": c.FIB.Nexthops} {
		if v < 0 {
			bad(name, "%d: not negative", v)
		}
	}
	return errors.Join(errs...)
}

// busyPoll resolves Idle for the workers' CPUs: "auto" busy-polls only
// when every worker has a CPU and every one is in isolated() (the host's
// isolcpus and nohz_full CPUs, read only then). Without configured CPUs
// the workers take q mod the CPUs, which shares them: poll.
func busyPoll(idle string, cpus []int, isolated func() []int) bool {
	switch idle {
	case "busy-poll":
		return true
	case "poll":
		return false
	}
	if len(cpus) == 0 {
		return false
	}
	iso := isolated()
	for _, c := range cpus {
		if !slices.Contains(iso, c) {
			return false
		}
	}
	return true
}

func (c Config) socketOptions() xsk.Options {
	return xsk.Options{Frames: c.Socket.Frames, FrameSize: c.Socket.FrameSize, RingSize: c.Socket.RingSize, Copy: c.Socket.Copy}
}

// engines maps interface names to their engine.
func (c Config) engines() map[string]xdp.Engine {
	m := map[string]xdp.Engine{}
	for _, ifc := range c.Interfaces {
		e, _ := xdp.ParseEngine(ifc.Engine)
		m[ifc.Name] = e
	}
	return m
}
