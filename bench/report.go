package bench

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"time"

	"github.com/xdprouter/xdprouter/bench/gen"
	"github.com/xdprouter/xdprouter/lab"
)

// ReportScenarios are the scenarios of the report, after the seed
// experiment: kernel forwarding untuned and tuned, XDP with the kernel's
// FIB, xdprouter's two engines, and the reference AF_XDP forwarder in C
// beside engine afxdp.
var ReportScenarios = []string{"kernel-1cpu", "kernel-tuned", "xdp-kfib", "xdp", "afxdp", "afxdp-ref"}

// ReportSizes are the frame sizes of the report (FCS included), the
// router text's and RFC 2544's Ethernet sizes.
var ReportSizes = []int{64, 128, 256, 512, 1024, 1518}

// SweepOptions control a report run; zero fields take defaults.
type SweepOptions struct {
	Scenarios []string      // default ReportScenarios
	Sizes     []int         // default ReportSizes (64 becomes 66 for IPv6)
	Routes    []string      // "1" and/or "full" (default both, 1 first)
	Family    int           // 4 (default) or 6
	Duration  time.Duration // per trial (default 3 s)
	Repeats   int           // trials per point (default 3)
	// NDRDuration is the length of one RFC 2544 throughput trial (default
	// 2 s); negative skips the search.
	NDRDuration time.Duration
	// NDRResolution ends the search when the gap between the highest
	// passing and the lowest failing rate is below this fraction of the
	// latter (default 0.02).
	NDRResolution float64
	// NDRLoss is the loss in percent a trial may have and still pass
	// (default 0: RFC 2544's zero loss).
	NDRLoss float64
	// NDRSize is the frame size of the search (default the smallest).
	NDRSize        int
	GenCPUs        []int // default: every CPU
	Queues         int   // default 2
	FullV4, FullV6 int   // scale the full table (see Options)
	// FullDst is where the full-table route set's traffic goes (default
	// the lab's /24, like the 1-route set); e.g. 128.0.0.0/2 spreads the
	// lookups across the table.
	FullDst netip.Prefix
	// Lab to use; nil brings up a private one and removes it afterwards.
	Lab *lab.Lab
}

func (o SweepOptions) withDefaults() SweepOptions {
	if len(o.Scenarios) == 0 {
		o.Scenarios = ReportScenarios
	}
	if o.Family == 0 {
		o.Family = 4
	}
	if len(o.Sizes) == 0 {
		o.Sizes = ReportSizes
	}
	o.Sizes = slices.Clone(o.Sizes)
	for i, s := range o.Sizes {
		if o.Family == 6 && s < gen.MinSize6 {
			o.Sizes[i] = gen.MinSize6
		}
	}
	slices.Sort(o.Sizes)
	o.Sizes = slices.Compact(o.Sizes)
	if len(o.Routes) == 0 {
		o.Routes = []string{"1", "full"}
	}
	o.Routes = slices.Clone(o.Routes)
	slices.Sort(o.Routes) // "1" before "full": the full table stays in the kernel
	o.Routes = slices.Compact(o.Routes)
	if o.Duration == 0 {
		o.Duration = 3 * time.Second
	}
	if o.Repeats == 0 {
		o.Repeats = 3
	}
	if o.NDRDuration == 0 {
		o.NDRDuration = 2 * time.Second
	}
	if o.NDRResolution == 0 {
		o.NDRResolution = 0.02
	}
	if o.NDRSize == 0 {
		o.NDRSize = o.Sizes[0]
	}
	if len(o.GenCPUs) == 0 {
		for i := range runtime.NumCPU() {
			o.GenCPUs = append(o.GenCPUs, i)
		}
	}
	if o.Queues == 0 {
		o.Queues = 2
	}
	return o
}

// Point is one scenario at one frame size: its trials and their summary.
type Point struct {
	Size int `json:"frame_size"`
	Result
}

// NDRStep is one trial of a throughput search.
type NDRStep struct {
	OfferedPPS float64 `json:"offered_pps"` // 0 = the generator's maximum
	SentPPS    float64 `json:"sent_pps"`    // what the generator achieved
	Trial
	Pass bool `json:"pass"`
}

// NDR is the RFC 2544 throughput of one scenario: the highest rate it
// forwarded with no loss (at most SweepOptions.NDRLoss), found by binary
// search between zero and the generator's maximum.
type NDR struct {
	Scenario string `json:"scenario"`
	Size     int    `json:"frame_size"`
	// PPS and Mbps are the sent rate of the highest passing trial (0 when
	// none passed); Offered is what that trial asked the generator for.
	PPS     float64 `json:"pps"`
	Mbps    float64 `json:"mbps"`
	Offered float64 `json:"offered_pps"`
	// MaxPPS is the generator's maximum sent rate (the first trial).
	MaxPPS float64   `json:"max_sent_pps"`
	Steps  []NDRStep `json:"steps"`
}

