// Package netnsrun runs a function inside a named network namespace, on a
// thread of its own that is thrown away afterwards.
package netnsrun

import (
	"fmt"
	"runtime"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Do runs fn on a fresh OS thread inside the namespace name (from
// /run/netns; "" = the caller's namespace) and returns its error. The
// thread is never unlocked, so it exits with the goroutine and no other
// goroutine ever runs in the namespace by accident.
func Do(name string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if name != "" {
			ns, err := netns.GetFromName(name)
			if err != nil {
				errc <- fmt.Errorf("open netns %s: %w", name, err)
				return
			}
			err = netns.Set(ns)
			ns.Close()
			if err != nil {
				errc <- fmt.Errorf("enter netns %s: %w", name, err)
				return
			}
		}
		errc <- fn()
	}()
	return <-errc
}

// DoSysfs is Do with the namespace's own view of /sys: the thread gets a
// private mount namespace (propagation to the host cut) with a sysfs
// mounted on /sys from inside the network namespace, so
// /sys/class/net/IF/queues/... are the namespace's interfaces, like
// `ip netns exec`. /proc stays the host's.
func DoSysfs(name string, fn func() error) error {
	return Do(name, func() error {
		if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
			return fmt.Errorf("unshare mount namespace: %w", err)
		}
		if err := unix.Mount("", "/", "", unix.MS_SLAVE|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("make / a slave mount: %w", err)
		}
		if err := unix.Unmount("/sys", unix.MNT_DETACH); err != nil && err != unix.EINVAL {
			return fmt.Errorf("unmount the host's /sys: %w", err)
		}
		if err := unix.Mount(name, "/sys", "sysfs", 0, ""); err != nil {
			return fmt.Errorf("mount sysfs of %s: %w", name, err)
		}
		return fn()
	})
}
