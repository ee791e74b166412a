// Command xdprouter is the router: its daemon and operator commands. See
// README.md and docs/.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/cilium/ebpf/rlimit"
	"github.com/spf13/cobra"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	err := newRoot().ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "xdprouter:", err)
		os.Exit(exitCode(err))
	}
}

// exitError carries a specific exit code (1 for "differences found").
type exitError struct {
	code int
	msg  string
}

func (e exitError) Error() string { return e.msg }

func exitCode(err error) int {
	if e, ok := err.(exitError); ok {
		return e.code
	}
	return 1
}

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:   "xdprouter",
		Short: "XDP/AF_XDP software router dataplane",
		Long: `xdprouter forwards IPv4 and IPv6 in XDP (or AF_XDP workers) with a FIB
mirrored from the kernel's routing table over netlink, so FRR, BIRD or
'ip route' program it. Run it as root.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			if err := rlimit.RemoveMemlock(); err != nil {
				return fmt.Errorf("lift RLIMIT_MEMLOCK for BPF maps (the probe of the kernel's memory accounting needs CAP_BPF; before Linux 5.11 the lift needs CAP_SYS_RESOURCE): %w", err)
			}
			return nil
		},
	}
	root.AddCommand(newRunCmd(), newStatusCmd(), newStatsCmd(), newRoutesCmd(), newAffinityCmd(), newCheckCmd())
	return root
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
