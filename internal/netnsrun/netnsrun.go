// Package netnsrun runs a function inside a named network namespace, on a
// thread of its own that is thrown away afterwards.
package netnsrun

import (
	"fmt"
	"runtime"

	"github.com/vishvananda/netns"
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
