package affinity

import (
	"fmt"
	"math/big"
	"slices"
	"strconv"
	"strings"
)

// ParseList parses a CPU list as the kernel writes them ("0-3,6,8-9").
func ParseList(s string) ([]int, error) {
	var out []int
	for _, part := range strings.Split(strings.TrimSpace(s), ",") {
		if part == "" {
			continue
		}
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil || a < 0 {
			return nil, fmt.Errorf("cpu list %q: %q is not a CPU number", s, lo)
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil || b < a {
				return nil, fmt.Errorf("cpu list %q: bad range %q", s, part)
			}
		}
		for c := a; c <= b; c++ {
			if !slices.Contains(out, c) {
				out = append(out, c)
			}
		}
	}
	slices.Sort(out)
	return out, nil
}

// FormatList writes CPUs as the kernel does ("0-3,6").
func FormatList(cpus []int) string {
	c := slices.Clone(cpus)
	slices.Sort(c)
	c = slices.Compact(c)
	var parts []string
	for i := 0; i < len(c); {
		j := i
		for j+1 < len(c) && c[j+1] == c[j]+1 {
			j++
		}
		if j == i {
			parts = append(parts, strconv.Itoa(c[i]))
		} else {
			parts = append(parts, fmt.Sprintf("%d-%d", c[i], c[j]))
		}
		i = j + 1
	}
	return strings.Join(parts, ",")
}

// ParseMask parses a hex CPU mask as in smp_affinity, rps_cpus and
// xps_cpus: "3f", or comma-separated 32-bit groups ("ffffffff,00000001").
func ParseMask(s string) ([]int, error) {
	s = strings.ReplaceAll(strings.TrimSpace(s), ",", "")
	s = strings.TrimPrefix(s, "0x")
	if s == "" {
		return nil, nil
	}
	n, ok := new(big.Int).SetString(s, 16)
	if !ok {
		return nil, fmt.Errorf("cpu mask %q is not hexadecimal", s)
	}
	var out []int
	for i := 0; i < n.BitLen(); i++ {
		if n.Bit(i) == 1 {
			out = append(out, i)
		}
	}
	return out, nil
}

// FormatMask writes CPUs as a hex mask for a machine of ncpus possible
// CPUs, as the kernel prints one: zero-padded to the CPU count, and in
// comma-separated 32-bit groups beyond 32 CPUs (the form the kernel
// needs for more than 32 CPUs).
func FormatMask(cpus []int, ncpus int) string {
	n := new(big.Int)
	for _, c := range cpus {
		n.SetBit(n, c, 1)
		ncpus = max(ncpus, c+1)
	}
	digits := (ncpus + 3) / 4
	hex := fmt.Sprintf("%0*x", digits, n)
	var groups []string
	for len(hex) > 8 {
		groups = append([]string{hex[len(hex)-8:]}, groups...)
		hex = hex[:len(hex)-8]
	}
	return strings.Join(append([]string{hex}, groups...), ",")
}
