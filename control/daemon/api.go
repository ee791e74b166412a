package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"os"
	"sort"
	"strconv"
	"time"

	"github.com/xdprouter/xdprouter/control/kernelpolicy"
	"github.com/xdprouter/xdprouter/control/netlink"
	"github.com/xdprouter/xdprouter/dataplane/engine"
	"github.com/xdprouter/xdprouter/dataplane/fib"
	"github.com/xdprouter/xdprouter/dataplane/xdp"
	"github.com/xdprouter/xdprouter/internal/cpustat"
)

// Status is what `xdprouter status` shows.
type Status struct {
	PID        int               `json:"pid"`
	Started    time.Time         `json:"started"`
	Uptime     string            `json:"uptime"`
	Namespace  string            `json:"namespace,omitempty"`
	Table      int               `json:"table"`
	Interfaces []InterfaceStatus `json:"interfaces"`
	Workers    int               `json:"afxdp_workers"`
	WarmStart  bool              `json:"warm_start"` // FIB reused from bpffs pins
	// WorkerCPUs are the AF_XDP workers' CPUs, worker q on WorkerCPUs[q].
	WorkerCPUs []int `json:"worker_cpus,omitempty"`
	// Idle is what an idle worker does: poll, busy-poll, spin or
	// spin-then-poll (engine.Engine.Idle).
	Idle         string `json:"afxdp_idle,omitempty"`
	Housekeeping []int  `json:"housekeeping_cpus,omitempty"`
	// Affinity lists what the applied affinity plan changed.
	Affinity []string      `json:"affinity,omitempty"`
	FIB      fib.Stats     `json:"fib"`
	Mirror   netlink.Stats `json:"mirror"`
	// Policy says what the fast path honours natively and what goes to
	// the kernel, and why (firewall, tc, rules, sysctls).
	Policy kernelpolicy.Snapshot `json:"policy"`
}

// InterfaceStatus is one port.
type InterfaceStatus struct {
	Name    string `json:"name"`
	Ifindex int    `json:"ifindex"`
	Engine  string `json:"engine"`
}

// Stats is one reading of every counter: what `xdprouter stats` turns
// into rates and /metrics exports.
type Stats struct {
	At         time.Time                    `json:"at"`
	Interfaces map[string]map[string]uint64 `json:"interfaces"` // name -> XDP counter -> value
	Workers    []engine.WorkerStats         `json:"workers"`
	Mirror     netlink.Stats                `json:"mirror"`
	// InterfaceCPUs are each interface's XDP counters per CPU that saw
	// traffic: which CPU (queue, under the affinity plan) did the work.
	InterfaceCPUs map[string][]CPUCounters `json:"interface_cpus"`
	// CPUTimes are every CPU's cumulative time from /proc/stat.
	CPUTimes []cpustat.Times `json:"cpu_times"`
}

// CPUCounters are one interface's XDP counters on one CPU.
type CPUCounters struct {
	CPU       int    `json:"cpu"`
	RxPackets uint64 `json:"rx_packets"`
	RxBytes   uint64 `json:"rx_bytes"`
	Forwarded uint64 `json:"forwarded"` // in XDP or to the AF_XDP workers
	Passed    uint64 `json:"passed"`
	Dropped   uint64 `json:"dropped"`
}

// Status returns the daemon's state.
func (d *Daemon) Status() Status {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := Status{PID: os.Getpid(), Started: d.started, Uptime: time.Since(d.started).Round(time.Second).String(),
		Namespace: d.cfg.Namespace, Table: d.cfg.Table, WarmStart: d.warm}
	for _, ifc := range d.cfg.Interfaces {
		s.Interfaces = append(s.Interfaces, InterfaceStatus{Name: ifc.Name, Ifindex: d.ifindex[ifc.Name], Engine: ifc.Engine})
	}
	if d.eng != nil {
		s.Workers = d.eng.Workers()
		s.WorkerCPUs = d.cfg.CPUs
		s.Idle = d.eng.Idle()
	}
	s.Housekeeping = d.cfg.Housekeeping
	for _, w := range d.affinity {
		s.Affinity = append(s.Affinity, w.What)
	}
	if d.table != nil {
		s.FIB = d.table.Stats()
	}
	if d.mirror != nil {
		s.Mirror = d.mirror.Stats()
	}
	if d.policy != nil {
		s.Policy = d.policy.Snapshot()
	}
	return s
}

