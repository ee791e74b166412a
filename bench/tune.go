package bench

import (
	"fmt"
	"os"
	"runtime"
	"strings"

	"github.com/xdprouter/xdprouter/control/affinity"
	"github.com/xdprouter/xdprouter/internal/netnsrun"
	"github.com/xdprouter/xdprouter/lab"
)

// tuning is how a kernel scenario lays the router's queues onto CPUs.
type tuning int

const (
	// tuneNone leaves the lab as created: no RPS, no XPS.
	tuneNone tuning = iota
	// tuneOneCPU steers every received frame of eth1/eth2 to CPU 0 with
	// RPS, so all of the router's IP forwarding runs on one CPU: the seed
	// router's untuned state, where every queue's IRQ landed on CPU 0.
	tuneOneCPU
	// tuneAffinity applies xdprouter's affinity plan (control/affinity)
	// to eth1, eth2 and eth3: queue q's XPS on CPU q, RPS off.
	tuneAffinity
)

// tune applies a tuning in the router namespace and returns the record
// that untune restores.
func tune(l *lab.Lab, t tuning) ([]affinity.Write, error) {
	if t == tuneNone {
		return nil, nil
	}
	var record []affinity.Write
	err := netnsrun.DoSysfs(l.RouterNS, func() error {
		h, err := affinity.Discover("/")
		if err != nil {
			return err
		}
		var ifs []*affinity.Iface
		for _, name := range []string{l.Ingress[0].B.Name, l.Ingress[1].B.Name, l.Egress.A.Name} {
			ifc, err := h.Iface(name)
			if err != nil {
				return err
			}
			ifs = append(ifs, ifc)
		}
		var ws []affinity.Write
		switch t {
		case tuneOneCPU:
			for _, ifc := range ifs[:2] {
				for q := range ifc.RxQueues {
					ws = append(ws, affinity.Write{
						Path:  fmt.Sprintf("sys/class/net/%s/queues/rx-%d/rps_cpus", ifc.Name, q),
						Value: affinity.FormatMask([]int{0}, runtime.NumCPU()),
						What:  fmt.Sprintf("%s rx queue %d RPS -> cpu0", ifc.Name, q)})
				}
			}
		case tuneAffinity:
			var cpus []int
			for i := range runtime.NumCPU() {
				cpus = append(cpus, i)
			}
			p, err := affinity.MakePlan(h, ifs, affinity.PlanOptions{CPUs: cpus})
			if err != nil {
				return err
			}
			if ws, err = p.Writes(h, ifs); err != nil {
				return err
			}
		}
		for i := range ws {
			if ws[i].Old == "" {
				old, err := readSysfs(ws[i].Path)
				if err != nil {
					return err
				}
				ws[i].Old = old
			}
		}
		record, err = affinity.Apply("/", ws)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("tune %s: %w", l.RouterNS, err)
	}
	return record, nil
}

// untune restores what tune changed.
func untune(l *lab.Lab, record []affinity.Write) error {
	if len(record) == 0 {
		return nil
	}
	return netnsrun.DoSysfs(l.RouterNS, func() error { return affinity.Restore("/", record) })
}

func readSysfs(path string) (string, error) {
	b, err := os.ReadFile("/" + path)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}
