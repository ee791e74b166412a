package daemon

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xdprouter/xdprouter/control/affinity"
	"github.com/xdprouter/xdprouter/internal/netnsrun"
)

// affinityRecord is where the writes of an applied plan are kept until
// the daemon restores them: a daemon killed before it could restore
// leaves the file, and the next start restores it first.
func (c Config) affinityRecord() string {
	dir := c.StateDir
	if dir == "" {
		dir = filepath.Dir(c.Control)
	}
	// One per daemon, named after its socket's whole path.
	name := strings.ReplaceAll(strings.Trim(filepath.Clean(c.Control), "/"), "/", "_")
	return filepath.Join(dir, name+".affinity.json")
}

// inSysfs runs fn with root "/" showing the config's namespace's
// interfaces in /sys.
func inSysfs(ns string, fn func(root string) error) error {
	if ns == "" {
		return fn("/")
	}
	return netnsrun.DoSysfs(ns, func() error { return fn("/") })
}

// applyAffinity plans the configured interfaces onto CPUs (queue q, its
// IRQ and XPS on one CPU, RPS off, housekeeping CPUs left out), applies
// the plan, records it, and returns the worker CPUs the plan chose.
func (d *Daemon) applyAffinity(cfg Config) ([]int, error) {
	path := cfg.affinityRecord()
	var workers []int
	err := inSysfs(cfg.Namespace, func(root string) error {
		h, err := affinity.Discover(root)
		if err != nil {
			return err
		}
		var ifs []*affinity.Iface
		for _, ifc := range cfg.Interfaces {
			i, err := h.Iface(ifc.Name)
			if err != nil {
				return fmt.Errorf("affinity: %w", err)
			}
			ifs = append(ifs, i)
		}
		p, err := affinity.MakePlan(h, ifs, affinity.PlanOptions{CPUs: cfg.CPUs, Housekeeping: cfg.Housekeeping})
		if err != nil {
			return fmt.Errorf("affinity plan: %w", err)
		}
		for _, n := range p.Notes {
			slog.Warn("affinity", "note", n)
		}
		ws, err := p.Writes(h, ifs)
		if err != nil {
			return err
		}
		// The record goes to disk before the first write, so a crash in
		// between still leaves what restores the host.
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return err
		}
		if err := affinity.SaveRecord(path, ws); err != nil {
			return fmt.Errorf("save affinity record: %w", err)
		}
		done, err := affinity.Apply(root, ws)
		if err != nil {
			if !errors.Is(err, affinity.ErrNotRestored) {
				_ = os.Remove(path) // undone: nothing left to restore
			}
			return err
		}
		d.affinity = done
		for q := range cfg.queues(p) {
			workers = append(workers, p.WorkerCPU(q))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for _, w := range d.affinity {
		slog.Info("affinity applied", "what", w.What)
	}
	return workers, nil
}

// restoreLeftoverAffinity restores the record a killed daemon left,
// whatever this start's config says about affinity. A record that cannot
// be read stops the start: applying over it would lose the host's values.
func restoreLeftoverAffinity(cfg Config) error {
	path := cfg.affinityRecord()
	if fi, err := os.Stat(path); err == nil && fi.ModTime().Before(bootTime()) {
		// Written before this boot: the values it changed are gone with
		// the reboot (and IRQ numbers may differ now).
		slog.Info("ignoring an affinity record from before this boot", "record", path)
		return os.Remove(path)
	}
	old, err := affinity.LoadRecord(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil
	case err != nil:
		return fmt.Errorf("%w: restore it by hand (xdprouter affinity restore --record %s) or remove it", err, path)
	}
	if err := inSysfs(cfg.Namespace, func(root string) error { return affinity.Restore(root, old) }); err != nil {
		return fmt.Errorf("restore the affinity a killed daemon left (%s): %w", path, err)
	}
	_ = os.Remove(path)
	slog.Info("restored the affinity a killed daemon applied", "writes", len(old))
	return nil
}

// bootTime is when this system booted (btime in /proc/stat); zero if
// unknown, which keeps every record.
func bootTime() time.Time {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return time.Time{}
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "btime "); ok {
			if n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64); err == nil {
				return time.Unix(n, 0)
			}
		}
	}
	return time.Time{}
}

// restoreAffinity puts back what applyAffinity changed.
func (d *Daemon) restoreAffinity() error {
	if len(d.affinity) == 0 {
		return nil
	}
	err := inSysfs(d.cfg.Namespace, func(root string) error { return affinity.Restore(root, d.affinity) })
	if err == nil {
		d.affinity = nil
		_ = os.Remove(d.cfg.affinityRecord())
	}
	return err
}

// queues is how many worker CPUs the plan hands out: the configured
// count, or the most queues of any planned interface.
func (c Config) queues(p *affinity.Plan) int {
	if c.Queues > 0 {
		return c.Queues
	}
	// A CPU for every queue of the planned interfaces: the engine takes
	// as many as it runs workers, now or after a reload that adds afxdp
	// interfaces.
	n := 0
	for _, ip := range p.Ifaces {
		n = max(n, ip.Queues)
	}
	return n
}

// pinHousekeeping moves every thread of the process to the housekeeping
// CPUs (threads started later inherit it; the AF_XDP workers pin
// themselves) and returns the mask to restore.
func pinHousekeeping(cpus []int) (*unix.CPUSet, error) {
	if len(cpus) == 0 {
		return nil, nil
	}
	var old unix.CPUSet
	if err := unix.SchedGetaffinity(0, &old); err != nil {
		return nil, fmt.Errorf("housekeeping: %w", err)
	}
	var set unix.CPUSet
	for _, c := range cpus {
		set.Set(c)
	}
	if err := setAllThreads(&set); err != nil {
		_ = setAllThreads(&old)
		return nil, fmt.Errorf("housekeeping_cpus %s: %w", affinity.FormatList(cpus), err)
	}
	return &old, nil
}

func setAllThreads(set *unix.CPUSet) error {
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return err
	}
	var errs []error
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		if err := unix.SchedSetaffinity(tid, set); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("thread %d: %w", tid, err))
		}
	}
	return errors.Join(errs...)
}
