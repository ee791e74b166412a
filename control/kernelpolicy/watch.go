package kernelpolicy

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"reflect"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xdprouter/xdprouter/dataplane/xdp"
	"github.com/xdprouter/xdprouter/internal/netnsrun"
)

// Dataplane is where a Watcher writes the policies (xdp.Program).
type Dataplane interface {
	SetPolicy(ifindex int, pol xdp.Policy) error
	SetPolicyRules(v4, v6 []xdp.PolicyRule) error
}

// Config is what a Watcher follows.
type Config struct {
	// Namespace of the interfaces ("" = ours).
	Namespace string
	// Interfaces are the served ifindexes.
	Interfaces []int
	// Dataplane receives each interface's policy.
	Dataplane Dataplane
	// BypassFirewall keeps the fast path despite nftables, iptables, tc
	// and policy rules: the operator says they do not matter to forwarded
	// traffic. Dangerous: forwarded frames then skip them.
	BypassFirewall bool
	// Interval re-reads the settings the kernel sends no notification for
	// (send_redirects, disable_ipv6, tcx programs); default 1 s.
	Interval time.Duration
	// TablesInterval polls the legacy iptables table lists, which send no
	// notification either but are a firewall (a table appearing sends the
	// family to the kernel); default 5 ms.
	TablesInterval time.Duration
	// Logger logs what changed (default: discard).
	Logger *slog.Logger
}

// Watcher keeps the dataplane's policies equal to the kernel's settings:
// it re-reads them on every notification of links, rules, tc, netconf
// (forwarding, rp_filter) and nftables, and every Interval.
type Watcher struct {
	cfg     Config
	fds     []int       // rtnetlink settings, IPv4 routes, nftables (when there)
	tables  [2]*os.File // the namespace's legacy iptables table lists (legacyTables; nil until there)
	seen    []byte      // their last content
	buf     [512]byte   // one list, read every TablesInterval
	scratch []byte      // the lists now
	bypass  atomic.Bool // Config.BypassFirewall, changed by SetBypass
	force   atomic.Bool // re-read at the next turn of Run
	upMu    sync.Mutex  // serialises Update
	mu      sync.Mutex  // guards last
	last    Snapshot
}

// rtnlGroups are the rtnetlink groups whose messages can change a
// policy: links, tc, IPv4/IPv6 rules and netconf, and IPv6 interface
// info and addresses (disable_ipv6 has no netconf message, but its
// effects do: the IPv6 addresses go, the interface's IPv6 state changes).
var rtnlGroups = []uint32{unix.RTNLGRP_LINK, unix.RTNLGRP_TC, unix.RTNLGRP_IPV4_RULE, unix.RTNLGRP_IPV6_RULE,
	unix.RTNLGRP_IPV4_NETCONF, unix.RTNLGRP_IPV6_NETCONF, unix.RTNLGRP_IPV6_IFINFO, unix.RTNLGRP_IPV6_IFADDR}

// nfnlgrpNftables is NFNLGRP_NFTABLES: every nftables change.
const nfnlgrpNftables = 7

// NewWatcher subscribes to the notifications, reads the settings once and
// applies them, so the dataplane is faithful when it returns.
func NewWatcher(cfg Config) (*Watcher, error) {
	if cfg.Interval == 0 {
		cfg.Interval = time.Second
	}
	if cfg.TablesInterval == 0 {
		cfg.TablesInterval = 5 * time.Millisecond
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	w := &Watcher{cfg: cfg}
	w.bypass.Store(cfg.BypassFirewall)
	err := netnsrun.Do(cfg.Namespace, func() error {
		fd, err := subscribe(unix.NETLINK_ROUTE, rtnlGroups)
		if err != nil {
			return fmt.Errorf("subscribe to rtnetlink: %w", err)
		}
		w.fds = append(w.fds, fd)
		// IPv4 routes, for a custom local route (Linux then validates
		// every source); routes come in bursts of thousands (BGP), so
		// only their headers are looked at, with room to spare.
		if fd, err = subscribe(unix.NETLINK_ROUTE, []uint32{unix.RTNLGRP_IPV4_ROUTE}); err != nil {
			return fmt.Errorf("subscribe to route notifications: %w", err)
		}
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20)
		w.fds = append(w.fds, fd)
		w.openTables()
		if fd, err = subscribe(unix.NETLINK_NETFILTER, []uint32{nfnlgrpNftables}); err == nil {
			w.fds = append(w.fds, fd)
		} else {
			cfg.Logger.Warn("no nftables notifications: changes seen every interval only", "err", err)
		}
		return nil
	})
	if err != nil {
		w.Close()
		return nil, err
	}
	w.tablesChanged()
	if err := w.Update(); err != nil {
		w.Close()
		return nil, err
	}
	return w, nil
}