// Limit says what bounded the throughput: "generator" when the trial at
// the generator's maximum already passed (the path's limit lies above
// what the lab can offer), "path" when the search found where the path
// starts losing frames, "none passed" when not even the lowest rate tried
// passed.
func (n NDR) Limit() string {
	switch {
	case n.PPS == 0:
		return "none passed"
	case n.Offered == 0:
		return "generator"
	}
	return "path"
}

// RoutesSweep is every point and throughput search with one route set.
type RoutesSweep struct {
	Routes      string `json:"routes"` // "1" or "full"
	Description string `json:"description"`
	// Destinations is where this route set's traffic went.
	Destinations string  `json:"destinations,omitempty"`
	Points       []Point `json:"points"`
	NDR          []NDR   `json:"ndr,omitempty"`
}

// ScenarioInfo names a scenario in a report.
type ScenarioInfo struct {
	Name        string `json:"name"`
	Description string `json:"description"`
}

// Validate reports every bad option at once, before anything is set up.
func (o SweepOptions) Validate() error {
	o = o.withDefaults()
	var errs []error
	for _, n := range o.Scenarios {
		if _, err := ScenarioByName(n); err != nil {
			errs = append(errs, fmt.Errorf("scenarios: %w", err))
		}
	}
	for _, r := range o.Routes {
		if r != "1" && r != "full" {
			errs = append(errs, fmt.Errorf("routes %q: use 1 or full", r))
		}
	}
	if o.Family != 4 && o.Family != 6 {
		errs = append(errs, fmt.Errorf("family %d: use 4 or 6", o.Family))
	}
	min := gen.MinSize4
	if o.Family == 6 {
		min = gen.MinSize6
	}
	for _, size := range o.Sizes {
		if size < min || size > gen.MaxSize {
			errs = append(errs, fmt.Errorf("size %d: use %d to %d bytes (FCS included)", size, min, gen.MaxSize))
		}
	}
	if o.NDRResolution < 0 || o.NDRResolution >= 1 {
		errs = append(errs, fmt.Errorf("ndr resolution %g: use a fraction between 0 and 1", o.NDRResolution))
	}
	if o.FullDst.IsValid() && o.FullDst.Addr().Is4() != (o.Family == 4) {
		errs = append(errs, fmt.Errorf("full-table destinations %s: not IPv%d", o.FullDst, o.Family))
	}
	return errors.Join(errs...)
}

// SweepReport is the whole report: every scenario at every size with
// every route set, and the throughput searches.
type SweepReport struct {
	Started       time.Time      `json:"started"`
	Finished      time.Time      `json:"finished"`
	Kernel        string         `json:"kernel"`
	CPUModel      string         `json:"cpu_model"`
	CPUs          int            `json:"cpus"`
	Layout        string         `json:"layout"`
	Family        int            `json:"family"`
	Sizes         []int          `json:"frame_sizes"`
	Duration      float64        `json:"trial_seconds"`
	Repeats       int            `json:"repeats"`
	NDRDuration   float64        `json:"ndr_trial_seconds"`
	NDRResolution float64        `json:"ndr_resolution"`
	NDRLoss       float64        `json:"ndr_loss_pct"`
	GenCPUs       int            `json:"generator_cpus"`
	Destinations  string         `json:"destinations"`
	Scenarios     []ScenarioInfo `json:"scenarios"`
	Routes        []RoutesSweep  `json:"routes"`
}

// Sweep runs the report: for each route set and frame size every scenario
// Repeats times (scenarios interleaved, as Run does), then the RFC 2544
// throughput search of every scenario. progress, if set, gets one line
// per trial.
func Sweep(ctx context.Context, o SweepOptions, progress func(string)) (*SweepReport, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	o = o.withDefaults()
	var scen []Scenario
	for _, n := range o.Scenarios {
		s, _ := ScenarioByName(n)
		scen = append(scen, s)
	}
	l := o.Lab
	if l == nil {
		var err error
		l, err = lab.Up(ctx, lab.Config{Name: fmt.Sprintf("r%d", os.Getpid()), Queues: o.Queues})
		if err != nil {
			return nil, err
		}
		defer l.Down()
	}
	src, dst := gen.DefaultPrefixes(o.Family)
	rep := &SweepReport{
		Started: time.Now().UTC(), Kernel: kernelRelease(), CPUModel: cpuModel(), CPUs: runtime.NumCPU(),
		Layout: Layout(o.GenCPUs, l), Family: o.Family, Sizes: o.Sizes, Duration: o.Duration.Seconds(),
		Repeats: o.Repeats, NDRDuration: max(o.NDRDuration, 0).Seconds(), NDRResolution: o.NDRResolution,
		NDRLoss: o.NDRLoss, GenCPUs: len(o.GenCPUs), Destinations: dst.String(),
	}
	for _, s := range scen {
		rep.Scenarios = append(rep.Scenarios, ScenarioInfo{Name: s.Name, Description: s.Description})
	}
	for _, routes := range o.Routes {
		rt, err := newRouter(ctx, l, Options{Routes: routes, FullV4: o.FullV4, FullV6: o.FullV6}, progress)
		if err != nil {
			return nil, err
		}
		d := dst
		if routes == "full" && o.FullDst.IsValid() {
			d = o.FullDst
		}
		rs, err := sweepRoutes(ctx, o, scen, l, rt, src, d, progress)
		rt.close()
		if err != nil {
			return nil, err
		}
		rs.Routes, rs.Destinations = routes, d.String()
		rep.Routes = append(rep.Routes, *rs)
	}
	rep.Finished = time.Now().UTC()
	return rep, nil
}

