// Package bpffs makes sure a BPF filesystem is mounted where xdprouter
// pins its maps, so they outlive the process (a daemon restart keeps its
// forwarding table).
package bpffs

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// DefaultRoot is where bpffs is normally mounted.
const DefaultRoot = "/sys/fs/bpf"

// Ensure creates dir, which must lie on a BPF filesystem. Only when dir is
// below DefaultRoot and nothing is mounted there does it mount bpffs
// first (like `mount -t bpf bpf /sys/fs/bpf`, which needs CAP_SYS_ADMIN);
// a dir on an existing bpffs mount needs no privilege beyond write access.
func Ensure(dir string) error {
	dir = filepath.Clean(dir)
	if !IsBPFFS(existingAncestor(dir)) && within(dir, DefaultRoot) && !IsBPFFS(DefaultRoot) {
		if err := os.MkdirAll(DefaultRoot, 0o700); err != nil {
			return fmt.Errorf("create %s: %w", DefaultRoot, err)
		}
		if err := unix.Mount("bpf", DefaultRoot, "bpf", 0, "mode=0700"); err != nil {
			return fmt.Errorf("mount bpffs at %s (like `mount -t bpf bpf %s`): %w", DefaultRoot, DefaultRoot, err)
		}
	}
	if !IsBPFFS(existingAncestor(dir)) {
		return fmt.Errorf("pin directory %s is not on a BPF filesystem: use one below %s", dir, DefaultRoot)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create pin directory %s: %w", dir, err)
	}
	return nil
}

// existingAncestor is dir or its nearest ancestor that exists.
func existingAncestor(dir string) string {
	for {
		if _, err := os.Stat(dir); err == nil || dir == "/" || dir == "." {
			return dir
		}
		dir = filepath.Dir(dir)
	}
}

// within reports whether path is root or lies below it.
func within(path, root string) bool {
	rel, err := filepath.Rel(root, path)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
}

// IsBPFFS reports whether path lies on a BPF filesystem.
func IsBPFFS(path string) bool {
	var st unix.Statfs_t
	if err := unix.Statfs(filepath.Clean(path), &st); err != nil {
		return false
	}
	return st.Type == unix.BPF_FS_MAGIC
}
