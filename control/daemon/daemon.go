package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	vnl "github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/xdprouter/xdprouter/control/affinity"
	"github.com/xdprouter/xdprouter/control/kernelpolicy"
	"github.com/xdprouter/xdprouter/control/netlink"
	"github.com/xdprouter/xdprouter/dataplane/engine"
	"github.com/xdprouter/xdprouter/dataplane/fib"
	"github.com/xdprouter/xdprouter/dataplane/xdp"
	"github.com/xdprouter/xdprouter/internal/netnsrun"
)

// Daemon is a running router.
type Daemon struct {
	mu      sync.Mutex
	cfg     Config
	started time.Time
	table   *fib.Table
	prog    *xdp.Program
	mirror  *netlink.Mirror
	policy  *kernelpolicy.Watcher
	eng     *engine.Engine
	ifindex map[string]int
	cancel  context.CancelFunc
	bg      sync.WaitGroup
	servers []*http.Server
	warm    bool // the FIB came back from pins: forwarded before the first sync
	// affinity is what the applied affinity plan wrote (Restore's record);
	// oldMask the process's CPU mask before housekeeping pinned it.
	affinity []affinity.Write
	oldMask  *unix.CPUSet
	// stopWatch ends the engine's link watch (rebuilds after a link
	// flap or a channel change) and waits for it.
	stopWatch func()
	lock      *instanceLock
	// undoing is set when Stop undoes a failed start: a warm start's
	// pins (a killed daemon's FIB and attachments) are then kept, so the
	// router forwards on as before the attempt.
	undoing bool
}

// stopEngine ends the engine's watch, then the engine.
func (d *Daemon) stopEngine() error {
	if d.stopWatch != nil {
		d.stopWatch()
		d.stopWatch = nil
	}
	if d.eng == nil {
		return nil
	}
	err := d.eng.Stop()
	d.eng = nil
	return err
}

// watchEngine rebuilds the engine's sockets on an interface that comes
// back up or changes its queue count, until stopEngine.
func (d *Daemon) watchEngine() {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	eng := d.eng
	go func() {
		defer close(done)
		if err := eng.Watch(ctx); err != nil && ctx.Err() == nil {
			slog.Error("AF_XDP link watch stopped", "err", err)
		}
	}()
	d.stopWatch = func() { cancel(); <-done }
}

