package bpffs

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/xdprouter/xdprouter/internal/testutil"
)

// TestEnsure: a pin directory below any bpffs mount is created without
// touching /sys/fs/bpf; one on another filesystem is refused and not
// created.
func TestEnsure(t *testing.T) {
	testutil.Privileged(t)
	mnt := t.TempDir()
	if err := unix.Mount("bpf", mnt, "bpf", 0, "mode=0700"); err != nil {
		t.Fatalf("mount bpffs on %s: %v", mnt, err)
	}
	t.Cleanup(func() { _ = unix.Unmount(mnt, unix.MNT_DETACH) })
	plain := t.TempDir()
	tests := []struct {
		name string
		dir  string
		ok   bool
	}{
		{"below a bpffs mount", filepath.Join(mnt, "xdprouter", "fib"), true},
		{"the mount itself", mnt, true},
		{"not on bpffs", filepath.Join(plain, "pins"), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Ensure(tt.dir)
			if (err == nil) != tt.ok {
				t.Fatalf("Ensure(%s) = %v, want ok=%v", tt.dir, err, tt.ok)
			}
			_, serr := os.Stat(tt.dir)
			if tt.ok && (serr != nil || !IsBPFFS(tt.dir)) {
				t.Errorf("%s: %v, on bpffs %v", tt.dir, serr, IsBPFFS(tt.dir))
			}
			if !tt.ok && serr == nil {
				t.Errorf("%s created though refused", tt.dir)
			}
		})
	}
}

func TestWithin(t *testing.T) {
	for _, tt := range []struct {
		path, root string
		want       bool
	}{
		{"/sys/fs/bpf", "/sys/fs/bpf", true},
		{"/sys/fs/bpf/x/y", "/sys/fs/bpf", true},
		{"/sys/fs/bpfx", "/sys/fs/bpf", false},
		{"/tmp/pins", "/sys/fs/bpf", false},
		{"/sys/fs", "/sys/fs/bpf", false},
	} {
		if got := within(tt.path, tt.root); got != tt.want {
			t.Errorf("within(%s, %s) = %v, want %v", tt.path, tt.root, got, tt.want)
		}
	}
}
