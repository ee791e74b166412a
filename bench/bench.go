// Package bench runs forwarding scenarios on the lab and reports them: the
// generator sends for a fixed time, the sink counts what arrived, and each
// scenario is repeated and summarised by its median and spread. Every
// result names the CPU layout it ran under.
package bench

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/xdprouter/xdprouter/bench/afxdpref"
	"github.com/xdprouter/xdprouter/bench/gen"
	"github.com/xdprouter/xdprouter/bench/sink"
	"github.com/xdprouter/xdprouter/dataplane/engine"
	"github.com/xdprouter/xdprouter/dataplane/xdp"
	"github.com/xdprouter/xdprouter/internal/cpustat"
	"github.com/xdprouter/xdprouter/lab"
)

// Scenario is one way of moving the generator's frames.
type Scenario struct {
	// Name as given on the command line.
	Name string
	// Description for tables.
	Description string
	// wire counts at the router's ingress instead of the sink.
	wire bool
	// xdp, when set, attaches xdprouter's program with this FIB source to
	// the router's eth1 and eth2 (engine xdp).
	xdp *xdp.Source
	// afxdp attaches xdprouter's program with engine afxdp and runs the
	// AF_XDP workers (one per queue, worker q on CPU q).
	afxdp bool
	// ref runs the reference AF_XDP forwarder in C (package afxdpref)
	// with its minimal XDP program, or behind xdprouter's (refRouter).
	ref, refRouter bool
	// rxOnly makes the AF_XDP receivers (afxdp or ref) free every frame:
	// received frames are counted by them, the sink sees none.
	rxOnly bool
	// tune lays the router's queues onto CPUs for the trial (kernel
	// scenarios) and restores them afterwards.
	tune tuning
	// gen, when set, sends this scenario's frames instead of the run's
	// generator (the "-hot" twins of Options.Hot).
	gen *gen.Generator
}

func source(s xdp.Source) *xdp.Source { return &s }

// Scenarios are the scenarios this package knows, in report order.
var Scenarios = []Scenario{
	{Name: "wire", wire: true,
		Description: "generator into an XDP drop on the router's eth1/eth2: the most this lab delivers"},
	{Name: "kernel",
		Description: "Linux forwarding in the router namespace, eth1/eth2 -> eth3 -> sink"},
	{Name: "kernel-1cpu", tune: tuneOneCPU,
		Description: "Linux forwarding untuned: RPS steers every frame of eth1/eth2 to CPU 0, all IP forwarding on one CPU"},
	{Name: "kernel-tuned", tune: tuneAffinity,
		Description: "Linux forwarding tuned by xdprouter's affinity plan: queue q's XPS on CPU q on eth1/eth2/eth3, RPS off"},
	{Name: "xdp-kfib", xdp: source(xdp.SourceKernel),
		Description: "XDP forwarding with bpf_fib_lookup (the kernel's FIB, like xdp-forward)"},
	{Name: "xdp", xdp: source(xdp.SourceFIB),
		Description: "XDP forwarding with xdprouter's FIB (engine xdp)"},
	{Name: "xdp-static", xdp: source(xdp.SourceStatic),
		Description: "XDP forwarding with no lookup, every frame to one hop: the ceiling"},
	{Name: "afxdp", afxdp: true,
		Description: "xdprouter's AF_XDP engine: the program steers to a socket per queue, worker q (CPU q) forwards in Go"},
	{Name: "afxdp-ref", ref: true,
		Description: "the reference AF_XDP forwarder in C: a minimal program steers IPv4/IPv6 to a socket per queue, thread q (CPU q) moves each frame to eth3 with the same rewrite and no lookup"},
	{Name: "afxdp-ref-router", ref: true, refRouter: true,
		Description: "the reference AF_XDP forwarder behind xdprouter's program (engine afxdp steering): afxdp minus afxdp-ref-router is the Go worker's cost over the C one, afxdp-ref-router minus afxdp-ref the program's"},
	{Name: "afxdp-rx", afxdp: true, rxOnly: true,
		Description: "engine afxdp receiving only: the workers free every frame (counted by them, not the sink)"},
	{Name: "afxdp-ref-rx", ref: true, rxOnly: true,
		Description: "the reference AF_XDP forwarder receiving only: its threads free every frame"},
}