func sweepRoutes(ctx context.Context, o SweepOptions, scen []Scenario, l *lab.Lab, rt *router,
	src, dst netip.Prefix, progress func(string)) (*RoutesSweep, error) {
	rs := &RoutesSweep{Description: rt.describe()}
	for _, size := range o.Sizes {
		g, err := gen.New(gen.Config{Namespace: l.GenNS, Links: gen.LabLinks(l), Src: src, Dst: dst,
			Size: size, Duration: o.Duration, CPUs: o.GenCPUs})
		if err != nil {
			return nil, err
		}
		label := fmt.Sprintf("routes %s, %4d B: ", routesLabel(rt), size)
		res, err := rounds(ctx, scen, l, rt, g, o.Repeats, label, progress)
		g.Close()
		if err != nil {
			return nil, err
		}
		for _, r := range res {
			rs.Points = append(rs.Points, Point{Size: size, Result: r})
		}
	}
	if o.NDRDuration < 0 {
		return rs, nil
	}
	for _, s := range scen {
		n, err := searchNDR(ctx, o, s, l, rt, src, dst, progress)
		if err != nil {
			return nil, err
		}
		rs.NDR = append(rs.NDR, *n)
	}
	return rs, nil
}

func routesLabel(rt *router) string {
	if rt.full {
		return "full"
	}
	return "1"
}

// searchNDR finds a scenario's RFC 2544 throughput: a trial at the
// generator's maximum first (passing ends the search there), then the
// binary search between the highest passing and lowest failing rate,
// starting from the rate the scenario forwarded at the maximum.
func searchNDR(ctx context.Context, o SweepOptions, s Scenario, l *lab.Lab, rt *router,
	src, dst netip.Prefix, progress func(string)) (*NDR, error) {
	n := &NDR{Scenario: s.Name, Size: o.NDRSize}
	step := func(rate float64) (NDRStep, error) {
		g, err := gen.New(gen.Config{Namespace: l.GenNS, Links: gen.LabLinks(l), Src: src, Dst: dst,
			Size: o.NDRSize, Rate: rate, Duration: o.NDRDuration, CPUs: o.GenCPUs})
		if err != nil {
			return NDRStep{}, err
		}
		defer g.Close()
		t, err := runTrial(ctx, s, l, rt, g)
		if err != nil {
			return NDRStep{}, fmt.Errorf("scenario %s: %w", s.Name, err)
		}
		st := NDRStep{OfferedPPS: rate, Trial: t, Pass: t.Sent > 0 && t.LossPct <= o.NDRLoss}
		if t.Seconds > 0 {
			st.SentPPS = float64(t.Sent) / t.Seconds
		}
		n.Steps = append(n.Steps, st)
		if progress != nil {
			verdict := "fail"
			if st.Pass {
				verdict = "pass"
			}
			offered := "maximum"
			if rate > 0 {
				offered = fmt.Sprintf("%.3f Mpps", rate/1e6)
			}
			progress(fmt.Sprintf("routes %s, RFC 2544 %s %d B: offered %s, sent %.3f Mpps, loss %.3f%%: %s",
				routesLabel(rt), s.Name, o.NDRSize, offered, st.SentPPS/1e6, t.LossPct, verdict))
		}
		if st.Pass && st.SentPPS > n.PPS {
			n.PPS, n.Mbps, n.Offered = st.SentPPS, st.SentPPS*float64(o.NDRSize)*8/1e6, rate
		}
		return st, nil
	}
	first, err := step(0)
	if err != nil {
		return nil, err
	}
	n.MaxPPS = first.SentPPS
	if first.Pass {
		return n, nil
	}
	lo, hi := 0.0, first.SentPPS
	next := first.PPS // what it forwarded at the maximum: near its capacity
	for i := 0; i < 20 && hi-lo > o.NDRResolution*hi; i++ {
		if next <= lo || next >= hi {
			next = (lo + hi) / 2
		}
		st, err := step(next)
		if err != nil {
			return nil, err
		}
		if st.Pass {
			lo = next
		} else {
			hi = next
		}
		next = (lo + hi) / 2
	}
	return n, nil
}
