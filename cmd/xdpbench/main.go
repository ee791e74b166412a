// Command xdpbench builds the lab, generates and sinks traffic, and runs
// forwarding benchmarks. Run it as root; see README.md and docs/.
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
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})))
	err := newRoot().ExecuteContext(ctx)
	interrupted := ctx.Err() != nil
	stop()
	switch {
	case err != nil && interrupted:
		fmt.Fprintln(os.Stderr, "xdpbench: interrupted; everything it set up was removed")
		os.Exit(130)
	case err != nil:
		fmt.Fprintln(os.Stderr, "xdpbench:", err)
		os.Exit(1)
	}
}

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:   "xdpbench",
		Short: "Lab, traffic generator, sink and forwarding benchmarks for xdprouter",
		Long: `xdpbench builds the router lab (network namespaces joined by multi-queue
veth pairs), sends UDP traffic into it with BPF_PROG_RUN live frames,
counts what comes out with an XDP sink, and runs forwarding benchmarks.

Frame sizes and Mbit/s count the Ethernet frame with its 4-byte FCS, as
RFC 2544 does; preamble and inter-frame gap are not counted.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK.
			return rlimit.RemoveMemlock()
		},
	}
	root.AddCommand(newLabCmd(), newGenCmd(), newSinkCmd(), newRunCmd(), newReportCmd(), newDemoCmd())
	return root
}

// writeJSON prints v indented.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