// Stats reads every counter.
func (d *Daemon) Stats() Stats {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := Stats{At: time.Now(), Interfaces: map[string]map[string]uint64{}, InterfaceCPUs: map[string][]CPUCounters{}}
	for _, ifc := range d.cfg.Interfaces {
		per, err := d.prog.CountersPerCPU(d.ifindex[ifc.Name])
		if err != nil {
			continue
		}
		var sum xdp.Counters
		for cpu, c := range per {
			for i := range sum {
				sum[i] += c[i]
			}
			if c[xdp.RxPackets] > 0 {
				s.InterfaceCPUs[ifc.Name] = append(s.InterfaceCPUs[ifc.Name], CPUCounters{CPU: cpu,
					RxPackets: c[xdp.RxPackets], RxBytes: c[xdp.RxBytes], Forwarded: c[xdp.Forwarded] + c[xdp.ToAFXDP],
					Passed: c.Passed(), Dropped: c.Dropped()})
			}
		}
		m := map[string]uint64{}
		for i, v := range sum {
			m[xdp.CounterNames[i]] = v
		}
		s.Interfaces[ifc.Name] = m
	}
	if t, err := cpustat.Read(); err == nil {
		s.CPUTimes = t
	}
	if d.eng != nil {
		s.Workers = d.eng.Stats()
	}
	if d.mirror != nil {
		s.Mirror = d.mirror.Stats()
	}
	return s
}

func (d *Daemon) handler() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, d.Status()) })
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, d.Stats()) })
	mux.HandleFunc("GET /routes", func(w http.ResponseWriter, r *http.Request) {
		var out RoutesReply
		err := d.mirrorCall(r.Context(), func(m *netlink.Mirror) error {
			out.Routes, out.Stats = m.Entries(), m.Stats()
			return nil
		})
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		writeJSON(w, out)
	})
	mux.HandleFunc("GET /routes/check", func(w http.ResponseWriter, r *http.Request) {
		sample, _ := strconv.Atoi(r.URL.Query().Get("sample"))
		var out CheckReply
		var ps []netip.Prefix
		err := d.mirrorCall(r.Context(), func(m *netlink.Mirror) error {
			for _, e := range m.Entries() {
				ps = append(ps, e.Prefix)
			}
			return nil
		})
		out.Of = len(ps)
		if sample > 0 && len(ps) > sample {
			rand.Shuffle(len(ps), func(i, j int) { ps[i], ps[j] = ps[j], ps[i] })
			ps = ps[:sample]
		}
		// A chunk at a time on the mirror's loop, so route and neighbour
		// changes keep flowing into the FIB while a full table is checked;
		// a client that goes away ends the check.
		const chunk = 256
		for i := 0; err == nil && i < len(ps); i += chunk {
			part := ps[i:min(i+chunk, len(ps))]
			err = d.mirrorCall(r.Context(), func(m *netlink.Mirror) error {
				diffs, err := m.Check(part)
				out.Differences = append(out.Differences, diffs...)
				return err
			})
			if err == nil {
				err = r.Context().Err()
			}
			out.Checked += len(part)
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		writeJSON(w, out)
	})
	mux.HandleFunc("GET /metrics", d.serveMetrics)
	return mux
}

// metricsHandler serves only /metrics: what the TCP listener exposes (the
// operator socket, mode 0600, serves everything).
func (d *Daemon) metricsHandler() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /metrics", d.serveMetrics)
	return mux
}

