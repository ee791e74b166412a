package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/xdprouter/xdprouter/control/affinity"
	"github.com/xdprouter/xdprouter/control/daemon"
	"github.com/xdprouter/xdprouter/control/kernelpolicy"
	"github.com/xdprouter/xdprouter/dataplane/engine"
	"github.com/xdprouter/xdprouter/internal/cpustat"
)

// runFlags are the command line's overrides of the config file, for the
// common cases.
type runFlags struct {
	path                        string
	xdp, afxdp, pass            []string
	cpus, housekeeping          string
	affinity                    bool
	namespace, pinPath, metrics string
	socket, stateDir            string
	table                       int
}

// config reads the config file (none: start from an empty config when
// --config was not given and the default file does not exist) and applies
// the flags that were set. Interface flags, when any is set, replace the
// file's interface list.
func (f *runFlags) config(cmd *cobra.Command) (daemon.Config, error) {
	var cfg daemon.Config
	b, err := os.ReadFile(f.path)
	switch {
	case err == nil:
		if cfg, err = daemon.DecodeConfig(b); err != nil {
			return cfg, fmt.Errorf("%s: %w", f.path, err)
		}
	case os.IsNotExist(err) && !cmd.Flags().Changed("config"):
	default:
		return cfg, fmt.Errorf("read config: %w", err)
	}
	fl := cmd.Flags()
	if fl.Changed("xdp") || fl.Changed("afxdp") || fl.Changed("pass") {
		cfg.Interfaces = nil
		for _, set := range []struct {
			engine string
			names  []string
		}{{"xdp", f.xdp}, {"afxdp", f.afxdp}, {"pass", f.pass}} {
			for _, n := range set.names {
				cfg.Interfaces = append(cfg.Interfaces, daemon.Interface{Name: n, Engine: set.engine})
			}
		}
	}
	var errs []error
	list := func(flag, v string) []int {
		cpus, err := affinity.ParseList(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("--%s: %w", flag, err))
		}
		return cpus
	}
	if fl.Changed("cpus") {
		cfg.CPUs = list("cpus", f.cpus)
	}
	if fl.Changed("housekeeping-cpus") {
		cfg.Housekeeping = list("housekeeping-cpus", f.housekeeping)
	}
	if fl.Changed("affinity") {
		cfg.Affinity = f.affinity
	}
	for _, o := range []struct {
		flag string
		dst  *string
		v    string
	}{{"namespace", &cfg.Namespace, f.namespace}, {"pin-path", &cfg.PinPath, f.pinPath},
		{"metrics", &cfg.Metrics, f.metrics}, {"socket", &cfg.Control, f.socket}, {"state-dir", &cfg.StateDir, f.stateDir}} {
		if fl.Changed(o.flag) {
			*o.dst = o.v
		}
	}
	if fl.Changed("table") {
		cfg.Table = f.table
	}
	if len(errs) > 0 {
		return cfg, errors.Join(errs...)
	}
	cfg = cfg.WithDefaults()
	return cfg, cfg.Validate()
}

func newRunCmd() *cobra.Command { return newRunCmdWith(&runFlags{}) }

