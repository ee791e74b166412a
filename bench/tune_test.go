package bench

import (
	"context"
	"fmt"
	"maps"
	"runtime"
	"testing"

	"github.com/xdprouter/xdprouter/control/affinity"
	"github.com/xdprouter/xdprouter/internal/netnsrun"
	"github.com/xdprouter/xdprouter/internal/testutil"
	"github.com/xdprouter/xdprouter/lab"
)

// queueKnobs reads every RPS and XPS mask of the router's interfaces.
func queueKnobs(t *testing.T, l *lab.Lab) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := netnsrun.DoSysfs(l.RouterNS, func() error {
		for _, name := range []string{l.Ingress[0].B.Name, l.Ingress[1].B.Name, l.Egress.A.Name} {
			for q := range l.Queues {
				for _, p := range []string{
					fmt.Sprintf("sys/class/net/%s/queues/rx-%d/rps_cpus", name, q),
					fmt.Sprintf("sys/class/net/%s/queues/tx-%d/xps_cpus", name, q),
				} {
					v, err := readSysfs(p)
					if err != nil {
						return err
					}
					out[p] = v
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestTuneRestores applies both kernel tunings to a lab's router and
// checks the masks they set, that the host's own /sys is untouched, and
// that untune puts every mask back.
func TestTuneRestores(t *testing.T) {
	testutil.Privileged(t)
	l, err := lab.Up(context.Background(), lab.Config{Name: testutil.LabName(), Queues: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Down() })
	before := queueKnobs(t, l)
	if len(before) != 12 {
		t.Fatalf("read %d knobs, want 12: %v", len(before), before)
	}
	host, _ := affinity.Discover("/")
	hostIfs, _ := host.Interfaces()
	ncpu := runtime.NumCPU()
	tests := []struct {
		name string
		t    tuning
		want map[string][]int // path -> CPUs
	}{
		{"one cpu", tuneOneCPU, map[string][]int{
			"sys/class/net/eth1/queues/rx-0/rps_cpus": {0}, "sys/class/net/eth1/queues/rx-1/rps_cpus": {0},
			"sys/class/net/eth2/queues/rx-0/rps_cpus": {0}, "sys/class/net/eth2/queues/rx-1/rps_cpus": {0},
			"sys/class/net/eth3/queues/rx-0/rps_cpus": nil, "sys/class/net/eth3/queues/tx-0/xps_cpus": nil,
		}},
		{"affinity plan", tuneAffinity, map[string][]int{
			"sys/class/net/eth3/queues/tx-0/xps_cpus": {0}, "sys/class/net/eth3/queues/tx-1/xps_cpus": {1 % ncpu},
			"sys/class/net/eth1/queues/tx-1/xps_cpus": {1 % ncpu}, "sys/class/net/eth1/queues/rx-0/rps_cpus": nil,
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			record, err := tune(l, tc.t)
			if err != nil {
				t.Fatal(err)
			}
			got := queueKnobs(t, l)
			if err := untune(l, record); err != nil {
				t.Fatal(err)
			}
			for p, cpus := range tc.want {
				v, err := affinity.ParseMask(got[p])
				if err != nil || fmt.Sprint(v) != fmt.Sprint(cpus) && !(len(v) == 0 && len(cpus) == 0) {
					t.Errorf("%s = %q (%v), want cpus %v", p, got[p], err, cpus)
				}
			}
			if after := queueKnobs(t, l); !maps.Equal(after, before) {
				t.Errorf("after untune:\n%v\nwant\n%v", after, before)
			}
		})
	}
	if h2, _ := affinity.Discover("/"); h2 != nil {
		ifs2, _ := h2.Interfaces()
		if fmt.Sprint(ifs2) != fmt.Sprint(hostIfs) {
			t.Errorf("the host's /sys/class/net changed: %v, was %v", ifs2, hostIfs)
		}
	}
}
