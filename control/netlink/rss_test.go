package netlink

import (
	"bufio"
	"os"
	"strconv"
	"strings"
)

// resetPeakRSS resets the process's peak resident set (VmHWM), so a
// later peakRSS covers only what follows.
func resetPeakRSS() error { return os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) }

// rss returns the process's resident set now and its peak, in MiB.
func rss() (now, peak float64) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, 0
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		k, v, ok := strings.Cut(s.Text(), ":")
		if !ok || (k != "VmRSS" && k != "VmHWM") {
			continue
		}
		kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
		if k == "VmRSS" {
			now = kb / 1024
		} else {
			peak = kb / 1024
		}
	}
	return now, peak
}