// legacyTables are the files listing the legacy iptables tables loaded in
// a namespace (/proc/net).
var legacyTables = []string{"ip_tables_names", "ip6_tables_names"}

// openTables opens the legacy iptables table lists not open yet; it runs
// inside the namespace, and the files opened stay the namespace's. They
// appear when the first legacy table is used (ip_tables loaded).
func (w *Watcher) openTables() {
	for i, name := range legacyTables {
		if w.tables[i] == nil {
			if f, err := os.Open("/proc/thread-self/net/" + name); err == nil {
				w.tables[i] = f
			}
		}
	}
}

// tablesChanged reports whether the legacy iptables table lists changed
// since the last call.
func (w *Watcher) tablesChanged() bool {
	now := w.scratch[:0]
	for _, f := range w.tables {
		if f == nil {
			continue
		}
		n, err := f.ReadAt(w.buf[:], 0)
		if err != nil && err != io.EOF {
			return true // unreadable: read the settings again
		}
		now = append(append(now, w.buf[:n]...), 0)
	}
	w.scratch = now
	if bytes.Equal(now, w.seen) {
		return false
	}
	w.seen = append(w.seen[:0], now...)
	return true
}

func subscribe(proto int, groups []uint32) (int, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, proto)
	if err != nil {
		return -1, err
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return -1, err
	}
	for _, g := range groups {
		if err := unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_ADD_MEMBERSHIP, int(g)); err != nil {
			unix.Close(fd)
			return -1, fmt.Errorf("join group %d: %w", g, err)
		}
	}
	return fd, nil
}

// SetBypass changes Config.BypassFirewall; Run applies it within its
// next turn (100 ms).
func (w *Watcher) SetBypass(b bool) {
	w.bypass.Store(b)
	w.force.Store(true)
}

