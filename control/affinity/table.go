package affinity

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
)

// Row is one line of an affinity table: a name and the CPUs it is on.
type Row struct {
	Name string
	CPUs []int
}

// WriteTable prints rows against CPUs as the router text does:
//
//	         cpu0 cpu1 cpu2
//	TxRx-0   ×    ·    ·
func WriteTable(w io.Writer, cpus []int, rows []Row) error {
	tw := tabwriter.NewWriter(w, 0, 0, 1, ' ', 0)
	hdr := []string{""}
	for _, c := range cpus {
		hdr = append(hdr, fmt.Sprintf("cpu%d", c))
	}
	fmt.Fprintln(tw, strings.Join(hdr, "\t"))
	for _, r := range rows {
		cells := []string{r.Name}
		for _, c := range cpus {
			mark := "·"
			if slices.Contains(r.CPUs, c) {
				mark = "×"
			}
			cells = append(cells, mark)
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	return tw.Flush()
}

// CurrentRows are the interfaces' queue IRQs as they are now: where each
// may run (effective affinity when the kernel reports it).
func CurrentRows(ifs []*Iface) []Row {
	var rows []Row
	for _, ifc := range ifs {
		for _, irq := range ifc.IRQs {
			cpus := irq.Affinity
			if len(irq.Effective) > 0 {
				cpus = irq.Effective
			}
			name := irq.Name
			if !strings.Contains(name, ifc.Name) {
				name = ifc.Name + " " + name
			}
			rows = append(rows, Row{Name: name, CPUs: cpus})
		}
	}
	return rows
}

// PlanRows are a plan's queues: queue q of each interface on its CPU.
func PlanRows(p *Plan) []Row {
	var rows []Row
	for _, ip := range p.Ifaces {
		for _, a := range ip.Assign {
			rows = append(rows, Row{Name: fmt.Sprintf("%s queue %d", ip.Name, a.Queue), CPUs: []int{a.CPU}})
		}
	}
	return rows
}
