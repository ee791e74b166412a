// Package bpffs makes sure a BPF filesystem is mounted where xdprouter
// pins its maps, so they outlive the process (a daemon restart keeps its
// forwarding table).
package bpffs

import (
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// DefaultRoot is where bpffs is normally mounted.
const DefaultRoot = "/sys/fs/bpf"

// Ensure creates dir (below a bpffs mount) and mounts bpffs at
// DefaultRoot first if nothing is mounted there (like `mount -t bpf bpf
// /sys/fs/bpf`).
func Ensure(dir string) error {
	if !IsBPFFS(DefaultRoot) {
		if err := os.MkdirAll(DefaultRoot, 0o700); err != nil {
			return fmt.Errorf("create %s: %w", DefaultRoot, err)
		}
		if err := unix.Mount("bpf", DefaultRoot, "bpf", 0, "mode=0700"); err != nil {
			return fmt.Errorf("mount bpffs at %s (like `mount -t bpf bpf %s`): %w", DefaultRoot, DefaultRoot, err)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create pin directory %s: %w", dir, err)
	}
	if !IsBPFFS(dir) {
		return fmt.Errorf("pin directory %s is not on a BPF filesystem: use one below %s", dir, DefaultRoot)
	}
	return nil
}

// IsBPFFS reports whether path lies on a BPF filesystem.
func IsBPFFS(path string) bool {
	var st unix.Statfs_t
	if err := unix.Statfs(filepath.Clean(path), &st); err != nil {
		return false
	}
	return st.Type == unix.BPF_FS_MAGIC
}