// Update reads the settings now and applies what changed. When they
// cannot be read, every served interface sends all its frames to the
// kernel until they can (the fast path never guesses), and the error is
// returned.
func (w *Watcher) Update() error {
	w.upMu.Lock()
	defer w.upMu.Unlock()
	s, err := Read(w.cfg.Namespace, w.cfg.Interfaces, w.bypass.Load())
	if err != nil {
		s = Snapshot{Policies: map[int]xdp.Policy{}, Kernel4: []string{"kernel settings unreadable: " + err.Error()}}
		s.Kernel6 = s.Kernel4
		for _, ifindex := range w.cfg.Interfaces {
			s.Policies[ifindex] = xdp.Policy{Flags: xdp.Kernel4 | xdp.Kernel6}
		}
	}
	// Rules first: a frame a new rule selects must not take the fast
	// path once the rule's reason is gone from the flags.
	if !reflect.DeepEqual(s.Rules4, w.last.Rules4) || !reflect.DeepEqual(s.Rules6, w.last.Rules6) || w.last.Policies == nil {
		if serr := w.cfg.Dataplane.SetPolicyRules(s.Rules4, s.Rules6); serr != nil {
			return errors.Join(err, serr)
		}
	}
	for ifindex, pol := range s.Policies {
		if old, ok := w.last.Policies[ifindex]; ok && reflect.DeepEqual(old, pol) {
			continue
		}
		if serr := w.cfg.Dataplane.SetPolicy(ifindex, pol); serr != nil {
			w.mu.Lock()
			w.last.Policies = nil // some were written: the next Update writes all
			w.mu.Unlock()
			return errors.Join(err, serr)
		}
	}
	if !reflect.DeepEqual(s.Interfaces, w.last.Interfaces) || !reflect.DeepEqual(s.Kernel4, w.last.Kernel4) || !reflect.DeepEqual(s.Rules, w.last.Rules) ||
		!reflect.DeepEqual(s.Kernel6, w.last.Kernel6) || !reflect.DeepEqual(s.Bypassed, w.last.Bypassed) {
		w.cfg.Logger.Info("kernel policy", "kernel_ipv4", s.Kernel4, "kernel_ipv6", s.Kernel6, "rules", s.Rules, "bypassed", s.Bypassed)
		for _, ifc := range s.Interfaces {
			if len(ifc.Kernel) > 0 {
				w.cfg.Logger.Info("to the kernel", "iface", ifc.Name, "why", ifc.Kernel)
			}
		}
	}
	w.mu.Lock()
	w.last = s
	w.mu.Unlock()
	if err != nil {
		return fmt.Errorf("read the kernel's policy (every frame to the kernel meanwhile): %w", err)
	}
	return nil
}

// guard sends every served interface's frames to the kernel until the
// next Update, which writes every policy again.
func (w *Watcher) guard() {
	w.upMu.Lock()
	defer w.upMu.Unlock()
	for _, ifindex := range w.cfg.Interfaces {
		pol := w.last.Policies[ifindex]
		pol.Flags |= xdp.Kernel4 | xdp.Kernel6
		if err := w.cfg.Dataplane.SetPolicy(ifindex, pol); err != nil {
			w.cfg.Logger.Error("send frames to the kernel while the policy is read", "ifindex", ifindex, "err", err)
		}
	}
	w.mu.Lock()
	w.last.Policies = nil // the next Update writes them all
	w.mu.Unlock()
}

// Snapshot returns the last snapshot applied.
func (w *Watcher) Snapshot() Snapshot {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.last
}

// Run follows the notifications until ctx ends; a burst of them is read
// once. A frame may still take the fast path for one turn of the loop
// (microseconds) after a change that arrived while a read was applied.
func (w *Watcher) Run(ctx context.Context) error {
	pfds := make([]unix.PollFd, len(w.fds))
	buf := make([]byte, 1<<16)
	next := time.Now().Add(w.cfg.Interval)
	for ctx.Err() == nil {
		for i, fd := range w.fds {
			pfds[i] = unix.PollFd{Fd: int32(fd), Events: unix.POLLIN}
		}
		wait := min(time.Until(next), 100*time.Millisecond)
		if w.tables[0] != nil || w.tables[1] != nil {
			wait = min(wait, w.cfg.TablesInterval)
		}
		n, err := unix.Poll(pfds, int(max(wait, 0)/time.Millisecond))
		if err != nil && err != unix.EINTR {
			return fmt.Errorf("poll netlink: %w", err)
		}
		changed, guard := false, false
		if n > 0 {
			for i, fd := range w.fds {
				for {
					// Drain: one read covers the burst. ENOBUFS (overflow)
					// is a change too, and so urgent.
					n, _, err := unix.Recvfrom(fd, buf, unix.MSG_DONTWAIT)
					if err == unix.EAGAIN {
						break
					}
					switch {
					case i == 1: // routes: only a custom local route matters
						if err != nil || customLocalRoute(buf[:n]) {
							changed = true
							guard = guard || err == nil
						}
					case err != nil || i > 1 || w.urgent(buf[:n]): // overflow, nftables
						changed, guard = true, true
					default:
						changed = true
					}
				}
			}
		}
		if w.tablesChanged() {
			changed, guard = true, true
		}
		if guard {
			// A setting that changes what Linux forwards, and reading it
			// takes milliseconds: meanwhile every frame goes to the
			// kernel, so a rule just committed is never bypassed.
			w.guard()
		}
		if w.force.Swap(false) {
			changed = true
		}
		if !changed && time.Now().Before(next) {
			continue
		}
		next = time.Now().Add(w.cfg.Interval)
		if w.tables[0] == nil || w.tables[1] == nil {
			// ip_tables loaded since (by the first legacy rule): the
			// lists are polled from now on.
			_ = netnsrun.Do(w.cfg.Namespace, func() error { w.openTables(); return nil })
			if w.tablesChanged() {
				w.guard()
			}
		}
		if err := w.Update(); err != nil {
			w.cfg.Logger.Error("read kernel policy", "err", err)
		}
	}
	return nil
}