// Start brings the router up: program in pass on every interface, FIB
// filled from the kernel, then the configured engines, then the operator
// socket and metrics. Any failure undoes what was done.
func Start(ctx context.Context, cfg Config) (d *Daemon, err error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	lock, err := lockInstance(cfg.Control, cfg.PinPath)
	if err != nil {
		return nil, err // touch nothing: it belongs to the running daemon
	}
	self := &Daemon{cfg: cfg, started: time.Now(), ifindex: map[string]int{}, lock: lock}
	d = self
	defer func() {
		if err != nil {
			// Undo on the daemon built so far (d itself is nil by now).
			self.undoing = true
			if serr := self.Stop(); serr != nil {
				slog.Warn("undo a failed start", "err", serr)
			}
		}
	}()
	if err := d.resolve(cfg); err != nil {
		return nil, err
	}
	// 0. What a killed daemon changed goes back first; then the control
	// plane on the housekeeping CPUs, the queues on theirs.
	if err := restoreLeftoverAffinity(cfg); err != nil {
		return nil, err
	}
	if d.oldMask, err = pinHousekeeping(cfg.Housekeeping); err != nil {
		return nil, err
	}
	if cfg.Affinity {
		workers, err := d.applyAffinity(cfg)
		if err != nil {
			return nil, err
		}
		if len(cfg.CPUs) == 0 {
			cfg.CPUs = workers
			d.cfg.CPUs = workers
		}
	}
	fc := fib.Config{Nodes4: cfg.FIB.Nodes4, Leaves4: cfg.FIB.Leaves4, Nodes6: cfg.FIB.Nodes6, Leaves6: cfg.FIB.Leaves6, Nexthops: cfg.FIB.Nexthops}
	if cfg.PinPath != "" {
		fc.PinPath = filepath.Join(cfg.PinPath, "fib")
	}
	if d.table, err = fib.New(fc); err != nil {
		return nil, fmt.Errorf("create FIB: %w", err)
	}
	d.warm = d.table.Reopened()
	po := xdp.Options{}
	if cfg.PinPath != "" {
		po.PinPath = filepath.Join(cfg.PinPath, "prog")
	}
	if d.prog, err = xdp.Load(d.table, po); err != nil {
		return nil, err
	}
	// The kernel's policy (forwarding switches, rp_filter, firewall, tc,
	// rules) is in the program before any interface forwards.
	served := make([]int, 0, len(d.ifindex))
	for _, ifc := range cfg.Interfaces {
		served = append(served, d.ifindex[ifc.Name])
	}
	if d.policy, err = kernelpolicy.NewWatcher(kernelpolicy.Config{Namespace: cfg.Namespace, Interfaces: served,
		Dataplane: d.prog, BypassFirewall: cfg.BypassFirewall, Logger: slog.Default()}); err != nil {
		return nil, fmt.Errorf("read the kernel's forwarding policy: %w", err)
	}
	// 1. Every interface in pass: the kernel forwards while we fill the FIB
	// (or, with a FIB kept on bpffs, the configured engines at once).
	err = netnsrun.Do(cfg.Namespace, func() error {
		for _, ifc := range cfg.Interfaces {
			e := xdp.EnginePass
			if d.warm {
				e = cfg.engines()[ifc.Name]
				if e == xdp.EngineAFXDP {
					e = xdp.EnginePass // until its workers run
				}
			}
			if err := d.prog.Attach(d.ifindex[ifc.Name], e, xdp.AttachOptions{Generic: ifc.Generic}); err != nil {
				return fmt.Errorf("attach to %s: %w", ifc.Name, err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	// Attachments an earlier process pinned on interfaces no longer
	// configured would forward on with a FIB nobody updates.
	if n, err := d.prog.DetachStale(); err != nil {
		return nil, err
	} else if n > 0 {
		slog.Warn("detached XDP attachments of interfaces no longer configured", "count", n)
	}
	// 2. The FIB from the kernel, then follow it.
	serve := map[int]bool{}
	for _, i := range d.ifindex {
		serve[i] = true
	}
	d.mirror, err = netlink.New(d.table, netlink.Config{Namespace: cfg.Namespace, Table: cfg.Table,
		Serve: func(ifindex int, _ string) bool { return serve[ifindex] }, Dataplane: d.prog})
	if err != nil {
		return nil, err
	}
	t0 := time.Now()
	if err := d.mirror.Sync(); err != nil {
		return nil, fmt.Errorf("initial FIB sync: %w", err)
	}
	slog.Info("FIB synced from the kernel", "table", cfg.Table, "took", time.Since(t0).Round(time.Millisecond), "warm", d.warm)
	bctx, cancel := context.WithCancel(context.Background())
	d.cancel = cancel
	d.bg.Add(1)
	// Not d: the named result is nil once a failed Start returns, and Stop
	// clears mirror, maybe before this goroutine runs.
	m, pw := d.mirror, d.policy
	go func() {
		defer self.bg.Done()
		if err := m.Run(bctx); err != nil {
			slog.Error("netlink mirror stopped", "err", err)
		}
	}()
	d.bg.Add(1)
	go func() {
		defer self.bg.Done()
		if err := pw.Run(bctx); err != nil {
			slog.Error("kernel policy watch stopped", "err", err)
		}
	}()
	// 3. Engines.
	if err := d.applyEngines(nil, cfg); err != nil {
		return nil, err
	}
	// 4. Operator socket and metrics.
	if err := d.serve(); err != nil {
		return nil, err
	}
	slog.Info("xdprouter running", "interfaces", len(cfg.Interfaces), "control", cfg.Control, "metrics", cfg.Metrics)
	return d, nil
}

// resolve finds every interface's ifindex, reporting all missing ones.
func (d *Daemon) resolve(cfg Config) error {
	return netnsrun.Do(cfg.Namespace, func() error {
		var errs []error
		for i, ifc := range cfg.Interfaces {
			l, err := vnl.LinkByName(ifc.Name)
			if err != nil {
				errs = append(errs, fmt.Errorf("interfaces[%d].name: %q: no such interface%s", i, ifc.Name, inNS(cfg.Namespace)))
				continue
			}
			d.ifindex[ifc.Name] = l.Attrs().Index
		}
		return errors.Join(errs...)
	})
}

func inNS(ns string) string {
	if ns == "" {
		return ""
	}
	return " in namespace " + ns
}

// applyEngines moves from old's engines to cfg's without a gap: an
// interface leaving afxdp switches first (the kernel-side engine takes
// over at once), the AF_XDP workers restart only when their set changed
// (meanwhile frames for afxdp interfaces go to the kernel, never
// dropped), and interfaces entering afxdp switch last, when their
// sockets exist.
func (d *Daemon) applyEngines(old *Config, cfg Config) error {
	want := cfg.engines()
	var before map[string]xdp.Engine
	if old != nil {
		before = old.engines()
	}
	var afxdp, others []int
	for _, ifc := range cfg.Interfaces {
		if want[ifc.Name] == xdp.EngineAFXDP {
			afxdp = append(afxdp, d.ifindex[ifc.Name])
		} else {
			others = append(others, d.ifindex[ifc.Name])
		}
	}
	// Leaving afxdp, or not involving it: switch now.
	for _, ifc := range cfg.Interfaces {
		if e := want[ifc.Name]; e != xdp.EngineAFXDP {
			if err := d.prog.SetEngine(d.ifindex[ifc.Name], e); err != nil {
				return err
			}
		}
	}
	restart := old == nil || (d.eng == nil && len(afxdp) > 0) || // a failed reload stopped them
		!slices.Equal(afxdpNames(*old), afxdpNames(cfg)) ||
		!slices.Equal(old.CPUs, cfg.CPUs) || old.Queues != cfg.Queues || old.Socket != cfg.Socket || old.Spin != cfg.Spin ||
		old.WorkerPriority != cfg.WorkerPriority || old.Idle != cfg.Idle
	if restart {
		if err := d.stopEngine(); err != nil {
			slog.Warn("stop AF_XDP engine", "err", err)
		}
		if len(afxdp) > 0 {
			eng, err := engine.Start(engine.Config{Namespace: cfg.Namespace, Program: d.prog, Table: d.table,
				Interfaces: afxdp, Egress: others, Queues: cfg.Queues, CPUs: cfg.CPUs,
				Socket: cfg.socketOptions(), Spin: cfg.Spin, Priority: cfg.WorkerPriority,
				BusyPoll: busyPoll(cfg.Idle, cfg.CPUs, hostIsolated), Logger: slog.Default()})
			if err != nil {
				return fmt.Errorf("start AF_XDP engine: %w", err)
			}
			d.eng = eng
			d.watchEngine()
		}
	}
	for _, ifc := range cfg.Interfaces {
		if want[ifc.Name] == xdp.EngineAFXDP {
			if err := d.prog.SetEngine(d.ifindex[ifc.Name], xdp.EngineAFXDP); err != nil {
				return err
			}
		}
	}
	for _, ifc := range cfg.Interfaces {
		if before == nil || before[ifc.Name] != want[ifc.Name] {
			slog.Info("engine set", "interface", ifc.Name, "engine", want[ifc.Name])
		}
	}
	return nil
}

func afxdpNames(c Config) []string {
	var n []string
	for _, ifc := range c.Interfaces {
		if ifc.Engine == "afxdp" {
			n = append(n, ifc.Name)
		}
	}
	return n
}

// Reload applies a new configuration: engines, workers and their sizes.
// The interface set, namespace, table, endpoints and pins need a restart.
func (d *Daemon) Reload(cfg Config) error {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	var errs []error
	names := func(c Config) []string {
		var n []string
		for _, ifc := range c.Interfaces {
			n = append(n, ifc.Name)
		}
		return n
	}
	if !slices.Equal(names(cfg), names(d.cfg)) {
		errs = append(errs, errors.New("interfaces: the set of interfaces changed: restart the daemon"))
	}
	if cfg.Namespace != d.cfg.Namespace || cfg.Table != d.cfg.Table || cfg.Metrics != d.cfg.Metrics ||
		cfg.Control != d.cfg.Control || cfg.PinPath != d.cfg.PinPath || cfg.StateDir != d.cfg.StateDir || cfg.FIB != d.cfg.FIB ||
		cfg.Affinity != d.cfg.Affinity || !slices.Equal(cfg.Housekeeping, d.cfg.Housekeeping) {
		errs = append(errs, errors.New("namespace, table, metrics, control_socket, pin_path, state_dir, fib, affinity and housekeeping_cpus need a restart"))
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	if d.cfg.Affinity && len(cfg.CPUs) == 0 {
		cfg.CPUs = d.cfg.CPUs // the plan's, chosen at start
	}
	old := d.cfg
	if err := d.applyEngines(&old, cfg); err != nil {
		return err
	}
	if d.policy != nil && cfg.BypassFirewall != old.BypassFirewall {
		d.policy.SetBypass(cfg.BypassFirewall)
		slog.Warn("bypass_firewall changed", "bypass_firewall", cfg.BypassFirewall)
	}
	d.cfg = cfg
	slog.Info("configuration reloaded")
	return nil
}

// Stop shuts down in reverse: endpoints, every interface to pass, the
// workers, the mirror, then detaches and frees (pins removed: the host is
// left as found).
func (d *Daemon) Stop() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.undoing && d.warm {
		return d.releaseKeepingPins()
	}
	errs := []error{d.stopEndpoints()}
	if d.prog != nil {
		for _, i := range d.ifindex {
			_ = d.prog.SetEngine(i, xdp.EnginePass)
		}
	}
	errs = append(errs, d.stopWorkersAndMirror())
	if d.prog != nil {
		errs = append(errs, netnsrun.Do(d.cfg.Namespace, func() error {
			var errs []error
			for name, i := range d.ifindex {
				if err := d.prog.Detach(i); err != nil {
					errs = append(errs, fmt.Errorf("detach from %s: %w", name, err))
				}
			}
			return errors.Join(errs...)
		}))
		if d.cfg.PinPath != "" {
			_, err := d.prog.DetachStale()
			errs = append(errs, err, d.prog.Unpin())
		}
		errs = append(errs, d.prog.Close())
		d.prog = nil
	}
	if d.table != nil {
		if d.cfg.PinPath != "" {
			errs = append(errs, d.table.Unpin())
			_ = os.Remove(filepath.Join(d.cfg.PinPath, "fib"))
			_ = os.Remove(filepath.Join(d.cfg.PinPath, "prog"))
		}
		errs = append(errs, d.table.Close())
		d.table = nil
	}
	if d.cfg.PinPath != "" {
		_ = os.Remove(d.cfg.PinPath) // only if empty: made by the lock, or left by us
	}
	errs = append(errs, d.restoreHost())
	return errors.Join(errs...)
}

// Handoff exits for a successor without a gap (an upgrade): the workers
// stop (their interfaces pass to the kernel), the mirror stops, and the
// process lets go of everything while the pinned FIB, maps and XDP
// attachments keep forwarding and the affinity stays applied, its record
// on disk for the next start, which takes all of it over. It needs
// pin_path; without it, it is Stop.
func (d *Daemon) Handoff() error {
	d.mu.Lock()
	pinned := d.cfg.PinPath != "" && d.prog != nil
	d.mu.Unlock()
	if !pinned {
		return d.Stop()
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, ifc := range d.cfg.Interfaces {
		if ifc.Engine == "afxdp" {
			_ = d.prog.SetEngine(d.ifindex[ifc.Name], xdp.EnginePass) // its sockets go with us
		}
	}
	errs := []error{d.stopEndpoints(), d.stopWorkersAndMirror(), d.prog.Release(), d.table.Close()}
	d.prog, d.table = nil, nil
	d.affinity = nil // applied and recorded: the next start restores it
	if d.oldMask != nil {
		errs = append(errs, setAllThreads(d.oldMask))
		d.oldMask = nil
	}
	d.lock.release()
	d.lock = nil
	slog.Info("handed off: XDP keeps forwarding with the pinned FIB until the next start takes over", "pin_path", d.cfg.PinPath)
	return errors.Join(errs...)
}

// releaseKeepingPins undoes a failed warm start: everything this process
// opened is closed, but the pinned FIB, maps and attachments stay as the
// killed daemon left them (still forwarding), for the next start.
func (d *Daemon) releaseKeepingPins() error {
	errs := []error{d.stopEndpoints(), d.stopWorkersAndMirror()}
	if d.prog != nil {
		errs = append(errs, d.prog.Release())
		d.prog = nil
	}
	if d.table != nil {
		errs = append(errs, d.table.Close())
		d.table = nil
	}
	errs = append(errs, d.restoreHost())
	slog.Warn("start failed: the pinned state of the earlier daemon is kept, and forwards as it did; if the failure repeats, stop the unit and remove pin_path",
		"pin_path", d.cfg.PinPath)
	return errors.Join(errs...)
}

// stopEndpoints closes the operator socket and the metrics listener.
func (d *Daemon) stopEndpoints() error {
	var errs []error
	for _, s := range d.servers {
		errs = append(errs, s.Close())
	}
	d.servers = nil
	if d.cfg.Control != "" && !(d.undoing && d.warm) {
		_ = os.Remove(d.cfg.Control)
	}
	return errors.Join(errs...)
}

// hostIsolated is the host's isolated CPUs (isolcpus, nohz_full); none
// when they cannot be read.
func hostIsolated() []int {
	h, err := affinity.Discover("/")
	if err != nil {
		return nil
	}
	return slices.Concat(h.Isolated, h.NoHZFull)
}

// stopWorkersAndMirror stops the AF_XDP workers and the netlink mirror.
func (d *Daemon) stopWorkersAndMirror() error {
	errs := []error{d.stopEngine()}
	if d.cancel != nil {
		d.cancel()
		d.bg.Wait()
		d.cancel = nil
	}
	if d.mirror != nil {
		errs = append(errs, d.mirror.Close())
		d.mirror = nil
	}
	if d.policy != nil {
		errs = append(errs, d.policy.Close())
		d.policy = nil
	}
	return errors.Join(errs...)
}

// restoreHost puts back the affinity and the process's CPU mask, then
// lets go of the instance locks: last, so no other daemon starts before
// the host is as found.
func (d *Daemon) restoreHost() error {
	errs := []error{d.restoreAffinity()}
	if d.oldMask != nil {
		errs = append(errs, setAllThreads(d.oldMask))
		d.oldMask = nil
	}
	d.lock.release()
	d.lock = nil
	return errors.Join(errs...)
}

// serve starts the operator socket (mode 0600) and the metrics listener.
func (d *Daemon) serve() error {
	mux := d.handler()
	if err := os.MkdirAll(filepath.Dir(d.cfg.Control), 0o755); err != nil {
		return fmt.Errorf("control socket directory: %w", err)
	}
	_ = os.Remove(d.cfg.Control) // a stale socket of a killed daemon
	ln, err := net.Listen("unix", d.cfg.Control)
	if err != nil {
		return fmt.Errorf("control socket %s: %w", d.cfg.Control, err)
	}
	if err := os.Chmod(d.cfg.Control, 0o600); err != nil {
		ln.Close()
		return fmt.Errorf("control socket %s: %w", d.cfg.Control, err)
	}
	s := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	d.servers = append(d.servers, s)
	go s.Serve(ln)
	if d.cfg.Metrics != "off" {
		ml, err := net.Listen("tcp", d.cfg.Metrics)
		if err != nil {
			return fmt.Errorf("metrics on %s: %w", d.cfg.Metrics, err)
		}
		ms := &http.Server{Handler: d.metricsHandler(), ReadHeaderTimeout: 5 * time.Second}
		d.servers = append(d.servers, ms)
		go ms.Serve(ml)
	}
	return nil
}