// ScenarioByName finds a scenario.
func ScenarioByName(name string) (Scenario, error) {
	var names []string
	for _, s := range Scenarios {
		if s.Name == name {
			return s, nil
		}
		names = append(names, s.Name)
	}
	return Scenario{}, fmt.Errorf("unknown scenario %q: use one of %s", name, strings.Join(names, ", "))
}

// Options control a benchmark run; zero fields take defaults.
type Options struct {
	Scenarios []string      // default: all
	Family    int           // 4 (default) or 6
	Size      int           // frame size with FCS (default 64, 66 for IPv6)
	Rate      float64       // offered pps, 0 = as fast as the generator can
	Duration  time.Duration // per trial (default 3 s)
	Repeats   int           // trials per scenario (default 3)
	GenCPUs   []int         // generator threads (default: every CPU)
	Queues    int           // veth queues (default 2)
	// Routes is "1" (the lab's one route, default) or "full": the full
	// table (tablegen.Load, scaled to FullV4/FullV6 when set) in the
	// kernel and in xdprouter's FIB, all via the lab's gateway, plus a
	// default route so any destination is routed.
	Routes         string
	FullV4, FullV6 int
	// FullNexthops is how many nexthop IDs (all via the gateway) the full
	// table's prefixes take in turn (default DefaultFullNexthops; 1 is
	// what a router with one upstream has).
	FullNexthops int
	// Dst is the destinations' prefix (default: the generator's, inside
	// one /24 or /120). A wide one, like 128.0.0.0/2 with full routes,
	// spreads lookups across the table.
	Dst netip.Prefix
	// Hot runs every scenario twice, interleaved: as asked, and as
	// "NAME-hot" with the generator's default destinations (the lab's own
	// /24 or /120), whose lookups stay in cache. With Routes "full" and a
	// wide Dst, the ratio is what spreading lookups over the table costs.
	Hot bool
	// Lab to use; nil brings up a private one and removes it afterwards.
	Lab *lab.Lab
}

func (o Options) withDefaults() Options {
	if len(o.Scenarios) == 0 {
		for _, s := range Scenarios {
			o.Scenarios = append(o.Scenarios, s.Name)
		}
	}
	if o.Family == 0 {
		o.Family = 4
	}
	if o.Size == 0 {
		o.Size = gen.MinSize4
		if o.Family == 6 {
			o.Size = gen.MinSize6
		}
	}
	if o.Duration == 0 {
		o.Duration = 3 * time.Second
	}
	if o.Repeats == 0 {
		o.Repeats = 3
	}
	if len(o.GenCPUs) == 0 {
		for i := range runtime.NumCPU() {
			o.GenCPUs = append(o.GenCPUs, i)
		}
	}
	if o.Queues == 0 {
		o.Queues = 2
	}
	if o.Routes == "" {
		o.Routes = "1"
	}
	return o
}

// Trial is one timed send.
type Trial struct {
	Sent     uint64          `json:"sent"`
	Received uint64          `json:"received"`
	Seconds  float64         `json:"seconds"`
	PPS      float64         `json:"pps"` // received per second
	Mbps     float64         `json:"mbps"`
	LossPct  float64         `json:"loss_pct"`
	CPU      []cpustat.Share `json:"cpu"`
	// Workers are the AF_XDP workers' figures (scenarios afxdp*: the
	// engine's workers or the reference's threads).
	Workers []WorkerTrial `json:"workers,omitempty"`
}

