package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/xdprouter/xdprouter/control/daemon"
)

func newRunCmd() *cobra.Command {
	var path string
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the router daemon with a YAML config",
		Long: `Loads the XDP program on every configured interface in "pass" (the kernel
forwards), fills the FIB from the kernel's routing table over netlink, then
switches each interface to its engine (xdp, afxdp or pass) and serves the
operator socket and Prometheus metrics. SIGHUP reloads the config (engines,
workers); SIGINT/SIGTERM shut down in reverse order and leave the host as
found. See docs/operator.md for the config file.`,
		Example: `  xdprouter run --config /etc/xdprouter/xdprouter.yaml`,
		RunE: func(cmd *cobra.Command, args []string) error {
			slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})))
			cfg, err := daemon.LoadConfig(path)
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
			for {
				select {
				case <-cmd.Context().Done():
					slog.Info("shutting down")
					return d.Stop()
				case <-hup:
					nc, err := daemon.LoadConfig(path)
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
	cmd.Flags().StringVarP(&path, "config", "c", "/etc/xdprouter/xdprouter.yaml", "YAML configuration file")
	return cmd
}

// client talks HTTP to the daemon's operator socket.
func client(sock string) *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		}}}
}

func get(sock, path string, v any) error {
	resp, err := client(sock).Get("http://xdprouter" + path)
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
			fmt.Fprintf(w, "pid %d, up %s (since %s), table %d, %d AF_XDP workers, warm start %v\n", s.PID, s.Uptime, s.Started.Format(time.RFC3339), s.Table, s.Workers, s.WarmStart)
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
			return nil
		},
	}
	cmd.Flags().StringVar(&sock, "socket", daemon.DefaultControl, "the daemon's operator socket")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// Rates is one `xdprouter stats` line per interface or worker.
type Rates struct {
	Name       string  `json:"name"`
	RxPPS      float64 `json:"rx_pps"`
	FwdPPS     float64 `json:"forwarded_pps"`
	RxMbps     float64 `json:"rx_mbps"`
	PassPPS    float64 `json:"pass_pps"`
	DropPPS    float64 `json:"drop_pps"`
	CPUPercent float64 `json:"cpu_pct,omitempty"`
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
received Mbit/s; per AF_XDP worker (queue) received and forwarded pps, drops
and the worker thread's CPU use.`,
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
				fmt.Fprintf(w, "%s\n", cur.At.Format("15:04:05"))
				for _, r := range rates {
					fmt.Fprintf(w, "  %-10s rx %10.0f pps %9.1f Mbit/s  fwd %10.0f pps  pass %8.0f pps  drop %8.0f pps", r.Name, r.RxPPS, r.RxMbps, r.FwdPPS, r.PassPPS, r.DropPPS)
					if r.CPUPercent > 0 {
						fmt.Fprintf(w, "  cpu %3.0f%%", r.CPUPercent)
					}
					fmt.Fprintln(w)
				}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&sock, "socket", daemon.DefaultControl, "the daemon's operator socket")
	cmd.Flags().BoolVar(&asJSON, "json", false, "one JSON array per second")
	cmd.Flags().IntVarP(&count, "count", "n", 0, "stop after this many seconds (0: until interrupted)")
	return cmd
}

func statsRates(a, b daemon.Stats) []Rates {
	dt := b.At.Sub(a.At).Seconds()
	if dt <= 0 {
		dt = 1
	}
	var out []Rates
	names := make([]string, 0, len(b.Interfaces))
	for n := range b.Interfaces {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		x, y := a.Interfaces[n], b.Interfaces[n]
		d := func(k string) float64 { return float64(y[k]-x[k]) / dt }
		var pass, drop float64
		for k := range y {
			if len(k) > 5 && k[:5] == "pass_" {
				pass += d(k)
			}
			if len(k) > 5 && k[:5] == "drop_" {
				drop += d(k)
			}
		}
		out = append(out, Rates{Name: n, RxPPS: d("rx_packets"), FwdPPS: d("forwarded") + d("to_afxdp"),
			RxMbps: d("rx_bytes") * 8 / 1e6, PassPPS: pass, DropPPS: drop})
	}
	for i, wk := range b.Workers {
		if i >= len(a.Workers) {
			break
		}
		o := a.Workers[i]
		cpu := (wk.UserTime + wk.SystemTime - o.UserTime - o.SystemTime).Seconds() / dt * 100
		out = append(out, Rates{Name: fmt.Sprintf("worker q%d", wk.Queue), RxPPS: float64(wk.RxPackets-o.RxPackets) / dt,
			FwdPPS: float64(wk.Forwarded-o.Forwarded) / dt, RxMbps: float64(wk.RxBytes-o.RxBytes) * 8 / dt / 1e6,
			DropPPS: float64(wk.Dropped()-o.Dropped()) / dt, CPUPercent: cpu})
	}
	return out
}
