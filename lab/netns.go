package lab

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/xdprouter/xdprouter/internal/netnsrun"
)

// ErrNotRoot means the caller lacks the privileges to build namespaces and
// attach XDP programs.
var ErrNotRoot = errors.New("needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN and CAP_BPF): run with sudo")

// RequireRoot returns ErrNotRoot unless the process runs as root.
func RequireRoot() error {
	if os.Geteuid() != 0 {
		return ErrNotRoot
	}
	return nil
}

// InNamespace runs fn on an OS thread that has joined the named network
// namespace (like `ip netns exec NAME`). The thread is never returned to the
// Go scheduler: it ends with fn, so no other goroutine can inherit the
// namespace. Goroutines that fn starts run in the caller's namespace.
func InNamespace(name string, fn func() error) error {
	return netnsrun.Do(name, fn)
}

// handleAt returns a netlink handle bound to the named namespace; the caller
// closes it.
func handleAt(name string) (*netlink.Handle, error) {
	ns, err := netns.GetFromName(name)
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", name, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, fmt.Errorf("netlink handle in %s: %w", name, err)
	}
	return h, nil
}

// namespaceExists reports whether /run/netns holds the name.
func namespaceExists(name string) bool {
	_, err := os.Stat(filepath.Join("/run/netns", name))
	return err == nil
}

// createNamespace creates a named namespace (like `ip netns add NAME`)
// without moving any long-lived thread into it.
func createNamespace(name string) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: NewNamed moves this thread
		ns, err := netns.NewNamed(name)
		if err != nil {
			errc <- fmt.Errorf("create netns %s: %w", name, err)
			return
		}
		ns.Close()
		errc <- nil
	}()
	return <-errc
}

// deleteNamespace removes a named namespace (like `ip netns del NAME`);
// a missing one is not an error.
func deleteNamespace(name string) error {
	if !namespaceExists(name) {
		return nil
	}
	if err := netns.DeleteNamed(name); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("delete netns %s: %w", name, err)
	}
	return nil
}

// writeSysctl writes a value under /proc/sys of the calling thread's
// namespace, e.g. ("net/ipv4/ip_forward", "1").
func writeSysctl(key, value string) error {
	if err := os.WriteFile(filepath.Join("/proc/sys", key), []byte(value), 0o644); err != nil {
		return fmt.Errorf("sysctl %s=%s: %w", key, value, err)
	}
	return nil
}
