package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/xdprouter/xdprouter/control/affinity"
)

// affinityFlags are shared by the affinity subcommands.
type affinityFlags struct {
	root, cpus, housekeeping, record string
	reduce, asJSON                   bool
}

func (f *affinityFlags) discover(args []string) (*affinity.Host, []*affinity.Iface, error) {
	h, err := affinity.Discover(f.root)
	if err != nil {
		return nil, nil, err
	}
	names := args
	if len(names) == 0 {
		all, err := h.Interfaces()
		if err != nil {
			return nil, nil, err
		}
		for _, n := range all {
			if ifc, err := h.Iface(n); err == nil && len(ifc.IRQs) > 0 {
				names = append(names, n)
			}
		}
	}
	var ifs []*affinity.Iface
	for _, n := range names {
		ifc, err := h.Iface(n)
		if err != nil {
			return nil, nil, err
		}
		ifs = append(ifs, ifc)
	}
	return h, ifs, nil
}

// planWrites discovers, plans and lists the writes the plan needs.
func (f *affinityFlags) planWrites(args []string) (*affinity.Plan, []affinity.Write, error) {
	h, ifs, err := f.discover(args)
	if err != nil {
		return nil, nil, err
	}
	p, err := f.plan(h, ifs)
	if err != nil {
		return nil, nil, err
	}
	ws, err := p.Writes(h, ifs)
	return p, ws, err
}

func (f *affinityFlags) plan(h *affinity.Host, ifs []*affinity.Iface) (*affinity.Plan, error) {
	o := affinity.PlanOptions{ReduceQueues: f.reduce}
	var err error
	if f.cpus != "" {
		if o.CPUs, err = affinity.ParseList(f.cpus); err != nil {
			return nil, fmt.Errorf("--cpus: %w", err)
		}
	}
	if f.housekeeping != "" {
		if o.Housekeeping, err = affinity.ParseList(f.housekeeping); err != nil {
			return nil, fmt.Errorf("--housekeeping: %w", err)
		}
	}
	return affinity.MakePlan(h, ifs, o)
}

func newAffinityCmd() *cobra.Command {
	f := &affinityFlags{}
	cmd := &cobra.Command{
		Use:   "affinity",
		Short: "Show, plan, apply and restore queue, IRQ, XPS and RPS affinity",
		Long: `Finds each NIC queue's IRQ in /proc/interrupts (IF-TxRx-N, IF-rx-N/IF-tx-N,
virtioN-input.N/-output.N, mlx5_compN@pci:ADDR) and places queue q of every
interface, its IRQs and its XPS mask on CPU plan[q], as router tuning
guides do by hand. The default CPU set is the online CPUs on the
NIC's NUMA node, one thread per physical core, without isolated CPUs and
the --housekeeping ones. Nothing changes unless 'apply' is run; 'restore'
puts back exactly what apply changed.`,
	}
	pf := cmd.PersistentFlags()
	pf.StringVar(&f.root, "root", "/", "root of the /proc and /sys to read (a recorded tree for tests)")
	pf.StringVar(&f.cpus, "cpus", "", "CPUs to use (default: see above)")
	pf.StringVar(&f.housekeeping, "housekeeping", "", "CPUs to keep for userland (like the router text's CPU 0)")
	pf.BoolVar(&f.reduce, "reduce-queues", false, "plan one queue per CPU when an interface has more")
	pf.StringVar(&f.record, "record", "/run/xdprouter-affinity.json", "where apply records what it changed, for restore")
	pf.BoolVar(&f.asJSON, "json", false, "print JSON")

	show := &cobra.Command{
		Use:   "show [IFACE...]",
		Short: "The current IRQ placement as a queues x CPUs table, and RPS/XPS",
		RunE: func(cmd *cobra.Command, args []string) error {
			h, ifs, err := f.discover(args)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if f.asJSON {
				return writeJSON(w, map[string]any{"host": h, "interfaces": ifs})
			}
			if err := affinity.WriteTable(w, h.Online(), affinity.CurrentRows(ifs)); err != nil {
				return err
			}
			for _, ifc := range ifs {
				fmt.Fprintf(w, "%s: driver %s, device %s, NUMA node %d, %d rx / %d tx queues; RPS %s; XPS %s\n",
					ifc.Name, ifc.Driver, ifc.Device, ifc.Node, ifc.RxQueues, ifc.TxQueues, masks(ifc.RPS), masks(ifc.XPS))
			}
			hostNotes(w, h)
			return nil
		},
	}
	planCmd := &cobra.Command{
		Use:   "plan [IFACE...]",
		Short: "The plan as a table, and every file apply would write (dry run)",
		RunE: func(cmd *cobra.Command, args []string) error {
			h, err := affinity.Discover(f.root)
			if err != nil {
				return err
			}
			p, ws, err := f.planWrites(args)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if f.asJSON {
				return writeJSON(w, map[string]any{"plan": p, "writes": ws})
			}
			if err := affinity.WriteTable(w, h.Online(), affinity.PlanRows(p)); err != nil {
				return err
			}
			for _, n := range p.Notes {
				fmt.Fprintln(w, "note:", n)
			}
			for _, x := range ws {
				fmt.Fprintf(w, "echo %s > /%s   # %s (now %s)\n", x.Value, x.Path, x.What, x.Old)
			}
			fmt.Fprintf(w, "%d writes; run 'xdprouter affinity apply' to make them\n", len(ws))
			return nil
		},
	}
	apply := &cobra.Command{
		Use:   "apply [IFACE...]",
		Short: "Make the plan's writes, read each back, record them for restore",
		RunE: func(cmd *cobra.Command, args []string) error {
			p, ws, err := f.planWrites(args)
			if err != nil {
				return err
			}
			rec, err := affinity.Apply(f.root, ws)
			if err != nil {
				return err
			}
			if err := affinity.SaveRecord(f.record, rec); err != nil {
				return fmt.Errorf("applied, but could not record it (restore by hand from 'plan'): %w", err)
			}
			w := cmd.OutOrStdout()
			for _, n := range p.Notes {
				fmt.Fprintln(w, "note:", n)
			}
			fmt.Fprintf(w, "%d writes applied and read back; recorded in %s for 'xdprouter affinity restore'\n", len(rec), f.record)
			return nil
		},
	}
	restore := &cobra.Command{
		Use:   "restore",
		Short: "Put back exactly what the last apply changed",
		RunE: func(cmd *cobra.Command, args []string) error {
			rec, err := affinity.LoadRecord(f.record)
			if err != nil {
				return err
			}
			if err := affinity.Restore(f.root, rec); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%d values restored from %s\n", len(rec), f.record)
			return nil
		},
	}
	cmd.AddCommand(show, planCmd, apply, restore)
	return cmd
}

func masks(m map[int][]int) string {
	var parts []string
	for q := range len(m) {
		if len(m[q]) > 0 {
			parts = append(parts, fmt.Sprintf("%d:%s", q, affinity.FormatList(m[q])))
		}
	}
	if len(parts) == 0 {
		return "off"
	}
	return strings.Join(parts, " ")
}

func hostNotes(w io.Writer, h *affinity.Host) {
	if len(h.Isolated) > 0 {
		fmt.Fprintf(w, "isolated CPUs: %s\n", affinity.FormatList(h.Isolated))
	}
	if h.IRQBalance {
		fmt.Fprintf(w, "irqbalance is running (banned CPUs: %s): it will move IRQs xdprouter places\n", affinity.FormatList(h.Banned))
	}
}
