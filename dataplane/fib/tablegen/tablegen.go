// Package tablegen provides full-size routing tables for tests and
// benchmarks: the real BGP table of ../shared/data when it is there, and a
// deterministic synthetic table with the same prefix-length distribution
// when it is not (or to scale the real one up to today's size).
package tablegen

import (
	"bufio"
	"compress/gzip"
	"fmt"
	"io"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// RealTableEnv names an environment variable that may point at the table;
// "none" makes the real table absent (tests of the synthetic fallback).
const RealTableEnv = "XDPROUTER_BGP_TABLE"

// realRelPath is where the shared data lives, relative to the project root.
const realRelPath = "../shared/data/bgp-full-table-2024.txt.gz"

// Today's global table (2025): about 1.04 M IPv4 and 0.22 M IPv6 prefixes.
const (
	Today4 = 1_040_000
	Today6 = 220_000
)

// Lengths of the real table of January 2024 (901,899 IPv4 and 160,147
// IPv6 prefixes), counted from ../shared/data/bgp-full-table-2024.txt.gz.
var (
	lengths4 = map[int]int{8: 16, 9: 13, 10: 38, 11: 103, 12: 299, 13: 581, 14: 1203, 15: 2100,
		16: 13490, 17: 8235, 18: 13798, 19: 24870, 20: 42611, 21: 50750, 22: 108623, 23: 96510,
		24: 537698, 25: 20, 26: 3, 27: 11, 28: 18, 29: 17, 30: 3, 31: 3, 32: 886}
	lengths6 = map[int]int{16: 1, 19: 1, 20: 16, 21: 3, 22: 7, 23: 8, 24: 30, 25: 8, 26: 15, 27: 20,
		28: 193, 29: 4371, 30: 650, 31: 284, 32: 22548, 33: 2926, 34: 2603, 35: 1043, 36: 5996,
		37: 880, 38: 1617, 39: 1377, 40: 13418, 41: 903, 42: 2301, 43: 1001, 44: 14365, 45: 1553,
		46: 3039, 47: 3153, 48: 75488, 49: 11, 50: 3, 52: 1, 55: 1, 56: 24, 58: 20, 60: 2, 64: 184,
		112: 2, 122: 1, 124: 4, 125: 9, 126: 19, 127: 42, 128: 6}
)

// FindReal returns the path of the real table: $XDPROUTER_BGP_TABLE, or
// ../shared/data/... beside the project root found above the working
// directory.
func FindReal() (string, bool) {
	if p := os.Getenv(RealTableEnv); p != "" {
		if _, err := os.Stat(p); err == nil {
			return p, true
		}
		if p == "none" {
			return "", false
		}
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", false
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			p := filepath.Join(dir, realRelPath)
			_, err := os.Stat(p)
			return p, err == nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", false
		}
		dir = parent
	}
}

// ReadFile reads one prefix per line (CIDR; gzip when the name ends in
// .gz), skipping blank lines and # comments.
func ReadFile(path string) (v4, v6 []netip.Prefix, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, fmt.Errorf("open table: %w", err)
	}
	defer f.Close()
	var r io.Reader = f
	if strings.HasSuffix(path, ".gz") {
		gz, err := gzip.NewReader(f)
		if err != nil {
			return nil, nil, fmt.Errorf("read table %s: %w", path, err)
		}
		defer gz.Close()
		r = gz
	}
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		p, err := netip.ParsePrefix(line)
		if err != nil {
			return nil, nil, fmt.Errorf("%s:%d: %w", path, n, err)
		}
		p = p.Masked()
		if p.Addr().Is4() {
			v4 = append(v4, p)
		} else {
			v6 = append(v6, p)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, nil, fmt.Errorf("read table %s: %w", path, err)
	}
	return v4, v6, nil
}

// Table is a set of prefixes and where they came from.
type Table struct {
	V4, V6 []netip.Prefix
	Source string // "real (path)", "synthetic (seed N)", or both
}

// Load returns the real table scaled up with synthetic prefixes to n4/n6
// (0: leave as is), or, when the real table is absent, a synthetic one of
// n4/n6 prefixes (0: the real table's sizes). Source says which.
func Load(n4, n6 int, seed uint64) (Table, error) {
	path, ok := FindReal()
	if !ok {
		if n4 == 0 {
			n4 = 901_899
		}
		if n6 == 0 {
			n6 = 160_147
		}
		v4, v6 := Generate(seed, n4, n6, nil, nil)
		return Table{V4: v4, V6: v6, Source: fmt.Sprintf("synthetic (seed %d; the real table %s is absent)", seed, realRelPath)}, nil
	}
	v4, v6, err := ReadFile(path)
	if err != nil {
		return Table{}, err
	}
	src := "real (" + path + ")"
	if n4 > len(v4) || n6 > len(v6) {
		a4, a6 := Generate(seed, max(0, n4-len(v4)), max(0, n6-len(v6)), v4, v6)
		v4, v6 = append(v4, a4...), append(v6, a6...)
		src += fmt.Sprintf(" scaled up with synthetic prefixes (seed %d)", seed)
	}
	return Table{V4: v4, V6: v6, Source: src}, nil
}

