package tablegen

import (
	"math"
	"net/netip"
	"slices"
	"testing"
)

func TestGenerateShapeAndDeterminism(t *testing.T) {
	a4, a6 := Generate(7, 200000, 50000, nil, nil)
	b4, b6 := Generate(7, 200000, 50000, nil, nil)
	if !slices.Equal(a4, b4) || !slices.Equal(a6, b6) {
		t.Fatal("same seed gave different tables")
	}
	c4, _ := Generate(8, 1000, 0, nil, nil)
	if slices.Equal(a4[:1000], c4) {
		t.Fatal("different seeds gave the same table")
	}
	for name, tc := range map[string]struct {
		got   int
		share float64
		want  float64
	}{
		"v4 /24": {count(a4, 24), float64(count(a4, 24)) / float64(len(a4)), 0.596},
		"v4 /22": {count(a4, 22), float64(count(a4, 22)) / float64(len(a4)), 0.120},
		"v6 /48": {count(a6, 48), float64(count(a6, 48)) / float64(len(a6)), 0.471},
		"v6 /32": {count(a6, 32), float64(count(a6, 32)) / float64(len(a6)), 0.141},
	} {
		if math.Abs(tc.share-tc.want) > 0.01 {
			t.Errorf("%s: share %.3f, want %.3f (the real table's)", name, tc.share, tc.want)
		}
	}
	seen := map[string]bool{}
	for _, p := range append(a4, a6...) {
		if seen[p.String()] || p != p.Masked() {
			t.Fatalf("duplicate or unmasked prefix %s", p)
		}
		seen[p.String()] = true
	}
	// Scaling up never repeats a prefix of the table it extends.
	d4, _ := Generate(9, 1000, 0, a4, nil)
	for _, p := range d4 {
		if seen[p.String()] {
			t.Fatalf("scaled-up prefix %s repeats the base table", p)
		}
	}
}

func count(ps []netip.Prefix, l int) int {
	n := 0
	for _, p := range ps {
		if p.Bits() == l {
			n++
		}
	}
	return n
}

func TestRealTable(t *testing.T) {
	path, ok := FindReal()
	if !ok {
		t.Skip("the real table (../shared/data) is not beside this clone; the synthetic one stands in")
	}
	v4, v6, err := ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(v4) != 901899 || len(v6) != 160147 {
		t.Errorf("read %d IPv4 and %d IPv6 prefixes, want 901899 and 160147", len(v4), len(v6))
	}
	for l, want := range lengths4 {
		if got := count(v4, l); got != want {
			t.Errorf("/%d: %d in the file, %d in lengths4", l, got, want)
		}
	}
	tb, err := Load(Today4, Today6, 1)
	if err != nil {
		t.Fatal(err)
	}
	if len(tb.V4) != Today4 || len(tb.V6) != Today6 {
		t.Errorf("scaled table has %d/%d prefixes, want %d/%d (%s)", len(tb.V4), len(tb.V6), Today4, Today6, tb.Source)
	}
}