// WorkerTrial is one AF_XDP worker in one trial.
type WorkerTrial struct {
	Queue     int    `json:"queue"`
	CPU       int    `json:"cpu"`
	Received  uint64 `json:"received"`
	Forwarded uint64 `json:"forwarded"`
	Dropped   uint64 `json:"dropped"`
	// WorkNs is ns per received frame spent receiving, looking up,
	// rewriting and queueing for send; KickNs in sendto (the kernel's
	// copy into an skb and transmit) and reaping.
	WorkNs float64 `json:"work_ns_per_pkt"`
	KickNs float64 `json:"kick_ns_per_pkt"`
	// CPUPct is the worker thread's CPU use (user + system) over the trial.
	CPUPct float64 `json:"cpu_pct"`
	// UserNs and SysNs are the thread's user and system CPU time per
	// received frame: user is the worker's own code, system the kernel's
	// copy into an skb and transmit in sendto.
	UserNs float64 `json:"user_ns_per_pkt"`
	SysNs  float64 `json:"sys_ns_per_pkt"`
	// RingFull and FillEmpty are the kernel's drops on the socket (worker
	// too slow; no free frame to receive into).
	RingFull  uint64 `json:"rx_ring_full"`
	FillEmpty uint64 `json:"rx_fill_ring_empty"`
}

// Result is one scenario's trials and their summary.
type Result struct {
	Scenario    string  `json:"scenario"`
	Description string  `json:"description"`
	Trials      []Trial `json:"trials"`
	MedianPPS   float64 `json:"median_pps"`
	MinPPS      float64 `json:"min_pps"`
	MaxPPS      float64 `json:"max_pps"`
	MedianMbps  float64 `json:"median_mbps"`
	MedianLoss  float64 `json:"median_loss_pct"`
	// CPU is the trial with the median rate's per-CPU shares.
	CPU []cpustat.Share `json:"cpu"`
	// Workers are the median trial's AF_XDP workers (scenarios afxdp*).
	Workers []WorkerTrial `json:"workers,omitempty"`
}

// Report is a whole run.
type Report struct {
	Started  time.Time `json:"started"`
	Kernel   string    `json:"kernel"`
	CPUModel string    `json:"cpu_model"`
	CPUs     int       `json:"cpus"`
	Layout   string    `json:"layout"`
	Family   int       `json:"family"`
	Size     int       `json:"frame_size"`
	Rate     float64   `json:"offered_pps"` // 0 = maximum
	Duration float64   `json:"trial_seconds"`
	Repeats  int       `json:"repeats"`
	Routes   string    `json:"routes"`
	GenCPUs  int       `json:"generator_cpus"`
	Dst      string    `json:"destinations"`
	Results  []Result  `json:"results"`
}