// Generate returns n4 IPv4 and n6 IPv6 distinct prefixes with the real
// table's length distribution, deterministic for a seed, none of them in
// avoid4/avoid6. IPv4 prefixes are spread over 1.0.0.0-223.255.255.255;
// IPv6 ones of /32 and longer cluster under a pool of /32 allocations as
// real ones do (so trie nodes are shared realistically).
func Generate(seed uint64, n4, n6 int, avoid4, avoid6 []netip.Prefix) (v4, v6 []netip.Prefix) {
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	seen := make(map[netip.Prefix]bool, len(avoid4)+len(avoid6)+n4+n6)
	for _, p := range avoid4 {
		seen[p] = true
	}
	for _, p := range avoid6 {
		seen[p] = true
	}
	pick4 := sampler(lengths4)
	for len(v4) < n4 {
		l := pick4(rng)
		a := 0x01000000 + rng.Uint32N(223<<24)
		p, _ := netip.AddrFrom4([4]byte{byte(a >> 24), byte(a >> 16), byte(a >> 8), byte(a)}).Prefix(l)
		if !seen[p] && !bogon(p) {
			seen[p] = true
			v4 = append(v4, p)
		}
	}
	// IPv6: draw all lengths first; the /32s (and shorter) are placed at
	// random and become the allocations longer prefixes cluster under, as
	// in real tables: a quarter of the allocations hold every longer
	// prefix, those of /40 and longer within four /40s of their allocation. This gives the real
	// table's sharing of trie nodes, not one chain of nodes per prefix.
	pick6 := sampler(lengths6)
	ls := make([]int, n6)
	for i := range ls {
		ls[i] = pick6(rng)
	}
	slices.Sort(ls)
	var pool []netip.Prefix
	for _, l := range ls {
		for try := 0; ; try++ {
			a := rand6(rng)
			if l > 32 && len(pool) > 0 && try < 64 {
				active := pool[:max(1, len(pool)/4)]
				base := active[rng.IntN(len(active))].Addr().As16()
				copy(a[:4], base[:4])
				if l >= 40 {
					a[4] = byte(rng.IntN(4))
				}
				if l >= 48 && rng.IntN(3) == 0 {
					// Sites numbered from the start of the /40: 41 % of
					// the real table's /48s have bits 40-47 below 32.
					a[5] = byte(rng.IntN(32))
				}
			}
			p, _ := netip.AddrFrom16(a).Prefix(l)
			if seen[p] {
				continue
			}
			seen[p] = true
			v6 = append(v6, p)
			if l == 32 {
				pool = append(pool, p)
			}
			break
		}
	}
	return v4, v6
}

// bogons are special-use IPv4 ranges a real table never carries (and that
// routing daemons refuse): loopback, private, shared, link-local,
// benchmarking, documentation.
var bogons = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"), netip.MustParsePrefix("10.0.0.0/8"),
	netip.MustParsePrefix("100.64.0.0/10"), netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("169.254.0.0/16"), netip.MustParsePrefix("172.16.0.0/12"),
	netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("192.168.0.0/16"),
	netip.MustParsePrefix("198.18.0.0/15"), netip.MustParsePrefix("198.51.100.0/24"),
	netip.MustParsePrefix("203.0.113.0/24"), netip.MustParsePrefix("224.0.0.0/3"),
}

func bogon(p netip.Prefix) bool {
	for _, b := range bogons {
		if b.Overlaps(p) {
			return true
		}
	}
	return false
}

// rand6 draws an address under 2000::/3 (global unicast).
func rand6(rng *rand.Rand) [16]byte {
	var a [16]byte
	for i := 0; i < 16; i += 8 {
		v := rng.Uint64()
		for k := range 8 {
			a[i+k] = byte(v >> (8 * k))
		}
	}
	a[0] = 0x20 | a[0]&0x1f
	return a
}

// sampler draws lengths in proportion to their counts.
func sampler(counts map[int]int) func(*rand.Rand) int {
	var ls, cum []int
	total := 0
	for l := 0; l <= 128; l++ {
		if c := counts[l]; c > 0 {
			total += c
			ls, cum = append(ls, l), append(cum, total)
		}
	}
	return func(rng *rand.Rand) int {
		x := rng.IntN(total)
		for i, c := range cum {
			if x < c {
				return ls[i]
			}
		}
		return ls[len(ls)-1]
	}
}
