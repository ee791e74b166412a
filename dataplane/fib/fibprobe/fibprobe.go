// Package fibprobe loads a small XDP program that reads the FIB maps the
// way the router program does (bpf/fib.h), so tests and benchmarks can ask
// the kernel what it sees: lookups, nexthops, ECMP members, the flow hash
// and the cost of lookups run in a bpf_loop.
package fibprobe

//go:generate go tool bpf2go -tags linux -target bpfel -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" probe ../../../bpf/fib_probe.c

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"time"

	"github.com/cilium/ebpf"

	"github.com/xdprouter/xdprouter/dataplane/fib"
)

// IO mirrors struct probe_io.
type IO struct {
	Mode, Family uint32
	Addr, Src    [16]byte
	Proto, Ports uint32
	Hash         uint32
	Count, Chain uint32
	Result       uint32
	NexthopID    uint32
	NexthopOK    uint32
	Nexthop      fib.NexthopEntry
	Sum          uint64
}

// Modes of the probe.
const (
	ModeLookup = iota
	ModeHash
	ModeBench
)

// Probe is the loaded program, bound to one table's maps.
type Probe struct {
	objs probeObjects
}

// Load loads the probe with the table's maps in place of its own.
func Load(t *fib.Table) (*Probe, error) {
	spec, err := loadProbe()
	if err != nil {
		return nil, fmt.Errorf("load fib probe spec: %w", err)
	}
	repl, err := t.Maps().Bind(spec)
	if err != nil {
		return nil, err
	}
	p := &Probe{}
	if err := spec.LoadAndAssign(&p.objs, &ebpf.CollectionOptions{MapReplacements: repl}); err != nil {
		return nil, fmt.Errorf("load fib probe: %w", err)
	}
	return p, nil
}

// Close frees the program.
func (p *Probe) Close() error { return p.objs.Close() }

// Run runs the probe once on io and returns what it wrote back.
func (p *Probe) Run(io IO) (IO, error) {
	var in bytes.Buffer
	if err := binary.Write(&in, binary.LittleEndian, io); err != nil {
		return io, err
	}
	data := in.Bytes()
	opts := ebpf.RunOptions{Data: data, DataOut: make([]byte, len(data)+256)}
	ret, err := p.objs.FibProbe.Run(&opts)
	if err != nil {
		return io, fmt.Errorf("run fib probe: %w", err)
	}
	if ret != 3 {
		return io, fmt.Errorf("fib probe returned action %d", ret)
	}
	var out IO
	if err := binary.Read(bytes.NewReader(opts.DataOut), binary.LittleEndian, &out); err != nil {
		return io, err
	}
	return out, nil
}

// Addrs is how many addresses SetAddrs takes.
const Addrs = 1 << 20

// SetAddrs fills the probe's address array (IPv4, host order) for Bench.
func (p *Probe) SetAddrs(addrs []uint32) error {
	if len(addrs) != Addrs {
		return fmt.Errorf("fib probe takes %d addresses, got %d", Addrs, len(addrs))
	}
	keys := make([]uint32, Addrs)
	for i := range keys {
		keys[i] = uint32(i)
	}
	if _, err := p.objs.ProbeAddrs.BatchUpdate(keys, addrs, nil); err != nil {
		return fmt.Errorf("fill probe addresses: %w", err)
	}
	return nil
}

// Bench looks up n addresses (of SetAddrs, cycling) in the kernel, repeat
// times, and returns the time per lookup.
func (p *Probe) Bench(n uint32, chain bool, repeat uint32) (time.Duration, error) {
	io := IO{Mode: ModeBench, Count: n}
	if chain {
		io.Chain = 1
	}
	var in bytes.Buffer
	if err := binary.Write(&in, binary.LittleEndian, io); err != nil {
		return 0, err
	}
	_, d, err := p.objs.FibProbe.Benchmark(in.Bytes(), int(repeat), nil)
	if err != nil {
		return 0, fmt.Errorf("benchmark fib probe: %w", err)
	}
	return d / time.Duration(n), nil
}
