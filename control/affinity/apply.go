package affinity

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Write is one change an apply makes, with the value it replaces: a file
// below the root, or (Channels set) an interface's channel counts.
type Write struct {
	Path  string `json:"path"` // below the root, e.g. proc/irq/53/smp_affinity_list; the interface for channels
	Value string `json:"value"`
	Old   string `json:"old"`
	What  string `json:"what"` // e.g. "eth1 queue 0 IRQ 53 -> cpu2"
	// Channels, when set, makes this a channel change (like `ethtool -L`):
	// Value and Old are JSON-encoded Channels.
	Channels bool `json:"channels,omitempty"`
}

// Writes lists what applying the plan changes: each queue IRQ's
// smp_affinity_list, each tx queue's xps_cpus, each rx queue's rps_cpus
// (off unless the plan spreads a single queue). Files already holding the
// value are left out.
func (p *Plan) Writes(h *Host, ifs []*Iface) ([]Write, error) {
	ncpu := 0
	for _, c := range h.CPUs {
		ncpu = max(ncpu, c.ID+1)
	}
	var ws []Write
	add := func(path, value, what string, same func(old string) bool) error {
		old, err := readTrim(h.path(path))
		if errors.Is(err, os.ErrNotExist) && !strings.HasPrefix(path, "proc/irq/") {
			return nil // no XPS/RPS knob here (one queue, or a kernel without it)
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", path, err)
		}
		if !same(old) {
			ws = append(ws, Write{Path: path, Value: value, Old: old, What: what})
		}
		return nil
	}
	sameList := func(v []int) func(string) bool {
		return func(old string) bool { l, err := ParseList(old); return err == nil && slices.Equal(l, v) }
	}
	sameMask := func(v []int) func(string) bool {
		return func(old string) bool { l, err := ParseMask(old); return err == nil && slices.Equal(l, v) }
	}
	for i, ip := range p.Ifaces {
		ifc := ifs[i]
		// Fewer queues first: the IRQs of the queues that go away vanish.
		if c := ifc.Channels; c != nil && ip.Queues < c.Queues() {
			nc := c.Reduced(ip.Queues)
			nv, _ := json.Marshal(nc)
			ov, _ := json.Marshal(*c)
			ws = append(ws, Write{Path: ifc.Name, Value: string(nv), Old: string(ov), Channels: true,
				What: fmt.Sprintf("%s channels %s -> %s (like `ethtool -L %s %s`)", ifc.Name, c, nc, ifc.Name, nc)})
		}
		for _, a := range ip.Assign {
			for _, irq := range a.IRQs {
				err := add(fmt.Sprintf("proc/irq/%d/smp_affinity_list", irq), FormatList([]int{a.CPU}),
					fmt.Sprintf("%s queue %d IRQ %d -> cpu%d", ifc.Name, a.Queue, irq, a.CPU), sameList([]int{a.CPU}))
				if err != nil {
					return nil, err
				}
			}
		}
		for q := range ifc.TxQueues {
			cpus := ip.XPS[q]
			err := add(fmt.Sprintf("sys/class/net/%s/queues/tx-%d/xps_cpus", ifc.Name, q), FormatMask(cpus, ncpu),
				fmt.Sprintf("%s tx queue %d XPS -> cpus %s", ifc.Name, q, FormatList(cpus)), sameMask(cpus))
			if err != nil {
				return nil, err
			}
		}
		for q := range ifc.RxQueues {
			cpus := ip.RPS[q]
			err := add(fmt.Sprintf("sys/class/net/%s/queues/rx-%d/rps_cpus", ifc.Name, q), FormatMask(cpus, ncpu),
				fmt.Sprintf("%s rx queue %d RPS -> %s", ifc.Name, q, orOff(cpus)), sameMask(cpus))
			if err != nil {
				return nil, err
			}
		}
	}
	return ws, nil
}

func orOff(cpus []int) string {
	if len(cpus) == 0 {
		return "off"
	}
	return "cpus " + FormatList(cpus)
}