func (d *Daemon) serveMetrics(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4")
	WriteMetrics(w, d.Stats(), d.Status())
}

// RoutesReply is /routes: the FIB as the daemon's mirror installed it.
type RoutesReply struct {
	Routes []netlink.Entry `json:"routes"`
	Stats  netlink.Stats   `json:"stats"`
}

// CheckReply is /routes/check: the FIB's answers that differ from the
// kernel's own lookups, over Checked of Of prefixes.
type CheckReply struct {
	Checked     int                  `json:"checked"`
	Of          int                  `json:"of"`
	Differences []netlink.Difference `json:"differences"`
}

// mirrorCall runs fn on the mirror's goroutine (at most 30 s of waiting).
func (d *Daemon) mirrorCall(ctx context.Context, fn func(*netlink.Mirror) error) error {
	d.mu.Lock()
	m := d.mirror
	d.mu.Unlock()
	if m == nil {
		return errors.New("the netlink mirror is not running")
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var ferr error
	if err := m.Call(ctx, func() { ferr = fn(m) }); err != nil {
		return err
	}
	return ferr
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// WriteMetrics writes the Prometheus text exposition of a reading.
func WriteMetrics(w io.Writer, s Stats, st Status) {
	fmt.Fprintln(w, "# HELP xdprouter_xdp_packets_total XDP program counters per interface and counter (rx, forwarded, to_afxdp, pass_* reasons, drop_* reasons).")
	fmt.Fprintln(w, "# TYPE xdprouter_xdp_packets_total counter")
	names := make([]string, 0, len(s.Interfaces))
	for n := range s.Interfaces {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		for _, c := range xdp.CounterNames {
			fmt.Fprintf(w, "xdprouter_xdp_packets_total{interface=%q,counter=%q} %d\n", n, c, s.Interfaces[n][c])
		}
	}
	fmt.Fprintln(w, "# HELP xdprouter_worker_packets_total AF_XDP worker counters per queue (handoff: forwarded by the program's lookup).")
	fmt.Fprintln(w, "# TYPE xdprouter_worker_packets_total counter")
	for _, wk := range s.Workers {
		for k, v := range map[string]uint64{"rx": wk.RxPackets, "forwarded": wk.Forwarded, "handoff": wk.Handoff} {
			fmt.Fprintf(w, "xdprouter_worker_packets_total{queue=\"%d\",cpu=\"%d\",counter=%q} %d\n", wk.Queue, wk.CPU, k, v)
		}
		reasons := make([]string, 0, len(wk.Drops))
		for r := range wk.Drops {
			reasons = append(reasons, r)
		}
		sort.Strings(reasons)
		for _, r := range reasons {
			fmt.Fprintf(w, "xdprouter_worker_drops_total{queue=\"%d\",reason=%q} %d\n", wk.Queue, r, wk.Drops[r])
		}
		fmt.Fprintf(w, "xdprouter_worker_cpu_seconds_total{queue=\"%d\",mode=\"user\"} %g\n", wk.Queue, wk.UserTime.Seconds())
		fmt.Fprintf(w, "xdprouter_worker_cpu_seconds_total{queue=\"%d\",mode=\"system\"} %g\n", wk.Queue, wk.SystemTime.Seconds())
		for _, so := range wk.Sockets {
			l := fmt.Sprintf("ifindex=\"%d\",queue=\"%d\"", so.Ifindex, so.Queue)
			fmt.Fprintf(w, "xdprouter_xsk_packets_total{%s,dir=\"rx\"} %d\n", l, so.RxPackets)
			fmt.Fprintf(w, "xdprouter_xsk_packets_total{%s,dir=\"tx\"} %d\n", l, so.TxPackets)
			fmt.Fprintf(w, "xdprouter_xsk_kernel_drops_total{%s,reason=\"rx_ring_full\"} %d\n", l, so.Kernel.Rx_ring_full)
			fmt.Fprintf(w, "xdprouter_xsk_kernel_drops_total{%s,reason=\"rx_fill_ring_empty\"} %d\n", l, so.Kernel.Rx_fill_ring_empty_descs)
			fmt.Fprintf(w, "xdprouter_xsk_kernel_drops_total{%s,reason=\"rx_dropped\"} %d\n", l, so.Kernel.Rx_dropped)
		}
	}
	m := s.Mirror
	fmt.Fprintln(w, "# HELP xdprouter_mirror Netlink mirror: routes, nexthops, events, resyncs, errors.")
	for _, kv := range []struct {
		k string
		v uint64
	}{{"routes", uint64(m.Routes)}, {"fib_entries", uint64(m.FIBEntries)}, {"nexthops", uint64(m.Nexthops)}, {"neighbours", uint64(m.Neighbours)},
		{"events_total", m.Events}, {"resyncs_total", m.Resyncs}, {"errors_total", m.Errors}, {"route_writes_total", m.RoutesApplied}} {
		fmt.Fprintf(w, "xdprouter_mirror_%s %d\n", kv.k, kv.v)
	}
	f := st.FIB
	fmt.Fprintln(w, "# HELP xdprouter_fib FIB size: routes, nodes and leaves in use and their capacity (a full table refuses inserts), nexthops, ECMP groups, bytes mapped, bytes lookups touch.")
	fmt.Fprintf(w, "xdprouter_fib_routes{family=\"4\"} %d\nxdprouter_fib_routes{family=\"6\"} %d\n", f.Routes4, f.Routes6)
	fmt.Fprintf(w, "xdprouter_fib_nodes{family=\"4\"} %d\nxdprouter_fib_nodes{family=\"6\"} %d\n", f.Nodes4, f.Nodes6)
	fmt.Fprintf(w, "xdprouter_fib_nodes_capacity{family=\"4\"} %d\nxdprouter_fib_nodes_capacity{family=\"6\"} %d\n", f.Nodes4Of, f.Nodes6Of)
	fmt.Fprintf(w, "xdprouter_fib_leaves{family=\"4\"} %d\nxdprouter_fib_leaves{family=\"6\"} %d\n", f.Leaves4, f.Leaves6)
	fmt.Fprintf(w, "xdprouter_fib_leaves_capacity{family=\"4\"} %d\nxdprouter_fib_leaves_capacity{family=\"6\"} %d\n", f.Leaves4Of, f.Leaves6Of)
	fmt.Fprintf(w, "xdprouter_fib_results %d\nxdprouter_fib_results_capacity %d\n", f.Results, fib.MaxResults)
	fmt.Fprintf(w, "xdprouter_fib_nexthops %d\nxdprouter_fib_ecmp_groups %d\nxdprouter_fib_bytes %d\nxdprouter_fib_table_bytes %d\n", f.Nexthops, f.ECMPGroups, f.Bytes, f.TableBytes)
	fmt.Fprintln(w, "# HELP xdprouter_xdp_cpu_packets_total XDP program counters per interface and CPU (per queue under the affinity plan).")
	fmt.Fprintln(w, "# TYPE xdprouter_xdp_cpu_packets_total counter")
	for _, n := range names {
		for _, c := range s.InterfaceCPUs[n] {
			for _, kv := range []struct {
				k string
				v uint64
			}{{"rx", c.RxPackets}, {"forwarded", c.Forwarded}, {"passed", c.Passed}, {"dropped", c.Dropped}} {
				fmt.Fprintf(w, "xdprouter_xdp_cpu_packets_total{interface=%q,cpu=\"%d\",counter=%q} %d\n", n, c.CPU, kv.k, kv.v)
			}
		}
	}
	fmt.Fprintf(w, "xdprouter_up 1\nxdprouter_afxdp_workers %d\n", st.Workers)
}
