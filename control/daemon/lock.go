package daemon

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// instanceLock is the lock file next to the control socket that keeps a
// second daemon from taking over a running one's interfaces, pins and
// socket. flock(2) dies with its holder, so a killed daemon never blocks
// the next start.
type instanceLock struct {
	path string
	f    *os.File
}

// lockInstance takes the lock for the control socket sock, or says which
// process holds it.
func lockInstance(sock string) (*instanceLock, error) {
	path := sock + ".lock"
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("lock directory: %w", err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock file: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		b, _ := os.ReadFile(path)
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("another xdprouter (pid %s) is running with control socket %s: stop it first", strings.TrimSpace(string(b)), sock)
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return &instanceLock{path: path, f: f}, nil
}

// release removes the lock file and lets go of the lock.
func (l *instanceLock) release() {
	if l == nil {
		return
	}
	_ = os.Remove(l.path)
	l.f.Close()
}
