package lab

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

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

// netnsDir is where named namespaces are mounted, as iproute2 keeps them.
const netnsDir = "/run/netns"

// netnsDirMu serialises making netnsDir a mount point.
var netnsDirMu sync.Mutex

// sharedNetnsDir makes /run/netns a shared mount point of its own, as `ip
// netns add` does before it mounts a namespace there. Without it, the
// namespaces we mount on the plain directory are hidden as soon as
// another program (a second lab, `ip netns add`) turns the directory into
// a mount point: their files then open as empty files (setns: invalid
// argument) and cannot be removed (device or resource busy).
func sharedNetnsDir() error {
	netnsDirMu.Lock()
	defer netnsDirMu.Unlock()
	if err := os.MkdirAll(netnsDir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", netnsDir, err)
	}
	for made := false; ; made = true {
		err := unix.Mount("", netnsDir, "none", unix.MS_SHARED|unix.MS_REC, "")
		if err == nil {
			return nil
		}
		if err != unix.EINVAL || made {
			return fmt.Errorf("make %s a shared mount: %w", netnsDir, err)
		}
		// Not a mount point yet: bind it onto itself, with the namespaces
		// already mounted in it.
		if err := unix.Mount(netnsDir, netnsDir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind %s onto itself: %w", netnsDir, err)
		}
	}
}

// createNamespace creates a named namespace (like `ip netns add NAME`)
// without moving any long-lived thread into it.
func createNamespace(name string) error {
	if err := sharedNetnsDir(); err != nil {
		return err
	}
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
	path := filepath.Join(netnsDir, name)
	// Every mount on the file goes (a file mounted twice, by programs that
	// raced to create the directory's mount point, needs two unmounts),
	// then the file.
	for i := 0; i < 8; i++ {
		if err := unix.Unmount(path, unix.MNT_DETACH); err != nil {
			break // EINVAL: not a mount point (any more)
		}
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
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
