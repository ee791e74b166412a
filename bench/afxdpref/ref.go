package afxdpref

import (
	"bufio"
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/xdprouter/xdprouter/internal/netnsrun"
)

//go:embed csrc/afxdp_ref.c
var source []byte

// EnvBinary names an environment variable that, when set, is the path of
// a compiled forwarder to use instead of compiling the embedded source.
const EnvBinary = "XDPROUTER_AFXDP_REF"

// Binary returns the forwarder's executable: $XDPROUTER_AFXDP_REF,
// afxdp-ref next to the running executable (make build puts it beside
// xdpbench in bin/) when it is newer, or the embedded source compiled with
// cc -O2 into the user's cache directory (once per version of the
// source).
func Binary() (string, error) {
	if p := os.Getenv(EnvBinary); p != "" {
		return p, nil
	}
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), "afxdp-ref")
		if bi, err := os.Stat(p); err == nil && bi.Mode()&0o111 != 0 {
			if ei, err := os.Stat(exe); err == nil && !bi.ModTime().Before(ei.ModTime()) {
				return p, nil
			}
		}
	}
	sum := sha256.Sum256(source)
	dir, err := os.UserCacheDir()
	if err != nil {
		dir = os.TempDir()
	}
	dir = filepath.Join(dir, "xdprouter")
	bin := filepath.Join(dir, "afxdp-ref-"+hex.EncodeToString(sum[:8]))
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("afxdp-ref: %w", err)
	}
	// Private temporary names: concurrent first runs each compile and the
	// last rename wins, with identical bytes.
	src, err := os.CreateTemp(dir, "afxdp-ref-*.c")
	if err != nil {
		return "", fmt.Errorf("afxdp-ref: %w", err)
	}
	defer os.Remove(src.Name())
	_, err = src.Write(source)
	if cerr := src.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", fmt.Errorf("afxdp-ref: %w", err)
	}
	tmp := src.Name() + ".bin"
	defer os.Remove(tmp)
	out, err := exec.Command("cc", "-O2", "-Wall", "-o", tmp, src.Name(), "-lpthread").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("compile afxdp-ref (cc, from the gcc package): %w\n%s", err, out)
	}
	if err := os.Rename(tmp, bin); err != nil {
		return "", fmt.Errorf("afxdp-ref: %w", err)
	}
	return bin, nil
}

// Config is what the reference forwards and where.
type Config struct {
	// Namespace holds the interfaces ("" = ours).
	Namespace string
	// In are the interfaces it receives on (the XDP program is attached
	// to them); Out the one it sends every frame to.
	In  []int
	Out int
	// DstMAC and SrcMAC are written into every forwarded frame.
	DstMAC, SrcMAC net.HardwareAddr
	// Queues is the number of threads, thread q serving queue q of every
	// interface on CPU CPUs[q mod len(CPUs)].
	Queues int
	CPUs   []int
	// RxOnly receives and gives the frames back, forwarding nothing.
	RxOnly bool
	// Priority is the threads' SCHED_FIFO priority (0: normal
	// scheduling); the lab gives it the engine's default, 1.
	Priority int
	// XSKMap, when set, is another program's XSKMAP that already steers
	// In's frames (xdprouter's, engine afxdp): the reference registers
	// its sockets there at KeyBase[i] + queue instead of attaching its
	// own program.
	XSKMap  *ebpf.Map
	KeyBase []uint32
}

// Ref is a running reference forwarder.
type Ref struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser // closed: the forwarder exits (also when we die)
	lines chan string
	objs  xskredirectObjects
	links []link.Link
}

