// Package labtest brings up a private lab for a privileged test.
package labtest

import (
	"context"
	"testing"

	"github.com/xdprouter/xdprouter/internal/testutil"
	"github.com/xdprouter/xdprouter/lab"
)

// Up gates t on root (testutil.Privileged), brings up a lab with a name
// unique to the test and queues RX/TX queues per veth (0: the lab's
// default), and removes it when the test ends, passed or failed.
func Up(t testing.TB, queues int) *lab.Lab {
	t.Helper()
	testutil.Privileged(t)
	name := testutil.LabName()
	t.Cleanup(func() { _ = lab.Down(name) })
	l, err := lab.Up(context.Background(), lab.Config{Name: name, Queues: queues})
	if err != nil {
		t.Fatal(err)
	}
	return l
}