// newRunCmdWith is `xdprouter run` with its flags parsed into f.
func newRunCmdWith(f *runFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the router daemon with a YAML config",
		Long: `Loads the XDP program on every configured interface in "pass" (the kernel
forwards), fills the FIB from the kernel's routing table over netlink, then
switches each interface to its engine (xdp, afxdp or pass) and serves the
operator socket and Prometheus metrics. SIGHUP reloads the config (engines,
workers); SIGINT/SIGTERM shut down in reverse order and leave the host as
found; SIGUSR2 exits for an upgrade: with pin_path, XDP keeps forwarding
with the pinned FIB until the next start takes over. See docs/operator.md for the config file.

Flags override the file's fields; --xdp, --afxdp and --pass, when given,
replace its interface list. Without --config and with no file at the
default path, the flags are the whole config.`,
		Example: `  xdprouter run --config /etc/xdprouter/xdprouter.yaml
  xdprouter run --xdp eth1,eth2 --afxdp eth3 --affinity --housekeeping-cpus 0`,
		RunE: func(cmd *cobra.Command, args []string) error {
			slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})))
			cfg, err := f.config(cmd)
			if err != nil {
				return err
			}
			d, err := daemon.Start(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			hup := make(chan os.Signal, 1)
			signal.Notify(hup, syscall.SIGHUP)
			defer signal.Stop(hup)
			usr2 := make(chan os.Signal, 1)
			signal.Notify(usr2, syscall.SIGUSR2)
			defer signal.Stop(usr2)
			for {
				select {
				case <-cmd.Context().Done():
					slog.Info("shutting down")
					return d.Stop()
				case <-usr2:
					slog.Info("handing off to the next start")
					return d.Handoff()
				case <-hup:
					nc, err := f.config(cmd)
					if err == nil {
						err = d.Reload(nc)
					}
					if err != nil {
						slog.Error("reload refused, running config kept", "err", err)
					}
				}
			}
		},
	}
	fl := cmd.Flags()
	fl.StringVarP(&f.path, "config", "c", "/etc/xdprouter/xdprouter.yaml", "YAML configuration file")
	fl.StringSliceVar(&f.xdp, "xdp", nil, "interfaces with engine xdp (replaces the file's interfaces)")
	fl.StringSliceVar(&f.afxdp, "afxdp", nil, "interfaces with engine afxdp")
	fl.StringSliceVar(&f.pass, "pass", nil, "interfaces with engine pass (egress only, or left to the kernel)")
	fl.StringVar(&f.cpus, "cpus", "", "AF_XDP worker CPUs, worker q on the q-th (e.g. 2-3)")
	fl.StringVar(&f.housekeeping, "housekeeping-cpus", "", "CPUs for everything but the workers (e.g. 0)")
	fl.BoolVar(&f.affinity, "affinity", false, "apply the affinity plan at start, restore it at stop")
	fl.StringVar(&f.namespace, "namespace", "", "named network namespace to route in (needs CAP_SYS_ADMIN)")
	fl.StringVar(&f.pinPath, "pin-path", "", "bpffs directory that keeps the FIB across restarts")
	fl.StringVar(&f.metrics, "metrics", daemon.DefaultMetrics, `Prometheus listen address, or "off"`)
	fl.StringVar(&f.socket, "socket", daemon.DefaultControl, "operator socket")
	fl.StringVar(&f.stateDir, "state-dir", "", "where the affinity record outlives the daemon (default: the socket's directory)")
	fl.IntVar(&f.table, "table", 254, "kernel routing table to mirror")
	return cmd
}

// client talks HTTP to the daemon's operator socket.
func client(sock string, timeout time.Duration) *http.Client {
	return &http.Client{Timeout: timeout, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		}}}
}

// routesTimeout bounds /routes and /routes/check, which walk the whole
// FIB (and, for the check, ask the kernel once per prefix).
const routesTimeout = 10 * time.Minute

// get reads path from the daemon into v, within 5 s.
func get(sock, path string, v any) error { return getWithin(sock, path, v, 5*time.Second) }