// Apply performs the writes below root, reading each back; on the first
// failure it restores what it had written and returns the error. The
// record it returns is what Restore needs.
//
// It does not wait for effective_affinity_list: on x86 the kernel moves
// an IRQ lazily, at its next interrupt (measured here: an idle virtio
// IRQ's effective CPU stayed put after the write), so an idle NIC shows
// the old CPU until traffic arrives. `xdprouter check` reports queues
// whose effective CPU still differs from the plan.
func Apply(root string, ws []Write) ([]Write, error) {
	var done []Write
	for _, w := range ws {
		if w.Channels {
			if err := setChannels(root, w.Path, w.Value); err != nil {
				// The set may have happened and only its read-back failed:
				// undo it too (restoring a count the NIC already has is
				// harmless).
				return nil, undo(root, append(done, w), fmt.Errorf("%s: %w", w.What, err))
			}
			done = append(done, w)
			continue
		}
		path := filepath.Join(root, w.Path)
		if err := os.WriteFile(path, []byte(w.Value+"\n"), 0o644); err != nil {
			return nil, undo(root, done, fmt.Errorf("%s: write %s to %s: %w", w.What, w.Value, w.Path, err))
		}
		done = append(done, w)
		got, err := readTrim(path)
		if err != nil || !sameValue(w.Path, got, w.Value) {
			return nil, undo(root, done, fmt.Errorf("%s: wrote %s to %s, read back %q", w.What, w.Value, w.Path, got))
		}
	}
	return done, nil
}

// sameValue compares two values of a file as CPU sets.
func sameValue(path, a, b string) bool {
	parse := ParseMask
	if strings.HasSuffix(path, "_list") {
		parse = ParseList
	}
	x, err1 := parse(a)
	y, err2 := parse(b)
	return err1 == nil && err2 == nil && slices.Equal(x, y)
}

// Restore writes back the old values of an apply record, last first.
func Restore(root string, record []Write) error {
	var errs []string
	for i := len(record) - 1; i >= 0; i-- {
		w := record[i]
		if w.Channels {
			if err := setChannels(root, w.Path, w.Old); err != nil {
				errs = append(errs, err.Error())
			}
			continue
		}
		if err := os.WriteFile(filepath.Join(root, w.Path), []byte(w.Old+"\n"), 0o644); err != nil {
			errs = append(errs, fmt.Sprintf("%s: %v", w.Path, err))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("restore: %s", strings.Join(errs, "; "))
	}
	return nil
}

// setChannels sets an interface's channels from their JSON form and
// reads them back.
func setChannels(root, iface, value string) error {
	var c Channels
	if err := json.Unmarshal([]byte(value), &c); err != nil {
		return fmt.Errorf("channels %q: %w", value, err)
	}
	io := ChannelsFor(root)
	if err := io.SetChannels(iface, c); err != nil {
		return err
	}
	got, err := io.Channels(iface)
	if err != nil {
		return err
	}
	if got.Rx != c.Rx || got.Tx != c.Tx || got.Combined != c.Combined {
		return fmt.Errorf("%s: set channels %s, read back %s", iface, c, got)
	}
	return nil
}

// SaveRecord and LoadRecord keep an apply record in a file, so that a
// later `restore` (or the daemon's exit) puts everything back.
func SaveRecord(path string, record []Write) error {
	b, err := json.MarshalIndent(record, "", "  ")
	if err != nil {
		return err
	}
	// Written aside and renamed: a crash leaves the old record or the new
	// one, never half of one.
	// Synced before and after the rename, so a power loss leaves one of
	// them whole.
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return err
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}

// ErrNotRestored marks an Apply failure whose undo failed too: the host
// is left partly changed, and the record must be kept.
var ErrNotRestored = errors.New("the writes made so far could not all be undone")

// undo restores what Apply wrote before failing with err.
func undo(root string, done []Write, err error) error {
	if rerr := Restore(root, done); rerr != nil {
		return fmt.Errorf("%w; %w: %v", err, ErrNotRestored, rerr)
	}
	return fmt.Errorf("%w (undone)", err)
}

// LoadRecord reads a record SaveRecord wrote.
func LoadRecord(path string) ([]Write, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read affinity record: %w", err)
	}
	var r []Write
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("affinity record %s: %w", path, err)
	}
	return r, nil
}
