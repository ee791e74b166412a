// Package cpustat reads per-CPU time from /proc/stat and turns two readings
// into shares: how much of each CPU went to softirq, system, user and idle.
package cpustat

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// Times are one CPU's cumulative jiffies, in /proc/stat's column order.
type Times struct {
	CPU    int    `json:"cpu"`
	User   uint64 `json:"user"`
	Nice   uint64 `json:"nice"`
	System uint64 `json:"system"`
	Idle   uint64 `json:"idle"`
	IOWait uint64 `json:"iowait"`
	IRQ    uint64 `json:"irq"`
	Soft   uint64 `json:"softirq"`
	Steal  uint64 `json:"steal"`
}

func (t Times) total() uint64 {
	return t.User + t.Nice + t.System + t.Idle + t.IOWait + t.IRQ + t.Soft + t.Steal
}

// Read returns the per-CPU lines of /proc/stat.
func Read() ([]Times, error) {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return nil, fmt.Errorf("read cpu times: %w", err)
	}
	defer f.Close()
	return Parse(f)
}

// Parse reads the cpuN lines of a /proc/stat text.
func Parse(r io.Reader) ([]Times, error) {
	var out []Times
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 9 || !strings.HasPrefix(f[0], "cpu") || f[0] == "cpu" {
			continue
		}
		cpu, err := strconv.Atoi(f[0][3:])
		if err != nil {
			return nil, fmt.Errorf("/proc/stat line %q: %w", f[0], err)
		}
		var v [8]uint64
		for i := range v {
			if v[i], err = strconv.ParseUint(f[i+1], 10, 64); err != nil {
				return nil, fmt.Errorf("/proc/stat %s column %d: %w", f[0], i+1, err)
			}
		}
		out = append(out, Times{CPU: cpu, User: v[0], Nice: v[1], System: v[2], Idle: v[3],
			IOWait: v[4], IRQ: v[5], Soft: v[6], Steal: v[7]})
	}
	return out, sc.Err()
}

// Share is the fraction (0..1) of one CPU's time between two readings.
type Share struct {
	CPU     int     `json:"cpu"`
	SoftIRQ float64 `json:"softirq"`
	System  float64 `json:"system"`
	User    float64 `json:"user"` // user and nice
	IRQ     float64 `json:"irq"`
	Idle    float64 `json:"idle"` // idle and iowait
}

// Shares computes each CPU's shares from a and b (b later).
func Shares(a, b []Times) []Share {
	var out []Share
	for _, y := range b {
		for _, x := range a {
			if x.CPU != y.CPU {
				continue
			}
			tot := float64(y.total() - x.total())
			if tot <= 0 {
				break
			}
			out = append(out, Share{
				CPU:     y.CPU,
				SoftIRQ: float64(y.Soft-x.Soft) / tot,
				System:  float64(y.System-x.System) / tot,
				User:    float64(y.User+y.Nice-x.User-x.Nice) / tot,
				IRQ:     float64(y.IRQ-x.IRQ) / tot,
				Idle:    float64(y.Idle+y.IOWait-x.Idle-x.IOWait) / tot,
			})
		}
	}
	return out
}