func getWithin(sock, path string, v any, timeout time.Duration) error {
	resp, err := client(sock, timeout).Get("http://xdprouter" + path)
	if err != nil {
		return fmt.Errorf("daemon at %s: %w (is 'xdprouter run' running? --socket)", sock, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("daemon: %s: %s", resp.Status, b)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

func newStatusCmd() *cobra.Command {
	var sock string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the running daemon's interfaces, engines, FIB and mirror",
		RunE: func(cmd *cobra.Command, args []string) error {
			var s daemon.Status
			if err := get(sock, "/status", &s); err != nil {
				return err
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), s)
			}
			w := cmd.OutOrStdout()
			idle := ""
			if s.Idle != "" {
				idle = " (idle: " + s.Idle + ")"
			}
			fmt.Fprintf(w, "pid %d, up %s (since %s), table %d, %d AF_XDP workers%s, warm start %v\n", s.PID, s.Uptime, s.Started.Format(time.RFC3339), s.Table, s.Workers, idle, s.WarmStart)
			for _, i := range s.Interfaces {
				fmt.Fprintf(w, "%-16s ifindex %-4d engine %s\n", i.Name, i.Ifindex, i.Engine)
			}
			if len(s.WorkerCPUs) > 0 {
				fmt.Fprintf(w, "AF_XDP worker q on cpu: %v", s.WorkerCPUs)
				if len(s.Housekeeping) > 0 {
					fmt.Fprintf(w, ", housekeeping on cpus %v", s.Housekeeping)
				}
				fmt.Fprintln(w)
			}
			if len(s.Affinity) > 0 {
				fmt.Fprintf(w, "affinity applied (restored at stop):\n  %s\n", strings.Join(s.Affinity, "\n  "))
			}
			m := s.Mirror
			fmt.Fprintf(w, "mirror: %d routes, %d FIB entries, %d nexthops, %d neighbours; %d events, %d resyncs, %d errors\n",
				m.Routes, m.FIBEntries, m.Nexthops, m.Neighbours, m.Events, m.Resyncs, m.Errors)
			printPolicy(w, s.Policy)
			return nil
		},
	}
	cmd.Flags().StringVar(&sock, "socket", daemon.DefaultControl, "the daemon's operator socket")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// Rates is one `xdprouter stats` line: an interface, an interface on
// one CPU (Kind "interface_cpu"), an AF_XDP worker, or a CPU's time.
type Rates struct {
	Kind       string  `json:"kind"` // interface, interface_cpu, worker, cpu
	Name       string  `json:"name"`
	CPU        int     `json:"cpu"` // interface_cpu, worker and cpu rows
	RxPPS      float64 `json:"rx_pps"`
	FwdPPS     float64 `json:"forwarded_pps"`
	RxMbps     float64 `json:"rx_mbps"`
	PassPPS    float64 `json:"pass_pps"`
	DropPPS    float64 `json:"drop_pps"`
	CPUPercent float64 `json:"cpu_pct,omitempty"` // a worker thread's CPU use
	// A CPU's time shares in percent (cpu rows).
	SoftIRQPct float64 `json:"softirq_pct,omitempty"`
	SystemPct  float64 `json:"system_pct,omitempty"`
	UserPct    float64 `json:"user_pct,omitempty"`
	IdlePct    float64 `json:"idle_pct,omitempty"`
}

func newStatsCmd() *cobra.Command {
	var sock string
	var asJSON bool
	var count int
	cmd := &cobra.Command{
		Use:   "stats",
		Short: "Live per-second rates per interface and per AF_XDP worker (like ifstat)",
		Long: `Every second: per interface the XDP program's received, forwarded (in XDP
or to the AF_XDP workers), passed-to-kernel and dropped packets per second and
received Mbit/s, then the same per CPU that received on it (one CPU per
queue under the affinity plan); per AF_XDP worker (queue) received and
forwarded pps, drops, its CPU and the worker thread's CPU use; per CPU the
share of softirq (where XDP and kernel forwarding run), system, user and
idle time.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			var prev daemon.Stats
			if err := get(sock, "/stats", &prev); err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			for i := 0; count == 0 || i < count; i++ {
				select {
				case <-cmd.Context().Done():
					return nil
				case <-time.After(time.Second):
				}
				var cur daemon.Stats
				if err := get(sock, "/stats", &cur); err != nil {
					return err
				}
				rates := statsRates(prev, cur)
				prev = cur
				if asJSON {
					if err := json.NewEncoder(w).Encode(rates); err != nil {
						return err
					}
					continue
				}
				printRates(w, cur.At, rates)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&sock, "socket", daemon.DefaultControl, "the daemon's operator socket")
	cmd.Flags().BoolVar(&asJSON, "json", false, "one JSON array per second")
	cmd.Flags().IntVarP(&count, "count", "n", 0, "stop after this many seconds (0: until interrupted)")
	return cmd
}

// printRates prints one second of `xdprouter stats`.
func printRates(w io.Writer, at time.Time, rates []Rates) {
	fmt.Fprintf(w, "%s\n", at.Format("15:04:05"))
	for _, r := range rates {
		name := r.Name
		switch r.Kind {
		case "cpu":
			fmt.Fprintf(w, "  cpu%-7d softirq %3.0f%%  system %3.0f%%  user %3.0f%%  idle %3.0f%%\n", r.CPU, r.SoftIRQPct, r.SystemPct, r.UserPct, r.IdlePct)
			continue
		case "interface_cpu":
			name = fmt.Sprintf("  cpu%d", r.CPU)
		}
		fmt.Fprintf(w, "  %-10s rx %10.0f pps %9.1f Mbit/s  fwd %10.0f pps  pass %8.0f pps  drop %8.0f pps", name, r.RxPPS, r.RxMbps, r.FwdPPS, r.PassPPS, r.DropPPS)
		if r.Kind == "worker" {
			fmt.Fprintf(w, "  on cpu%d %3.0f%%", r.CPU, r.CPUPercent)
		}
		fmt.Fprintln(w)
	}
}

// wentDown reports whether any counter of b is below a's: the counters
// restarted in between.
func wentDown(a, b map[string]uint64) bool {
	for k, v := range b {
		if v < a[k] {
			return true
		}
	}
	return false
}

// statsRates turns two readings into rates: per interface, per interface
// and CPU (CPUs that received in the interval), per worker, per CPU.
func statsRates(a, b daemon.Stats) []Rates {
	dt := b.At.Sub(a.At).Seconds()
	if dt <= 0 {
		dt = 1
	}
	rate := func(x, y uint64) float64 { return float64(y-x) / dt }
	var out []Rates
	names := make([]string, 0, len(b.Interfaces))
	for n := range b.Interfaces {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		x, y := a.Interfaces[n], b.Interfaces[n]
		if wentDown(x, y) {
			continue // counters restarted (a restarted daemon): no rate this second
		}
		d := func(k string) float64 { return rate(x[k], y[k]) }
		var pass, drop float64
		for k := range y {
			if strings.HasPrefix(k, "pass_") {
				pass += d(k)
			}
			if strings.HasPrefix(k, "drop_") {
				drop += d(k)
			}
		}
		out = append(out, Rates{Kind: "interface", Name: n, RxPPS: d("rx_packets"), FwdPPS: d("forwarded") + d("to_afxdp"),
			RxMbps: d("rx_bytes") * 8 / 1e6, PassPPS: pass, DropPPS: drop})
		for _, cy := range b.InterfaceCPUs[n] {
			var cx daemon.CPUCounters
			for _, c := range a.InterfaceCPUs[n] {
				if c.CPU == cy.CPU {
					cx = c
				}
			}
			if cy.RxPackets <= cx.RxPackets {
				continue // idle, or counters restarted
			}
			out = append(out, Rates{Kind: "interface_cpu", Name: n, CPU: cy.CPU, RxPPS: rate(cx.RxPackets, cy.RxPackets),
				FwdPPS: rate(cx.Forwarded, cy.Forwarded), RxMbps: rate(cx.RxBytes, cy.RxBytes) * 8 / 1e6,
				PassPPS: rate(cx.Passed, cy.Passed), DropPPS: rate(cx.Dropped, cy.Dropped)})
		}
	}
	for _, wk := range b.Workers {
		// The same worker is the same thread: a reload starts new ones.
		i := slices.IndexFunc(a.Workers, func(o engine.WorkerStats) bool { return o.Queue == wk.Queue && o.TID == wk.TID })
		if i < 0 || a.Workers[i].RxPackets > wk.RxPackets || a.Workers[i].Forwarded > wk.Forwarded ||
			a.Workers[i].RxBytes > wk.RxBytes || a.Workers[i].Dropped() > wk.Dropped() ||
			a.Workers[i].UserTime+a.Workers[i].SystemTime > wk.UserTime+wk.SystemTime {
			continue // a new worker (reload): its rate starts next second
		}
		o := a.Workers[i]
		cpu := (wk.UserTime + wk.SystemTime - o.UserTime - o.SystemTime).Seconds() / dt * 100
		out = append(out, Rates{Kind: "worker", Name: fmt.Sprintf("worker q%d", wk.Queue), CPU: wk.CPU,
			RxPPS: rate(o.RxPackets, wk.RxPackets), FwdPPS: rate(o.Forwarded, wk.Forwarded),
			RxMbps: rate(o.RxBytes, wk.RxBytes) * 8 / 1e6, DropPPS: rate(o.Dropped(), wk.Dropped()), CPUPercent: cpu})
	}
	for _, sh := range cpustat.Shares(a.CPUTimes, b.CPUTimes) {
		out = append(out, Rates{Kind: "cpu", Name: fmt.Sprintf("cpu%d", sh.CPU), CPU: sh.CPU,
			SoftIRQPct: 100 * sh.SoftIRQ, SystemPct: 100 * (sh.System + sh.IRQ), UserPct: 100 * sh.User, IdlePct: 100 * sh.Idle})
	}
	return out
}

// printPolicy prints what the fast path honours natively and what goes
// to the kernel, per interface, and why (docs/operator.md, "What the fast
// path honours").
func printPolicy(w io.Writer, p kernelpolicy.Snapshot) {
	for _, f := range []struct {
		fam string
		why []string
	}{{"IPv4", p.Kernel4}, {"IPv6", p.Kernel6}} {
		if len(f.why) > 0 {
			fmt.Fprintf(w, "every %s frame to the kernel:\n  %s\n", f.fam, strings.Join(f.why, "\n  "))
		}
	}
	if len(p.Bypassed) > 0 {
		fmt.Fprintf(w, "BYPASSED by bypass_firewall (the fast path skips them):\n  %s\n", strings.Join(p.Bypassed, "\n  "))
	}
	for _, i := range p.Interfaces {
		fmt.Fprintf(w, "%s native: %s\n", i.Name, strings.Join(i.Native, "; "))
		if len(i.Kernel) > 0 {
			fmt.Fprintf(w, "%s to the kernel: %s\n", i.Name, strings.Join(i.Kernel, "; "))
		}
	}
}