// Run runs every chosen scenario Repeats times and summarises them.
// progress, if set, gets one line per trial.
func Run(ctx context.Context, o Options, progress func(string)) (*Report, error) {
	o = o.withDefaults()
	var scen []Scenario
	for _, n := range o.Scenarios {
		s, err := ScenarioByName(n)
		if err != nil {
			return nil, err
		}
		scen = append(scen, s)
	}
	if o.Routes != "1" && o.Routes != "full" {
		return nil, fmt.Errorf("routes %q: use 1 or full", o.Routes)
	}
	if o.FullNexthops < 0 || o.FullNexthops > 1024 {
		return nil, fmt.Errorf("full-nexthops %d: use 1 to 1024", o.FullNexthops)
	}
	l := o.Lab
	if l == nil {
		name := fmt.Sprintf("b%d", os.Getpid())
		var err error
		l, err = lab.Up(ctx, lab.Config{Name: name, Queues: o.Queues})
		if err != nil {
			return nil, err
		}
		defer l.Down()
	}
	src, dst := gen.DefaultPrefixes(o.Family)
	hotDst := dst
	if o.Dst.IsValid() {
		dst = o.Dst
	}
	rt, err := newRouter(ctx, l, o, progress)
	if err != nil {
		return nil, err
	}
	defer rt.close()
	newGen := func(dst netip.Prefix) (*gen.Generator, error) {
		return gen.New(gen.Config{
			Namespace: l.GenNS, Links: gen.LabLinks(l), Src: src, Dst: dst, Size: o.Size,
			Rate: o.Rate, Duration: o.Duration, CPUs: o.GenCPUs,
		})
	}
	g, err := newGen(dst)
	if err != nil {
		return nil, err
	}
	defer g.Close()
	if o.Hot {
		hot, err := newGen(hotDst)
		if err != nil {
			return nil, err
		}
		defer hot.Close()
		for _, s := range scen[:len(scen):len(scen)] {
			s.Name, s.gen = s.Name+"-hot", hot
			s.Description += fmt.Sprintf(" (destinations in %s: lookups stay in cache)", hotDst)
			scen = append(scen, s)
		}
	}

	rep := &Report{
		Started: time.Now().UTC(), Kernel: kernelRelease(), CPUModel: cpuModel(), CPUs: runtime.NumCPU(),
		Layout: Layout(o.GenCPUs, l), Family: o.Family, Size: o.Size, Rate: o.Rate,
		Duration: o.Duration.Seconds(), Repeats: o.Repeats, Routes: rt.describe(), Dst: dst.String(),
		GenCPUs: len(o.GenCPUs),
	}
	results, err := rounds(ctx, scen, l, rt, g, o.Repeats, "", progress)
	if err != nil {
		return nil, err
	}
	rep.Results = results
	return rep, nil
}

// rounds runs every scenario repeats times and summarises each. Scenarios
// take turns, one trial each, and every trial attaches its sink and
// program afresh: on veth one attachment's rate differs from the next by
// up to ±15 % (measured), so a median over trials of one attachment would
// hide that, and slow drift would favour whichever scenario ran first.
// label prefixes the progress lines.
func rounds(ctx context.Context, scen []Scenario, l *lab.Lab, rt *router, g *gen.Generator, repeats int,
	label string, progress func(string)) ([]Result, error) {
	results := make([]Result, len(scen))
	for i, s := range scen {
		results[i] = Result{Scenario: s.Name, Description: s.Description}
	}
	for rep := range repeats {
		for i, s := range scen {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			t, err := runTrial(ctx, s, l, rt, g)
			if err != nil {
				return nil, fmt.Errorf("scenario %s: %w", s.Name, err)
			}
			results[i].Trials = append(results[i].Trials, t)
			if progress != nil {
				progress(fmt.Sprintf("%s%-12s trial %d/%d: sent %d, received %d in %.2fs: %.3f Mpps, loss %.2f%%",
					label, s.Name, rep+1, repeats, t.Sent, t.Received, t.Seconds, t.PPS/1e6, t.LossPct))
			}
		}
	}
	for i := range results {
		summarise(&results[i])
	}
	return results, nil
}

