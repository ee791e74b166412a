package engine

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// WorkerStats are one worker's counters since start.
type WorkerStats struct {
	Queue          int               `json:"queue"`
	CPU            int               `json:"cpu"`
	TID            int               `json:"tid"`
	RxPackets      uint64            `json:"rx_packets"`
	RxBytes        uint64            `json:"rx_bytes"`
	Forwarded      uint64            `json:"forwarded"`
	ForwardedBytes uint64            `json:"forwarded_bytes"`
	Drops          map[string]uint64 `json:"drops"`
	// Handoff counts frames forwarded by the nexthop the XDP program's
	// lookup handed over (unchanged since): no second lookup.
	Handoff uint64 `json:"handoff"`
	// Kicks are sendto calls (copy mode sends at most the socket's
	// TxBudget frames a call: 256 on Linux 6.17+, else 32),
	// KickErrors those that failed with something else than back-pressure.
	Kicks      uint64 `json:"kicks"`
	KickErrors uint64 `json:"kick_errors"`
	// Sleeps counts poll(2) waits of an idle worker; Rounds the rounds
	// that received frames.
	Sleeps uint64 `json:"sleeps"`
	Rounds uint64 `json:"rounds"`
	// WorkNs is time spent receiving, looking up, rewriting and copying;
	// KickNs time in sendto (the kernel's copy and transmit) and reaping.
	// Both are estimates: one round in 16 is timed.
	WorkNs uint64 `json:"work_ns"`
	KickNs uint64 `json:"kick_ns"`
	// CPUTime is the worker thread's user and system CPU time.
	UserTime   time.Duration `json:"user_ns"`
	SystemTime time.Duration `json:"system_ns"`
	Sockets    []SocketStats `json:"sockets"`
}

// Dropped sums the drops of every reason.
func (w WorkerStats) Dropped() uint64 {
	var n uint64
	for _, v := range w.Drops {
		n += v
	}
	return n
}

// SocketStats are one socket's counters.
type SocketStats struct {
	Ifindex   int    `json:"ifindex"`
	Queue     int    `json:"queue"`
	ZeroCopy  bool   `json:"zero_copy"`
	RxPackets uint64 `json:"rx_packets"`
	RxBytes   uint64 `json:"rx_bytes"`
	TxPackets uint64 `json:"tx_packets"` // sends completed
	// Kernel is XDP_STATISTICS: rx_dropped, rx_ring_full (the worker was
	// too slow), rx_fill_ring_empty_descs (no frame to receive into), ...
	Kernel unix.XDPStatistics `json:"kernel"`
}

// Stats returns every worker's counters (sockets included).
func (e *Engine) Stats() []WorkerStats {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]WorkerStats, len(e.workers))
	for q, w := range e.workers {
		s := WorkerStats{Queue: q, CPU: w.cpu, TID: int(w.tid.Load()),
			RxPackets: w.c.rx.Load(), RxBytes: w.c.rxBytes.Load(),
			Forwarded: w.c.forwarded.Load(), ForwardedBytes: w.c.forwardedBytes.Load(), Handoff: w.c.handoff.Load(),
			Kicks: w.c.kicks.Load(), KickErrors: w.c.kickErrors.Load(), Sleeps: w.c.sleeps.Load(), Rounds: w.c.rounds.Load(),
			WorkNs: w.c.workNs.Load(), KickNs: w.c.kickNs.Load(), Drops: map[string]uint64{}}
		for r := range numReasons {
			s.Drops[ReasonNames[r]] = w.c.drops[r].Load()
		}
		if s.TID != 0 {
			s.UserTime, s.SystemTime, _ = ThreadCPU(s.TID)
		}
		out[q] = s
	}
	ifs := make([]int, 0, len(e.ports))
	for ifindex := range e.ports {
		ifs = append(ifs, ifindex)
	}
	slices.Sort(ifs)
	for _, ifindex := range ifs {
		for q, p := range e.ports[ifindex] {
			if p == nil {
				continue
			}
			ss := SocketStats{Ifindex: ifindex, Queue: q, ZeroCopy: p.s.ZeroCopy,
				RxPackets: p.rx.Load(), RxBytes: p.rxBytes.Load(), TxPackets: p.tx.Load()}
			ss.Kernel, _ = p.s.KernelStats()
			out[q].Sockets = append(out[q].Sockets, ss)
		}
	}
	return out
}

// ThreadCPU reads a thread's user and system CPU time from
// /proc/self/task/TID/stat.
func ThreadCPU(tid int) (user, system time.Duration, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/self/task/%d/stat", tid))
	if err != nil {
		return 0, 0, err
	}
	// Fields after the command name (which may hold spaces) start at state.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("task %d stat: no command name", tid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, 0, fmt.Errorf("task %d stat: %d fields", tid, len(f))
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64) // utime, field 14
	st, err2 := strconv.ParseUint(f[12], 10, 64) // stime, field 15
	if err1 != nil || err2 != nil {
		return 0, 0, fmt.Errorf("task %d stat: bad times %q %q", tid, f[11], f[12])
	}
	const tick = time.Second / 100 // USER_HZ
	return time.Duration(ut) * tick, time.Duration(st) * tick, nil
}
