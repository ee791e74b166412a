package daemon

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/xdprouter/xdprouter/dataplane/bpffs"
)

// instanceLock is the lock file next to the control socket that keeps a
// second daemon from taking over a running one's interfaces, pins and
// socket. flock(2) dies with its holder, so a killed daemon never blocks
// the next start.
type instanceLock struct {
	path string
	f    *os.File
	pins *os.File // the pin directory, locked too
}

// lockInstance takes the lock for the control socket sock, or says which
// process holds it.
func lockInstance(sock, pinPath string) (*instanceLock, error) {
	l, err := lockInstanceTry(sock, 0)
	if err != nil || pinPath == "" {
		return l, err
	}
	// Two daemons with different sockets must not share pins either: the
	// second would take the first's FIB for a warm start and its
	// attachments over. flock works on the bpffs directory itself.
	if err := bpffs.Ensure(pinPath); err != nil {
		l.release()
		return nil, err
	}
	d, err := os.Open(pinPath)
	if err != nil {
		l.release()
		return nil, fmt.Errorf("lock pin_path: %w", err)
	}
	if err := unix.Flock(int(d.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		d.Close()
		l.release()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("pin_path %s is in use by another xdprouter: give each daemon its own", pinPath)
		}
		return nil, fmt.Errorf("lock pin_path %s: %w", pinPath, err)
	}
	// Stop removes the directory: a lock on one no longer at pinPath
	// guards nothing.
	var held, now unix.Stat_t
	if unix.Fstat(int(d.Fd()), &held) != nil || unix.Stat(pinPath, &now) != nil || held.Ino != now.Ino || held.Dev != now.Dev {
		d.Close()
		l.release()
		return nil, fmt.Errorf("lock pin_path %s: it was removed while we locked it (another daemon stopping): start again", pinPath)
	}
	l.pins = d
	return l, nil
}

func lockInstanceTry(sock string, attempt int) (*instanceLock, error) {
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
	// The holder unlinks the file when it stops: a lock taken on a file
	// that is no longer the one at path guards nothing; take it again.
	var held, now unix.Stat_t
	if unix.Fstat(int(f.Fd()), &held) != nil || unix.Stat(path, &now) != nil || held.Ino != now.Ino || held.Dev != now.Dev {
		f.Close()
		if attempt >= 10 {
			return nil, fmt.Errorf("lock %s: replaced under us again and again", path)
		}
		return lockInstanceTry(sock, attempt+1)
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
	if l.pins != nil {
		l.pins.Close()
	}
}
