package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/xdprouter/xdprouter/internal/testutil"
)

// TestRunAccountsExactly runs both scenarios at a rate every path here
// sustains: nothing may be lost, and each trial must count what was sent.
func TestRunAccountsExactly(t *testing.T) {
	testutil.Privileged(t)
	for _, family := range []int{4, 6} {
		rep, err := Run(context.Background(), Options{
			Family: family, Rate: 20000, Duration: 500 * time.Millisecond, Repeats: 2,
		}, func(s string) { t.Log(s) })
		if err != nil {
			t.Fatal(err)
		}
		if len(rep.Results) != len(Scenarios) {
			t.Fatalf("IPv%d: %d results, want %d", family, len(rep.Results), len(Scenarios))
		}
		for _, r := range rep.Results {
			if len(r.Trials) != 2 {
				t.Errorf("IPv%d %s: %d trials, want 2", family, r.Scenario, len(r.Trials))
			}
			for _, tr := range r.Trials {
				if tr.Sent < 9000 || tr.Received != tr.Sent || tr.LossPct != 0 {
					t.Errorf("IPv%d %s: sent %d received %d loss %.2f%%, want ~10000 and no loss",
						family, r.Scenario, tr.Sent, tr.Received, tr.LossPct)
				}
				if len(tr.CPU) == 0 {
					t.Errorf("IPv%d %s: no CPU shares", family, r.Scenario)
				}
			}
			if r.MinPPS > r.MedianPPS || r.MedianPPS > r.MaxPPS || r.MedianPPS < 15000 || r.MedianPPS > 25000 {
				t.Errorf("IPv%d %s: min/median/max %.0f/%.0f/%.0f pps at a 20000 pps offer",
					family, r.Scenario, r.MinPPS, r.MedianPPS, r.MaxPPS)
			}
		}
		var table bytes.Buffer
		if err := WriteTable(&table, rep); err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"layout: generator", "\nwire ", "\nkernel ", "vs wire", "cpu0 si/sy/us/id"} {
			if !strings.Contains(table.String(), want) {
				t.Errorf("table lacks %q:\n%s", want, table.String())
			}
		}
		js, err := json.Marshal(rep)
		if err != nil {
			t.Fatal(err)
		}
		var back Report
		if err := json.Unmarshal(js, &back); err != nil || len(back.Results) != len(rep.Results) {
			t.Errorf("JSON round trip: %v, %d results", err, len(back.Results))
		}
	}
}

// BenchmarkLab runs one maximum-rate trial of each scenario per iteration
// and reports forwarded pps, so 'go test -bench' keeps the harness alive.
func BenchmarkLab(b *testing.B) {
	testutil.Privileged(b)
	for _, s := range Scenarios {
		b.Run(s.Name, func(b *testing.B) {
			var pps float64
			for b.Loop() {
				rep, err := Run(context.Background(), Options{
					Scenarios: []string{s.Name}, Duration: time.Second, Repeats: 1,
				}, nil)
				if err != nil {
					b.Fatal(err)
				}
				pps = rep.Results[0].MedianPPS
			}
			b.ReportMetric(pps, "pps")
		})
	}
}