// Close closes the subscriptions.
func (w *Watcher) Close() error {
	for _, fd := range w.fds {
		unix.Close(fd)
	}
	for i, f := range w.tables {
		if f != nil {
			f.Close()
			w.tables[i] = nil
		}
	}
	w.fds = nil
	return nil
}

// urgent reports whether rtnetlink messages change what Linux forwards
// right away, so the fast path must stop until they are read: tc, rules,
// netconf (forwarding, rp_filter), IPv6 interface state and address
// removal (disable_ipv6 shows only as those), and a served interface's
// MAC changing. Other link and address events are re-read without
// stopping: they come in bursts (an XDP attach, DAD) and change nothing
// the fast path decides.
func (w *Watcher) urgent(b []byte) bool {
	msgs, err := syscall.ParseNetlinkMessage(b)
	if err != nil {
		return true
	}
	for _, m := range msgs {
		switch m.Header.Type {
		case unix.RTM_NEWQDISC, unix.RTM_DELQDISC, unix.RTM_NEWTFILTER, unix.RTM_DELTFILTER,
			unix.RTM_NEWRULE, unix.RTM_DELRULE, unix.RTM_NEWNETCONF, unix.RTM_DELNETCONF:
			return true
		case unix.RTM_DELADDR:
			if len(m.Data) > 0 && m.Data[0] == unix.AF_INET6 {
				return true
			}
		case unix.RTM_NEWLINK, unix.RTM_DELLINK:
			if len(m.Data) < unix.SizeofIfInfomsg {
				return true
			}
			if m.Data[0] == unix.AF_INET6 { // IPv6 interface info
				return true
			}
			if w.macChanged(&m) {
				return true
			}
		}
	}
	return false
}

// macChanged reports whether a link message gives a served interface
// another MAC than its policy holds.
func (w *Watcher) macChanged(m *syscall.NetlinkMessage) bool {
	ifindex := int(int32(binary.NativeEndian.Uint32(m.Data[4:8])))
	w.mu.Lock()
	pol, ok := w.last.Policies[ifindex]
	w.mu.Unlock()
	if !ok || pol.Flags&xdp.MACCheck == 0 {
		return false
	}
	attrs, err := syscall.ParseNetlinkRouteAttr(m)
	if err != nil {
		return true
	}
	for _, a := range attrs {
		if a.Attr.Type == unix.IFLA_ADDRESS {
			return !bytes.Equal(a.Value, pol.MAC)
		}
	}
	return false
}

// customLocalRoute reports whether route messages add or remove a local
// route of table local that the kernel did not make for an address.
func customLocalRoute(b []byte) bool {
	msgs, err := syscall.ParseNetlinkMessage(b)
	if err != nil {
		return true
	}
	for _, m := range msgs {
		if (m.Header.Type == unix.RTM_NEWROUTE || m.Header.Type == unix.RTM_DELROUTE) && len(m.Data) >= unix.SizeofRtMsg {
			// struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type
			if m.Data[4] == unix.RT_TABLE_LOCAL && m.Data[7] == unix.RTN_LOCAL && m.Data[5] != unix.RTPROT_KERNEL {
				return true
			}
		}
	}
	return false
}
