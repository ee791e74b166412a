// Package testutil holds what privileged tests share: the root gate and
// unique lab names.
package testutil

import (
	"fmt"
	"os"
	"sync/atomic"
	"testing"
)

// Privileged skips t when the process is not root, with the reason; when
// CI=true a privileged test that cannot run fails instead, so CI never
// passes by skipping the lab.
func Privileged(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("privileged test needs root (netns, BPF, XDP) and CI=true forbids skipping: run as root")
	}
	t.Skip("needs root (netns, BPF, XDP): run 'sudo make test'")
}

var labSeq atomic.Uint32

// LabName returns a lab name unique to this process and call, so tests in
// parallel (and leftovers of killed runs) never collide.
func LabName() string {
	return fmt.Sprintf("t%dn%d", os.Getpid(), labSeq.Add(1))
}