// runTrial attaches a scenario's sink (and program), sends once, and
// detaches.
func runTrial(ctx context.Context, s Scenario, l *lab.Lab, rt *router, g *gen.Generator) (_ Trial, err error) {
	if s.gen != nil {
		g = s.gen
	}
	var sk *sink.Sink
	if s.wire {
		var ifs []string
		for _, lk := range l.Ingress {
			ifs = append(ifs, lk.B.Name)
		}
		sk, err = sink.Attach(l.RouterNS, ifs, sink.DefaultPort)
	} else {
		sk, err = sink.Attach(l.SinkNS, []string{l.Egress.B.Name}, sink.DefaultPort)
	}
	if err != nil {
		return Trial{}, err
	}
	defer sk.Close()
	if s.tune != tuneNone {
		record, terr := tune(l, s.tune)
		if terr != nil {
			return Trial{}, terr
		}
		defer func() {
			if uerr := untune(l, record); uerr != nil && err == nil {
				err = uerr
			}
		}()
	}
	if s.xdp != nil {
		prog, err := rt.attach(*s.xdp, xdp.EngineXDP)
		if err != nil {
			return Trial{}, err
		}
		defer prog.Close()
	}
	var eng *engine.Engine
	if s.afxdp {
		prog, err := rt.attach(xdp.SourceFIB, xdp.EngineAFXDP)
		if err != nil {
			return Trial{}, err
		}
		defer prog.Close()
		if eng, err = rt.startEngine(prog, s.rxOnly); err != nil {
			return Trial{}, err
		}
		defer eng.Stop()
	}
	var ref *afxdpref.Ref
	if s.ref {
		var prog *xdp.Program
		if s.refRouter {
			if prog, err = rt.attach(xdp.SourceFIB, xdp.EngineAFXDP); err != nil {
				return Trial{}, err
			}
			defer prog.Close()
		}
		if ref, err = rt.startRef(ctx, prog, s.rxOnly); err != nil {
			return Trial{}, err
		}
		defer func() {
			if ref != nil {
				_, _ = ref.Stop()
			}
		}()
	}
	var w0 []engine.WorkerStats
	if eng != nil {
		w0 = eng.Stats()
	}
	before, err := sk.Counters()
	if err != nil {
		return Trial{}, err
	}
	cpu0, err := cpustat.Read()
	if err != nil {
		return Trial{}, err
	}
	sent, err := g.Run(ctx)
	if err != nil {
		return Trial{}, err
	}
	cpu1, err := cpustat.Read()
	if err != nil {
		return Trial{}, err
	}
	var t Trial
	if s.rxOnly {
		// Counted by the receivers, which take what is left on their rx
		// rings within a few milliseconds; the sink sees nothing.
		time.Sleep(100 * time.Millisecond)
		t = Trial{Sent: sent.Sent, Seconds: sent.Elapsed.Seconds()}
	} else {
		// Whatever is still in flight lands within a few milliseconds.
		after, err := sk.WaitMatched(ctx, before.MatchedPackets+sent.Sent, 200*time.Millisecond)
		if err != nil {
			return Trial{}, err
		}
		t = trial(sent, before, after)
	}
	t.CPU = cpustat.Shares(cpu0, cpu1)
	if eng != nil {
		t.Workers = workerTrials(w0, eng.Stats(), sent.Elapsed)
	}
	if ref != nil {
		st, err := ref.Stop()
		ref = nil
		if err != nil {
			return Trial{}, err
		}
		t.Workers = refTrials(st, sent.Elapsed)
	}
	if s.rxOnly {
		for _, w := range t.Workers {
			t.Received += w.Received
		}
		if t.Seconds > 0 {
			t.PPS = float64(min(t.Received, t.Sent)) / t.Seconds
		}
		if t.Received < t.Sent {
			t.LossPct = 100 * float64(t.Sent-t.Received) / float64(t.Sent)
		}
	}
	return t, nil
}

// refTrials are the reference's threads as worker figures (its CPU time
// counts from when it was ready, so it covers the trial and a few
// milliseconds around it).
func refTrials(st []afxdpref.Stats, dt time.Duration) []WorkerTrial {
	out := make([]WorkerTrial, 0, len(st))
	for _, s := range st {
		wt := WorkerTrial{Queue: s.Queue, CPU: s.CPU, Received: s.Rx, Forwarded: s.Tx, Dropped: s.Drop,
			RingFull: s.RingFull, FillEmpty: s.FillRingEmpty}
		if s.Rx > 0 {
			wt.UserNs = float64(s.User) / float64(s.Rx)
			wt.SysNs = float64(s.System) / float64(s.Rx)
		}
		if dt > 0 {
			wt.CPUPct = 100 * float64(s.User+s.System) / float64(dt)
		}
		out = append(out, wt)
	}
	return out
}

