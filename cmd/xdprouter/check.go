package main

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/xdprouter/xdprouter/control/affinity"
)

func newCheckCmd() *cobra.Command {
	f := &affinityFlags{}
	var interval time.Duration
	cmd := &cobra.Command{
		Use:   "check [IFACE...]",
		Short: "Audit the host's network tuning; exit 1 when something is wrong",
		Long: `Runs the tuning guide's checks and prints each reading with a suggested fix:
per-CPU softnet_stat drops and time squeeze (as deltas over --interval),
netdev_budget / netdev_budget_usecs / dev_weight / netdev_max_backlog,
queue IRQs all on one CPU, queue IRQs off their worker's CPU, CPUs on
another NUMA node than the NIC, irqbalance, hyper-threads sharing a core,
and (on a live host) ring sizes below their maximum and coalescing.
Exits 1 when a check finds a problem, for monitoring.`,
		Example: `  xdprouter check
  xdprouter check --interval 5s eth1 eth2 --json`,
		RunE: func(cmd *cobra.Command, args []string) error {
			h, ifs, err := f.discover(args)
			if err != nil {
				return err
			}
			p, err := f.plan(h, ifs)
			if err != nil {
				return err
			}
			if f.root != "/" {
				interval = 0 // a recorded tree does not change
			}
			fs, err := affinity.Audit(h, ifs, p, affinity.AuditOptions{Interval: interval, Ethtool: f.root == "/"})
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if f.asJSON {
				if err := writeJSON(w, fs); err != nil {
					return err
				}
			} else {
				tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
				fmt.Fprintln(tw, "CHECK\tRESULT\tREADING\tFIX")
				for _, x := range fs {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", x.Check, x.Severity, x.Reading, x.Fix)
				}
				if err := tw.Flush(); err != nil {
					return err
				}
			}
			if affinity.Failed(fs) {
				return exitError{1, "problems found (see above)"}
			}
			return nil
		},
	}
	pf := cmd.Flags()
	pf.StringVar(&f.root, "root", "/", "root of the /proc and /sys to read (a recorded tree for tests)")
	pf.StringVar(&f.cpus, "cpus", "", "CPUs the dataplane uses (default: the affinity plan's)")
	pf.StringVar(&f.housekeeping, "housekeeping", "", "CPUs kept for userland")
	pf.DurationVarP(&interval, "interval", "i", time.Second, "time between the two softnet_stat readings")
	pf.BoolVar(&f.asJSON, "json", false, "print JSON")
	return cmd
}
