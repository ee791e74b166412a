package affinity

import (
	"errors"
	"fmt"
	"slices"
)

// PlanOptions choose the CPUs; zero fields take defaults.
type PlanOptions struct {
	// CPUs to use. Default: the online CPUs on the NIC's NUMA node (all
	// when it has none), one thread per physical core, without isolated
	// CPUs.
	CPUs []int
	// Housekeeping CPUs are left out of the default set (userland, the
	// control plane), as the router text freed CPU 0.
	Housekeeping []int
	// ReduceQueues sets each interface's queue count to the CPU count
	// when it has more, as the router text did with its patched igb.
	ReduceQueues bool
}

// QueuePlan places one queue.
type QueuePlan struct {
	Queue int
	CPU   int
	IRQs  []int // the queue's IRQs (rx, tx or both) go to CPU
}

// IfacePlan is one interface's part of a plan.
type IfacePlan struct {
	Name   string
	Queues int // queue count to run with
	Assign []QueuePlan
	// XPS maps tx queue q to the CPUs that transmit on it: {plan[q]}.
	XPS map[int][]int
	// RPS maps rx queue to the CPUs it spreads to; empty means off.
	RPS map[int][]int
}

// Plan is where every queue, IRQ and worker goes: worker q runs on the
// CPU of queue q.
type Plan struct {
	CPUs   []int
	Ifaces []IfacePlan
	Notes  []string
}

// WorkerCPU returns the CPU of worker (queue) q.
func (p *Plan) WorkerCPU(q int) int { return p.CPUs[q%len(p.CPUs)] }

// ErrNoCPUs means the CPU choice left nothing to run on.
var ErrNoCPUs = errors.New("no CPU left for the dataplane")

// MakePlan assigns queue q of every interface, its IRQs and its XPS mask
// to CPU plan[q] (queues beyond the CPU count wrap around). RPS stays off
// when hardware queues cover the CPUs; a single-queue NIC gets RPS over
// the plan's CPUs that accept it (not isolated ones, which the kernel
// refuses).
func MakePlan(h *Host, ifs []*Iface, o PlanOptions) (*Plan, error) {
	p := &Plan{}
	if len(o.CPUs) > 0 {
		for _, c := range o.CPUs {
			if _, ok := h.CPU(c); !ok {
				return nil, fmt.Errorf("cpu %d is not online (online: %s)", c, FormatList(h.Online()))
			}
		}
		p.CPUs = slices.Clone(o.CPUs)
	} else {
		node := -1
		for _, ifc := range ifs {
			if ifc.Node >= 0 {
				node = ifc.Node
				break
			}
		}
		seen := map[int]bool{} // (package, core): one thread per core
		for _, c := range h.CPUs {
			if c.Isolated || slices.Contains(o.Housekeeping, c.ID) || (node >= 0 && c.Node != node) {
				continue
			}
			key := c.Package<<16 | c.Core
			if seen[key] {
				continue
			}
			seen[key] = true
			p.CPUs = append(p.CPUs, c.ID)
		}
		if len(h.Isolated) > 0 {
			p.Notes = append(p.Notes, fmt.Sprintf("isolated CPUs %s left out (RPS masks there are refused by the kernel)", FormatList(h.Isolated)))
		}
	}
	if len(p.CPUs) == 0 {
		return nil, ErrNoCPUs
	}
	if h.IRQBalance {
		p.Notes = append(p.Notes, fmt.Sprintf("irqbalance is running and would move these IRQs: stop it or ban CPUs %s (IRQBALANCE_BANNED_CPULIST)", FormatList(p.CPUs)))
	}
	for _, ifc := range ifs {
		ip := IfacePlan{Name: ifc.Name, Queues: max(ifc.RxQueues, ifc.TxQueues), XPS: map[int][]int{}, RPS: map[int][]int{}}
		if o.ReduceQueues && ip.Queues > len(p.CPUs) {
			ip.Queues = len(p.CPUs)
			p.Notes = append(p.Notes, fmt.Sprintf("%s: %d queues reduced to %d, one per CPU", ifc.Name, max(ifc.RxQueues, ifc.TxQueues), ip.Queues))
		}
		for q := range ip.Queues {
			qp := QueuePlan{Queue: q, CPU: p.WorkerCPU(q)}
			for _, irq := range ifc.IRQs {
				if irq.Queue == q {
					qp.IRQs = append(qp.IRQs, irq.IRQ)
				}
			}
			ip.Assign = append(ip.Assign, qp)
			if q < ifc.TxQueues {
				ip.XPS[q] = []int{qp.CPU}
			}
		}
		if ifc.RxQueues == 1 && len(p.CPUs) > 1 {
			var rps []int
			for _, c := range p.CPUs {
				if cpu, _ := h.CPU(c); !cpu.Isolated {
					rps = append(rps, c)
				}
			}
			ip.RPS[0] = rps
			p.Notes = append(p.Notes, fmt.Sprintf("%s has one rx queue: RPS spreads it over CPUs %s", ifc.Name, FormatList(rps)))
		}
		p.Ifaces = append(p.Ifaces, ip)
	}
	return p, nil
}