func trial(sent gen.Result, before, after sink.Counters) Trial {
	recv := after.MatchedPackets - before.MatchedPackets
	r := sink.RateBetween(before, after, sent.Elapsed)
	t := Trial{Sent: sent.Sent, Received: recv, Seconds: sent.Elapsed.Seconds(), PPS: r.PPS, Mbps: r.Mbps}
	if sent.Sent > 0 && recv < sent.Sent {
		t.LossPct = 100 * float64(sent.Sent-recv) / float64(sent.Sent)
	}
	return t
}

func workerTrials(a, b []engine.WorkerStats, dt time.Duration) []WorkerTrial {
	var out []WorkerTrial
	for i := range b {
		x, y := a[i], b[i]
		rx := y.RxPackets - x.RxPackets
		wt := WorkerTrial{Queue: y.Queue, CPU: y.CPU, Received: rx, Forwarded: y.Forwarded - x.Forwarded,
			Dropped: y.Dropped() - x.Dropped()}
		if rx > 0 {
			wt.WorkNs = float64(y.WorkNs-x.WorkNs) / float64(rx)
			wt.KickNs = float64(y.KickNs-x.KickNs) / float64(rx)
			wt.UserNs = float64(y.UserTime-x.UserTime) / float64(rx)
			wt.SysNs = float64(y.SystemTime-x.SystemTime) / float64(rx)
		}
		if dt > 0 {
			wt.CPUPct = 100 * float64(y.UserTime+y.SystemTime-x.UserTime-x.SystemTime) / float64(dt)
		}
		for j := range y.Sockets {
			if j < len(x.Sockets) {
				wt.RingFull += y.Sockets[j].Kernel.Rx_ring_full - x.Sockets[j].Kernel.Rx_ring_full
				wt.FillEmpty += y.Sockets[j].Kernel.Rx_fill_ring_empty_descs - x.Sockets[j].Kernel.Rx_fill_ring_empty_descs
			}
		}
		out = append(out, wt)
	}
	return out
}

func summarise(r *Result) {
	if len(r.Trials) == 0 {
		return
	}
	idx := make([]int, len(r.Trials))
	for i := range idx {
		idx[i] = i
	}
	slices.SortFunc(idx, func(a, b int) int {
		if r.Trials[a].PPS < r.Trials[b].PPS {
			return -1
		}
		if r.Trials[a].PPS > r.Trials[b].PPS {
			return 1
		}
		return 0
	})
	med := r.Trials[idx[len(idx)/2]]
	r.MedianPPS, r.MedianMbps, r.CPU, r.Workers = med.PPS, med.Mbps, med.CPU, med.Workers
	r.MinPPS, r.MaxPPS = r.Trials[idx[0]].PPS, r.Trials[idx[len(idx)-1]].PPS
	losses := make([]float64, len(r.Trials))
	for i, t := range r.Trials {
		losses[i] = t.LossPct
	}
	slices.Sort(losses)
	r.MedianLoss = losses[len(losses)/2]
}

// Layout describes where the work of a lab run happens.
func Layout(genCPUs []int, l *lab.Lab) string {
	var links []string
	for i, c := range genCPUs {
		links = append(links, fmt.Sprintf("cpu%d->%s", c, l.Ingress[i%len(l.Ingress)].A.Name))
	}
	var workers []string
	for q := range l.Queues {
		workers = append(workers, fmt.Sprintf("q%d->cpu%d", q, q%runtime.NumCPU()))
	}
	return fmt.Sprintf("generator: one thread per CPU (%s); router and sink: NAPI on the sending CPU (veth, no threaded NAPI); %d queues per veth; afxdp workers %s, sharing those CPUs with the generator",
		strings.Join(links, ", "), l.Queues, strings.Join(workers, ", "))
}

func kernelRelease() string {
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(b))
}

func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}
