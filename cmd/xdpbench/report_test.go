package main

import (
	"context"
	"encoding/json"
	"encoding/xml"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/xdprouter/xdprouter/bench"
	"github.com/xdprouter/xdprouter/internal/testutil"
)

// TestReport runs the report at a short trial length with every report
// scenario and checks that each output parses and holds what was run:
// every point forwarded traffic, every throughput search ended with a
// rate no higher than the generator's maximum, and the plots decode.
func TestReport(t *testing.T) {
	testutil.Privileged(t)
	dir := t.TempDir()
	out, err := xdpbench(context.Background(), "report", "--routes", "1", "--sizes", "64,1518",
		"--duration", "300ms", "--repeats", "1", "--ndr-duration", "200ms", "--ndr-resolution", "0.25", "--out", dir)
	if err != nil {
		t.Fatalf("report: %v\n%s", err, out)
	}
	b, err := os.ReadFile(filepath.Join(dir, "report.json"))
	if err != nil {
		t.Fatal(err)
	}
	var rep bench.SweepReport
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatalf("report.json: %v", err)
	}
	if len(rep.Routes) != 1 || rep.Routes[0].Routes != "1" || rep.Kernel == "" || rep.CPUModel == "" || rep.Layout == "" {
		t.Fatalf("report header: %+v", rep)
	}
	rs := rep.Routes[0]
	if want := len(bench.ReportScenarios) * 2; len(rs.Points) != want {
		t.Fatalf("%d points, want %d", len(rs.Points), want)
	}
	for _, p := range rs.Points {
		if len(p.Trials) != 1 || p.Trials[0].Sent == 0 || p.Trials[0].Received == 0 || p.MedianPPS <= 0 {
			t.Errorf("%s %d B: %+v", p.Scenario, p.Size, p.Trials)
		}
		if p.Trials[0].Received > p.Trials[0].Sent {
			t.Errorf("%s %d B: received %d > sent %d", p.Scenario, p.Size, p.Trials[0].Received, p.Trials[0].Sent)
		}
	}
	if len(rs.NDR) != len(bench.ReportScenarios) {
		t.Fatalf("%d throughput searches, want %d", len(rs.NDR), len(bench.ReportScenarios))
	}
	for _, n := range rs.NDR {
		if len(n.Steps) == 0 || n.MaxPPS <= 0 || n.PPS > n.MaxPPS*1.001 || n.Size != 64 {
			t.Errorf("RFC 2544 %s: %+v", n.Scenario, n)
		}
		for _, s := range n.Steps {
			if s.Pass != (s.Sent > 0 && s.Received == s.Sent) {
				t.Errorf("RFC 2544 %s: step sent %d received %d pass=%v", n.Scenario, s.Sent, s.Received, s.Pass)
			}
		}
	}
	md, err := os.ReadFile(filepath.Join(dir, "report.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"| kernel-1cpu |", "| afxdp |", "RFC 2544 throughput, 64-byte frames", "| limited by |", "pps-routes-1.svg", rep.Kernel} {
		if !strings.Contains(string(md), want) {
			t.Errorf("report.md lacks %q", want)
		}
	}
	// --from renders the same report.md from report.json, without root.
	dir2 := t.TempDir()
	if out, err := xdpbench(context.Background(), "report", "--from", filepath.Join(dir, "report.json"), "--out", dir2); err != nil {
		t.Fatalf("report --from: %v\n%s", err, out)
	}
	if md2, err := os.ReadFile(filepath.Join(dir2, "report.md")); err != nil || string(md2) != string(md) {
		t.Errorf("report --from: %v; report.md differs from the run's:\n%s", err, md2)
	}
	for _, name := range []string{"pps-routes-1", "loss-routes-1"} {
		f, err := os.Open(filepath.Join(dir, name+".png"))
		if err != nil {
			t.Fatal(err)
		}
		img, err := png.Decode(f)
		f.Close()
		if err != nil || img.Bounds().Dx() < 300 {
			t.Errorf("%s.png: %v", name, err)
		}
		svg, err := os.ReadFile(filepath.Join(dir, name+".svg"))
		if err != nil {
			t.Fatal(err)
		}
		var root struct {
			XMLName xml.Name
		}
		if err := xml.Unmarshal(svg, &root); err != nil || root.XMLName.Local != "svg" {
			t.Errorf("%s.svg: %v, root %q", name, err, root.XMLName.Local)
		}
		for _, sc := range bench.ReportScenarios {
			if !strings.Contains(string(svg), sc) {
				t.Errorf("%s.svg has no legend entry %s", name, sc)
			}
		}
	}
}
