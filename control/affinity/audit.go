package affinity

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/safchain/ethtool"
)

// Severity grades a finding.
type Severity string

// Severities: a problem makes `xdprouter check` exit non-zero.
const (
	OK      Severity = "ok"
	Warn    Severity = "warn"
	Problem Severity = "problem"
)

// Finding is one audit check: what was read, and what to do about it.
type Finding struct {
	Check    string   `json:"check"`
	Severity Severity `json:"severity"`
	Reading  string   `json:"reading"`
	Fix      string   `json:"fix,omitempty"`
}

// Softnet is one CPU's /proc/net/softnet_stat line.
type Softnet struct {
	CPU         int
	Processed   uint64
	Dropped     uint64 // backlog full (netdev_max_backlog)
	TimeSqueeze uint64 // NAPI ran out of budget or time
}

// ReadSoftnet reads /proc/net/softnet_stat below the root.
func (h *Host) ReadSoftnet() ([]Softnet, error) {
	b, err := os.ReadFile(h.path("proc/net/softnet_stat"))
	if err != nil {
		return nil, fmt.Errorf("read softnet_stat: %w", err)
	}
	var out []Softnet
	for i, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.Fields(line)
		if len(f) < 3 {
			continue
		}
		v := make([]uint64, len(f))
		for k := range f {
			v[k], _ = strconv.ParseUint(f[k], 16, 64)
		}
		s := Softnet{CPU: i, Processed: v[0], Dropped: v[1], TimeSqueeze: v[2]}
		if len(v) >= 13 {
			s.CPU = int(v[12]) // the CPU index, on kernels that print it
		}
		out = append(out, s)
	}
	return out, nil
}

// AuditOptions control an audit.
type AuditOptions struct {
	// Interval between two softnet_stat readings; 0 reads once and judges
	// the counters since boot (recorded trees).
	Interval time.Duration
	// Ethtool reads ring sizes and coalescing with ethtool ioctls (real
	// interfaces of the caller's namespace only).
	Ethtool bool
}

// Audit runs the tuning guide's checks on the host, its interfaces and a
// plan (nil: the default plan).
func Audit(h *Host, ifs []*Iface, p *Plan, o AuditOptions) ([]Finding, error) {
	var out []Finding
	add := func(check string, sev Severity, reading, fix string) {
		out = append(out, Finding{check, sev, reading, fix})
	}
	if p == nil {
		var err error
		if p, err = MakePlan(h, ifs, PlanOptions{}); err != nil {
			return nil, err
		}
	}

	// softnet_stat: drops and time squeeze, per CPU.
	s0, err := h.ReadSoftnet()
	if err != nil {
		return nil, err
	}
	s1 := s0
	span := "since boot"
	if o.Interval > 0 {
		time.Sleep(o.Interval)
		if s1, err = h.ReadSoftnet(); err != nil {
			return nil, err
		}
		span = "in " + o.Interval.String()
		for i := range s1 {
			if i < len(s0) {
				s1[i].Dropped -= s0[i].Dropped
				s1[i].TimeSqueeze -= s0[i].TimeSqueeze
				s1[i].Processed -= s0[i].Processed
			}
		}
	}
	var drops, squeezes []string
	for _, s := range s1 {
		if s.Dropped > 0 {
			drops = append(drops, fmt.Sprintf("cpu%d %d", s.CPU, s.Dropped))
		}
		if s.TimeSqueeze > 0 {
			squeezes = append(squeezes, fmt.Sprintf("cpu%d %d", s.CPU, s.TimeSqueeze))
		}
	}
	backlog := h.sysctl("net/core/netdev_max_backlog")
	budget, usecs := h.sysctl("net/core/netdev_budget"), h.sysctl("net/core/netdev_budget_usecs")
	if len(drops) > 0 {
		add("softnet drops", Problem, fmt.Sprintf("backlog drops %s: %s (netdev_max_backlog %s)", span, strings.Join(drops, ", "), backlog),
			"raise net.core.netdev_max_backlog (e.g. 10000) and spread the load: xdprouter affinity apply")
	} else {
		add("softnet drops", OK, "no backlog drops "+span, "")
	}
	if len(squeezes) > 0 {
		add("time squeeze", Warn, fmt.Sprintf("NAPI ran out of budget %s: %s (netdev_budget %s, netdev_budget_usecs %s)", span, strings.Join(squeezes, ", "), budget, usecs),
			"raise net.core.netdev_budget (e.g. 600) and net.core.netdev_budget_usecs (e.g. 8000)")
	} else {
		add("time squeeze", OK, "NAPI never ran out of budget "+span, "")
	}
	add("napi weights", OK, fmt.Sprintf("netdev_budget %s, netdev_budget_usecs %s, dev_weight %s, netdev_max_backlog %s",
		budget, usecs, h.sysctl("net/core/dev_weight"), backlog), "")

	// IRQ placement.
	for i, ifc := range ifs {
		if len(ifc.IRQs) == 0 {
			add(ifc.Name+" irqs", Warn, "no queue IRQ found in /proc/interrupts", "check the driver's IRQ names; RPS is the fallback for such NICs")
			continue
		}
		on := map[int]bool{}
		for _, irq := range ifc.IRQs {
			cpus := irq.Effective
			if len(cpus) == 0 {
				cpus = irq.Affinity
			}
			if len(cpus) == 1 {
				on[cpus[0]] = true
			} else {
				on[-1] = true
			}
		}
		if len(ifc.IRQs) > 1 && len(on) == 1 && !on[-1] && len(p.CPUs) > 1 {
			var c int
			for k := range on {
				c = k
			}
			add(ifc.Name+" irqs", Problem, fmt.Sprintf("all %d queue IRQs on cpu%d: one core does all the work", len(ifc.IRQs), c),
				"xdprouter affinity apply (queue q, its IRQ and XPS on CPU plan[q])")
		}
		var off []string
		for _, a := range p.Ifaces[i].Assign {
			for _, irq := range ifc.IRQs {
				if irq.Queue != a.Queue {
					continue
				}
				cur := irq.Effective
				if len(cur) == 0 {
					cur = irq.Affinity
				}
				if !slices.Equal(cur, []int{a.CPU}) {
					off = append(off, fmt.Sprintf("%s on %s (worker cpu%d)", irq.Name, FormatList(cur), a.CPU))
				}
			}
		}
		if len(off) > 0 {
			add(ifc.Name+" queue cpus", Warn, fmt.Sprintf("%d queue IRQs off their worker's CPU: %s", len(off), strings.Join(firstN(off, 4), "; ")),
				"xdprouter affinity apply")
		} else {
			add(ifc.Name+" queue cpus", OK, "every queue IRQ on its worker's CPU", "")
		}
		if ifc.Node >= 0 {
			var remote []int
			for _, c := range p.CPUs {
				if cpu, _ := h.CPU(c); cpu.Node != ifc.Node {
					remote = append(remote, c)
				}
			}
			if len(remote) > 0 {
				add(ifc.Name+" numa", Warn, fmt.Sprintf("CPUs %s are not on the NIC's node %d", FormatList(remote), ifc.Node),
					"use CPUs of the NIC's node (--cpus)")
			}
		}
		if o.Ethtool {
			out = append(out, ethtoolFindings(ifc.Name)...)
		}
	}
	var shared []string
	for _, c := range p.CPUs {
		cpu, _ := h.CPU(c)
		for _, s := range cpu.Siblings {
			if s > c && slices.Contains(p.CPUs, s) {
				shared = append(shared, fmt.Sprintf("%d+%d", c, s))
			}
		}
	}
	if len(shared) > 0 {
		add("hyper-threads", Warn, "the plan puts queues on both threads of cores "+strings.Join(shared, ", "),
			"one thread per physical core (the router text disabled HT for this)")
	}
	if h.IRQBalance {
		add("irqbalance", Warn, fmt.Sprintf("irqbalance runs (banned CPUs: %s) and will move IRQs the plan places", orNone(h.Banned)),
			fmt.Sprintf("stop it (systemctl disable --now irqbalance) or ban CPUs %s (IRQBALANCE_BANNED_CPULIST)", FormatList(p.CPUs)))
	} else {
		add("irqbalance", OK, "not running", "")
	}
	return out, nil
}