// Start loads and attaches the XDP program, starts the forwarder with the
// program's XSKMAP, and returns once every socket is registered.
func Start(ctx context.Context, cfg Config) (_ *Ref, err error) {
	bin, err := Binary()
	if err != nil {
		return nil, err
	}
	r := &Ref{}
	defer func() {
		if err != nil {
			r.detach()
		}
	}()
	xsks := cfg.XSKMap
	if xsks == nil {
		if err := loadXskredirectObjects(&r.objs, nil); err != nil {
			return nil, fmt.Errorf("load afxdp-ref program: %w", err)
		}
		xsks = r.objs.Xsks
	}
	err = netnsrun.Do(cfg.Namespace, func() error {
		if cfg.XSKMap != nil {
			return nil
		}
		for _, ifindex := range cfg.In {
			l, err := link.AttachXDP(link.XDPOptions{Program: r.objs.XskRedirect, Interface: ifindex, Flags: link.XDPDriverMode})
			if err != nil {
				return fmt.Errorf("attach afxdp-ref program to ifindex %d: %w", ifindex, err)
			}
			r.links = append(r.links, l)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	list := func(v []int) string {
		s := make([]string, len(v))
		for i, x := range v {
			s[i] = strconv.Itoa(x)
		}
		return strings.Join(s, ",")
	}
	args := []string{"-i", list(cfg.In), "-o", strconv.Itoa(cfg.Out), "-q", strconv.Itoa(cfg.Queues),
		"-c", list(cfg.CPUs), "-d", cfg.DstMAC.String(), "-s", cfg.SrcMAC.String(), "-m", "3"}
	if cfg.RxOnly {
		args = append(args, "-r")
	}
	if cfg.Priority > 0 {
		args = append(args, "-p", strconv.Itoa(cfg.Priority))
	}
	if len(cfg.KeyBase) > 0 {
		keys := make([]int, len(cfg.KeyBase))
		for i, k := range cfg.KeyBase {
			keys[i] = int(k)
		}
		args = append(args, "-k", list(keys))
	}
	cmd := exec.Command(bin, args...)
	// A duplicate of the map's fd, owned by the os.File (which closes it
	// once the child has it): the map keeps its own.
	dup, err := unix.FcntlInt(uintptr(xsks.FD()), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("afxdp-ref XSKMAP: %w", err)
	}
	mapFile := os.NewFile(uintptr(dup), "xsks")
	defer mapFile.Close()
	cmd.ExtraFiles = []*os.File{mapFile} // fd 3 in the child
	var stderr strings.Builder
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if r.stdin, err = cmd.StdinPipe(); err != nil {
		return nil, err
	}
	// The child inherits the namespace of the thread that starts it.
	if err := netnsrun.Do(cfg.Namespace, cmd.Start); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	r.cmd = cmd
	r.lines = make(chan string, 64)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			r.lines <- sc.Text()
		}
		_, _ = io.Copy(io.Discard, stdout)
		close(r.lines)
	}()
	select {
	case l, ok := <-r.lines:
		if ok && l == "ready" {
			return r, nil
		}
		_, _ = r.wait()
		return nil, fmt.Errorf("afxdp-ref did not start: %q %s", l, strings.TrimSpace(stderr.String()))
	case <-time.After(10 * time.Second):
		_, _ = r.wait()
		return nil, fmt.Errorf("afxdp-ref not ready after 10 s: %s", strings.TrimSpace(stderr.String()))
	case <-ctx.Done():
		_, _ = r.wait()
		return nil, ctx.Err()
	}
}

// Stats are one forwarder thread's counters since start.
type Stats struct {
	Queue, CPU              int
	Rx, Tx, Drop            uint64
	Kicks, Polls            uint64
	User, System            time.Duration
	Budget                  int // frames per sendto
	RingFull, FillRingEmpty uint64
}

// Stop ends the forwarder (SIGTERM), detaches the program and returns
// each thread's counters.
func (r *Ref) Stop() ([]Stats, error) {
	defer r.detach()
	return r.wait()
}

// wait stops the process and parses its counter lines.
func (r *Ref) wait() ([]Stats, error) {
	if r.cmd == nil {
		return nil, nil
	}
	_ = r.cmd.Process.Signal(syscall.SIGTERM)
	var out []Stats
	var errs []error
	timeout := time.After(10 * time.Second)
	for done := false; !done; {
		select {
		case l, ok := <-r.lines:
			if !ok {
				done = true
				break
			}
			s, err := parse(l)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			out = append(out, s)
		case <-timeout:
			_ = r.cmd.Process.Kill()
			errs = append(errs, errors.New("afxdp-ref did not stop within 10 s: killed"))
			done = true
			go func() { // let the reader finish
				for range r.lines {
				}
			}()
		}
	}
	_ = r.stdin.Close()
	if err := r.cmd.Wait(); err != nil {
		errs = append(errs, fmt.Errorf("afxdp-ref: %w", err))
	}
	r.cmd = nil
	return out, errors.Join(errs...)
}

// parse reads one "queue=0 cpu=0 rx=... " line.
func parse(line string) (Stats, error) {
	var s Stats
	for _, f := range strings.Fields(line) {
		k, v, ok := strings.Cut(f, "=")
		n, err := strconv.ParseUint(v, 10, 64)
		if !ok || err != nil {
			return s, fmt.Errorf("afxdp-ref: bad counter %q in %q", f, line)
		}
		switch k {
		case "queue":
			s.Queue = int(n)
		case "cpu":
			s.CPU = int(n)
		case "rx":
			s.Rx = n
		case "tx":
			s.Tx = n
		case "drop":
			s.Drop = n
		case "kicks":
			s.Kicks = n
		case "polls":
			s.Polls = n
		case "user_us":
			s.User = time.Duration(n) * time.Microsecond
		case "sys_us":
			s.System = time.Duration(n) * time.Microsecond
		case "budget":
			s.Budget = int(n)
		case "rx_ring_full":
			s.RingFull = n
		case "fill_ring_empty":
			s.FillRingEmpty = n
		}
	}
	return s, nil
}

func (r *Ref) detach() {
	for _, l := range r.links {
		_ = l.Close()
	}
	r.links = nil
	_ = r.objs.Close()
}
