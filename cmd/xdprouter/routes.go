package main

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/xdprouter/xdprouter/control/daemon"
	"github.com/xdprouter/xdprouter/control/netlink"
	"github.com/xdprouter/xdprouter/dataplane/fib"
)

func newRoutesCmd() *cobra.Command {
	var (
		ns            string
		table, sample int
		asJSON, check bool
		checkAll      bool
		local         bool
		sock          string
	)
	cmd := &cobra.Command{
		Use:   "routes",
		Short: "Show the FIB mirrored from the kernel, or check it against the kernel",
		Long: `Mirrors the kernel's routing table (like 'ip route show table TABLE'),
neighbours, links and addresses into a FIB and prints what the dataplane
forwards with: each prefix, its type, and for forwarded prefixes the
nexthop (gateway, device, neighbour MAC, state: resolved, incomplete or
failed) and MTU. Neighbour host routes (directly connected hosts with a
resolved neighbour entry on a served interface) are marked "host".

Types: nexthop/ecmp are forwarded by the dataplane; kernel, none,
unreachable, prohibit and local go to the Linux stack; blackhole drops.

When the daemon runs (its --socket exists) it answers from its live
mirror, the FIB it forwards with; with --netns, --table or --local, or
without a daemon, this mirrors the namespace once into a fresh FIB.

With --check it compares, for each mirrored prefix, the FIB's answer
with the kernel's own lookup ('ip route get'), prints the differences
and exits 1 if there are any.`,
		Example: `  xdprouter routes
  ip netns exec ROUTER xdprouter routes --json
  xdprouter routes -n xdpl-lab-rtr --check --all`,
		RunE: func(cmd *cobra.Command, args []string) error {
			w := cmd.OutOrStdout()
			var entries []netlink.Entry
			var st netlink.Stats
			var checkFn func(ps []netip.Prefix) ([]netlink.Difference, error)
			_, statErr := os.Stat(sock)
			useDaemon := !local && ns == "" && !cmd.Flags().Changed("table") && statErr == nil
			if useDaemon {
				// The running daemon's live mirror. A socket nobody
				// answers on is a killed daemon's: mirror locally.
				var rep daemon.RoutesReply
				err := getWithin(sock, "/routes", &rep, routesTimeout)
				switch {
				case errors.Is(err, syscall.ECONNREFUSED):
					fmt.Fprintf(cmd.ErrOrStderr(), "no daemon answers on %s: mirroring the kernel table here\n", sock)
					useDaemon = false
				case err != nil:
					return err
				}
				entries, st = rep.Routes, rep.Stats
				if useDaemon && check {
					n := sample
					if checkAll {
						n = 0
					}
					var cr daemon.CheckReply
					if err := getWithin(sock, fmt.Sprintf("/routes/check?sample=%d", n), &cr, routesTimeout); err != nil {
						return err
					}
					return printCheck(w, asJSON, cr)
				}
			}
			if !useDaemon {
				tb, err := fib.New(fib.Config{})
				if err != nil {
					return err
				}
				defer tb.Close()
				m, err := netlink.New(tb, netlink.Config{Namespace: ns, Table: table})
				if err != nil {
					return err
				}
				defer m.Close()
				if err := m.Sync(); err != nil {
					return err
				}
				entries, st, checkFn = m.Entries(), m.Stats(), m.Check
			}
			if check {
				var ps []netip.Prefix
				for _, e := range entries {
					ps = append(ps, e.Prefix)
				}
				cr := daemon.CheckReply{Of: len(ps)}
				if !checkAll && sample > 0 && len(ps) > sample {
					rand.Shuffle(len(ps), func(i, j int) { ps[i], ps[j] = ps[j], ps[i] })
					ps = ps[:sample]
				}
				cr.Checked = len(ps)
				var err error
				if cr.Differences, err = checkFn(ps); err != nil {
					return err
				}
				return printCheck(w, asJSON, cr)
			}
			if asJSON {
				return writeJSON(w, map[string]any{"routes": entries, "stats": st})
			}
			tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "PREFIX\tTYPE\tPROTO\tMETRIC\tNEXTHOPS")
			for _, e := range entries {
				var hops []string
				for _, h := range e.Nexthops {
					mac := h.MAC
					if mac == "" {
						mac = "-"
					}
					hops = append(hops, fmt.Sprintf("#%d via %s dev %s lladdr %s %s mtu %d", h.ID, h.Gateway, h.Dev, mac, h.State, h.MTU))
				}
				proto, metric := fmt.Sprint(e.Protocol), fmt.Sprint(e.Metric)
				if e.Host {
					proto, metric = "host", "-"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", e.Prefix, e.Type, proto, metric, strings.Join(hops, "; "))
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			fmt.Fprintf(w, "%d prefixes from %d kernel routes; %d nexthops, %d ECMP groups, %d neighbours, %d links; %d changes applied, %d resyncs, %d errors\n",
				st.FIBEntries, st.Routes, st.Nexthops, st.ECMPGroups, st.Neighbours, st.Links, st.RoutesApplied, st.Resyncs, st.Errors)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVarP(&ns, "netns", "n", "", "named network namespace to mirror (like 'ip -n NS'; default: this one)")
	f.IntVarP(&table, "table", "t", 254, "routing table to mirror (254 = main)")
	f.BoolVar(&asJSON, "json", false, "print JSON")
	f.BoolVar(&check, "check", false, "compare the FIB with the kernel's route lookups; exit 1 on differences")
	f.IntVar(&sample, "sample", 10000, "with --check: prefixes to check, drawn at random")
	f.StringVar(&sock, "socket", daemon.DefaultControl, "the daemon's operator socket: when it exists (and neither --netns nor --table is given) the daemon's live mirror answers")
	f.BoolVar(&local, "local", false, "mirror the kernel into a fresh FIB here even when a daemon runs")
	f.BoolVar(&checkAll, "all", false, "with --check: check every prefix")
	return cmd
}

// printCheck prints a route check's differences and fails with exit
// code 1 when there are any.
func printCheck(w io.Writer, asJSON bool, cr daemon.CheckReply) error {
	if asJSON {
		if err := writeJSON(w, map[string]any{"checked": cr.Checked, "of": cr.Of, "differences": cr.Differences}); err != nil {
			return err
		}
	} else {
		for _, d := range cr.Differences {
			fmt.Fprintf(w, "%s: kernel %s, fib %s\n", d.Addr, d.Kernel, d.FIB)
		}
		fmt.Fprintf(w, "checked %d of %d prefixes against the kernel: %d differences\n", cr.Checked, cr.Of, len(cr.Differences))
	}
	if len(cr.Differences) > 0 {
		return exitError{1, fmt.Sprintf("%d prefixes differ from the kernel", len(cr.Differences))}
	}
	return nil
}
