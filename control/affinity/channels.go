package affinity

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/safchain/ethtool"
)

// Channels are an interface's queue counts as ethtool reports them (like
// `ethtool -l IF`): maximums and current, separate rx/tx or combined.
type Channels struct {
	MaxRx, MaxTx, MaxCombined int
	Rx, Tx, Combined          int
}

// Queues is the current queue count (combined, or the larger of rx and
// tx).
func (c Channels) Queues() int { return max(c.Combined, c.Rx, c.Tx) }

// Reduced returns c with n queues: combined when the NIC has combined
// channels, rx and tx otherwise.
func (c Channels) Reduced(n int) Channels {
	if c.Combined > 0 {
		c.Combined = n
		return c
	}
	c.Rx, c.Tx = min(c.Rx, n), min(c.Tx, n)
	return c
}

func (c Channels) String() string {
	if c.Combined > 0 {
		return fmt.Sprintf("combined %d", c.Combined)
	}
	return fmt.Sprintf("rx %d tx %d", c.Rx, c.Tx)
}

// ChannelIO reads and sets an interface's channels.
type ChannelIO interface {
	Channels(iface string) (Channels, error)
	SetChannels(iface string, c Channels) error
}

// Ethtool is the real ChannelIO: ethtool ioctls on the interfaces of the
// caller's network namespace (like `ethtool -l` and `ethtool -L`).
type Ethtool struct{}

// Channels reads an interface's channels.
func (Ethtool) Channels(iface string) (Channels, error) {
	e, err := ethtool.NewEthtool()
	if err != nil {
		return Channels{}, fmt.Errorf("ethtool: %w", err)
	}
	defer e.Close()
	c, err := e.GetChannels(iface)
	if err != nil {
		return Channels{}, fmt.Errorf("ethtool -l %s: %w", iface, err)
	}
	return Channels{MaxRx: int(c.MaxRx), MaxTx: int(c.MaxTx), MaxCombined: int(c.MaxCombined),
		Rx: int(c.RxCount), Tx: int(c.TxCount), Combined: int(c.CombinedCount)}, nil
}

// SetChannels sets an interface's channels.
func (Ethtool) SetChannels(iface string, c Channels) error {
	e, err := ethtool.NewEthtool()
	if err != nil {
		return fmt.Errorf("ethtool: %w", err)
	}
	defer e.Close()
	cur, err := e.GetChannels(iface)
	if err != nil {
		return fmt.Errorf("ethtool -l %s: %w", iface, err)
	}
	cur.RxCount, cur.TxCount, cur.CombinedCount = uint32(c.Rx), uint32(c.Tx), uint32(c.Combined)
	if _, err := e.SetChannels(iface, cur); err != nil {
		return fmt.Errorf("ethtool -L %s %s: %w", iface, c, err)
	}
	return nil
}

// Recorded is a ChannelIO over a recorded tree, where each interface's
// channels are kept in ethtool/IF/channels (JSON), since /sys does not
// hold them.
type Recorded struct{ Root string }

func (r Recorded) path(iface string) string {
	return filepath.Join(r.Root, "ethtool", iface, "channels")
}

// Channels reads the recorded channels.
func (r Recorded) Channels(iface string) (Channels, error) {
	b, err := os.ReadFile(r.path(iface))
	if err != nil {
		return Channels{}, fmt.Errorf("recorded channels of %s: %w", iface, err)
	}
	var c Channels
	return c, json.Unmarshal(b, &c)
}

// SetChannels records new channels, refusing more than the maximums as a
// driver does.
func (r Recorded) SetChannels(iface string, c Channels) error {
	old, err := r.Channels(iface)
	if err != nil {
		return err
	}
	if c.Rx > old.MaxRx || c.Tx > old.MaxTx || c.Combined > old.MaxCombined {
		return fmt.Errorf("ethtool -L %s %s: over the maximum (%w)", iface, c, errors.ErrUnsupported)
	}
	c.MaxRx, c.MaxTx, c.MaxCombined = old.MaxRx, old.MaxTx, old.MaxCombined
	b, _ := json.Marshal(c)
	return os.WriteFile(r.path(iface), b, 0o644)
}

// ChannelsFor picks the ChannelIO of a root: ethtool on "/", the recorded
// files elsewhere.
func ChannelsFor(root string) ChannelIO {
	if filepath.Clean(root) == "/" {
		return Ethtool{}
	}
	return Recorded{Root: root}
}