// ethtoolFindings reads ring sizes and interrupt coalescing.
func ethtoolFindings(name string) []Finding {
	e, err := ethtool.NewEthtool()
	if err != nil {
		return []Finding{{Check: name + " rings", Severity: Warn, Reading: "ethtool: " + err.Error()}}
	}
	defer e.Close()
	var out []Finding
	if r, err := e.GetRing(name); err != nil {
		out = append(out, Finding{Check: name + " rings", Severity: OK, Reading: "ring sizes not reported by the driver"})
	} else if r.RxMaxPending > 0 && r.RxPending < r.RxMaxPending {
		out = append(out, Finding{Check: name + " rings", Severity: Warn,
			Reading: fmt.Sprintf("rx ring %d of %d, tx ring %d of %d", r.RxPending, r.RxMaxPending, r.TxPending, r.TxMaxPending),
			Fix:     fmt.Sprintf("ethtool -G %s rx %d tx %d", name, r.RxMaxPending, r.TxMaxPending)})
	} else {
		out = append(out, Finding{Check: name + " rings", Severity: OK, Reading: fmt.Sprintf("rx ring %d of %d", r.RxPending, r.RxMaxPending)})
	}
	if c, err := e.GetCoalesce(name); err == nil {
		out = append(out, Finding{Check: name + " coalescing", Severity: OK,
			Reading: fmt.Sprintf("rx-usecs %d rx-frames %d adaptive-rx %d", c.RxCoalesceUsecs, c.RxMaxCoalescedFrames, c.UseAdaptiveRxCoalesce)})
	}
	return out
}

func (h *Host) sysctl(key string) string {
	s, err := readTrim(h.path("proc/sys/" + key))
	if err != nil {
		return "?"
	}
	return s
}

func firstN(s []string, n int) []string {
	if len(s) <= n {
		return s
	}
	return append(s[:n:n], fmt.Sprintf("and %d more", len(s)-n))
}

func orNone(c []int) string {
	if len(c) == 0 {
		return "none"
	}
	return FormatList(c)
}

// Failed reports whether any finding is a problem.
func Failed(fs []Finding) bool {
	return slices.ContainsFunc(fs, func(f Finding) bool { return f.Severity == Problem })
}
