package main

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/xdprouter/xdprouter/control/affinity"
	"github.com/xdprouter/xdprouter/control/kernelpolicy"
	"github.com/xdprouter/xdprouter/dataplane/xdp"
	"github.com/xdprouter/xdprouter/internal/netnsrun"
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
On a live host it also lists, per interface, what the fast path would
honour natively and which frames the kernel's settings (forwarding
switches, firewall, tc, policy rules) send to the kernel, and why: the
policy the daemon applies (without bypass_firewall). For a namespace,
run it under "ip netns exec NS".
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
			if f.root == "/" {
				var names []string
				for _, ifc := range ifs {
					names = append(names, ifc.Name)
				}
				fs = append(fs, policyFindings("", names)...)
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

// policyFindings reads the kernel's forwarding policy for the named
// interfaces of namespace ("" = ours) as the daemon would: one finding
// for what the fast path does natively and one for what goes to the
// kernel, per interface, and one per family when every frame of it goes
// to the kernel (a warning: the fast path is off for it).
func policyFindings(namespace string, names []string) []affinity.Finding {
	fail := func(err error) []affinity.Finding {
		f := affinity.Finding{Check: "kernel policy", Severity: affinity.Warn, Reading: err.Error()}
		if errors.Is(err, unix.EPERM) {
			f.Fix = "run as root (CAP_NET_ADMIN reads nftables and tc)"
		}
		return []affinity.Finding{f}
	}
	var idx []int
	err := netnsrun.Do(namespace, func() error {
		for _, n := range names {
			ifc, err := net.InterfaceByName(n)
			if err != nil {
				return fmt.Errorf("interface %s: %w", n, err)
			}
			idx = append(idx, ifc.Index)
		}
		return nil
	})
	if err != nil {
		return fail(err)
	}
	s, err := kernelpolicy.Read(namespace, idx, false)
	if err != nil {
		return fail(err)
	}
	const fix = "the kernel applies it to these frames; if it does not matter to forwarded traffic, bypass_firewall: true (docs/operator.md, dangerous)"
	var out []affinity.Finding
	for _, f := range []struct {
		fam string
		why []string
	}{{"IPv4", s.Kernel4}, {"IPv6", s.Kernel6}} {
		if len(f.why) == 0 {
			out = append(out, affinity.Finding{Check: "fast path " + f.fam, Severity: affinity.OK, Reading: "no setting sends every frame to the kernel"})
			continue
		}
		out = append(out, affinity.Finding{Check: "fast path " + f.fam, Severity: affinity.Warn,
			Reading: "every frame to the kernel: " + strings.Join(f.why, "; "), Fix: fix})
	}
	for _, r := range s.Rules {
		out = append(out, affinity.Finding{Check: "fast path rule", Severity: affinity.OK, Reading: r})
	}
	for _, i := range s.Interfaces {
		out = append(out, affinity.Finding{Check: i.Name + " native", Severity: affinity.OK, Reading: strings.Join(i.Native, "; ")})
		// Whole families or everything routed out of it to the kernel:
		// the fast path is (partly) off here.
		sev, fx := affinity.OK, ""
		if s.Policies[i.Ifindex].Flags&(xdp.Kernel4|xdp.Kernel6|xdp.EgressKernel) != 0 {
			sev, fx = affinity.Warn, fix
		}
		out = append(out, affinity.Finding{Check: i.Name + " to the kernel", Severity: sev, Reading: strings.Join(i.Kernel, "; "), Fix: fx})
	}
	return out
}
