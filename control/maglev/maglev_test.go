package maglev

import (
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

func TestSize(t *testing.T) {
	tests := []struct {
		name        string
		totalWeight int
		want        int
	}{
		{"negative", -5, 37},
		{"zero", 0, 37},
		{"one", 1, 37},
		{"two", 2, 67},
		{"four", 4, 131},
		{"eight", 8, 257},
		{"largest below cap", 2047, 65519},
		{"cap", 2048, MaxSize},
		{"far above cap", math.MaxInt, MaxSize},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Size(tt.totalWeight); got != tt.want {
				t.Errorf("Size(%d) = %d, want %d", tt.totalWeight, got, tt.want)
			}
		})
	}

	t.Run("smallest prime at or above K×weight", func(t *testing.T) {
		for w := 1; w < 2048; w++ {
			size := Size(w)
			if !isPrime(size) || size < SlotsPerWeight*w || size > MaxSize {
				t.Fatalf("Size(%d) = %d, want a prime in [%d, %d]", w, size, SlotsPerWeight*w, MaxSize)
			}
			for n := SlotsPerWeight * w; n < size; n++ {
				if isPrime(n) {
					t.Fatalf("Size(%d) = %d, but %d is a smaller prime", w, size, n)
				}
			}
		}
	})

	t.Run("MaxSize is the largest prime below 2^16", func(t *testing.T) {
		for n := MaxSize + 1; n <= 1<<16; n++ {
			if isPrime(n) {
				t.Fatalf("%d is prime and larger than MaxSize", n)
			}
		}
		if !isPrime(MaxSize) {
			t.Fatalf("MaxSize %d is not prime", MaxSize)
		}
	})
}

func TestBuildErrors(t *testing.T) {
	a, b := Backend{ID: "192.0.2.1:80", Weight: 1}, Backend{ID: "192.0.2.2:80", Weight: 1}
	tests := []struct {
		name     string
		backends []Backend
		size     int
		want     string
	}{
		{"weight zero", []Backend{a, {ID: "192.0.2.3:80"}}, 37, `backend "192.0.2.3:80": weight 0 < 1`},
		{"weight negative", []Backend{{ID: "192.0.2.3:80", Weight: -1}}, 37, "weight -1 < 1"},
		{"duplicate ID", []Backend{a, b, a}, 37, `duplicate backend "192.0.2.1:80"`},
		{"size not prime", []Backend{a, b}, 36, "size 36 is not a prime"},
		{"size zero", []Backend{a}, 0, "size 0 is not a prime"},
		{"size negative", []Backend{a}, -7, "size -7 is not a prime"},
		{"size above MaxSize", []Backend{a}, 65537, "size 65537 is not a prime ≤ 65521"},
		{"size below backends", equalBackends(0, 5), 3, "size 3 is smaller than 5 backends"},
		{"total weight overflows", []Backend{{ID: "a", Weight: math.MaxInt}, {ID: "b", Weight: 1}}, 37, "total weight overflows"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			table, err := Build(tt.backends, tt.size)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Build() = %v, %v; want error containing %q", table, err, tt.want)
			}
		})
	}
}

func TestBuildEmpty(t *testing.T) {
	for _, bs := range [][]Backend{nil, {}} {
		table, err := Build(bs, Size(0))
		if table != nil || err != nil {
			t.Errorf("Build(%v) = %v, %v; want nil, nil", bs, table, err)
		}
	}
}

func TestBuildDeterministic(t *testing.T) {
	tests := []struct {
		name     string
		backends []Backend
	}{
		{"one", equalBackends(0, 1)},
		{"four equal", equalBackends(0, 4)},
		{"weighted", []Backend{{"192.0.2.1:80", 1}, {"192.0.2.2:80", 3}, {"[2001:db8::1]:80", 2}, {"192.0.2.4:8080", 5}}},
		{"64 equal", equalBackends(1, 64)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			size := Size(totalWeight(tt.backends))
			want := ids(tt.backends, mustBuild(t, tt.backends, size))
			if got := ids(tt.backends, mustBuild(t, tt.backends, size)); !slices.Equal(got, want) {
				t.Fatal("second Build differs from the first")
			}
			r := rand.New(rand.NewPCG(1, 2))
			for range 20 {
				bs := slices.Clone(tt.backends)
				r.Shuffle(len(bs), func(i, j int) { bs[i], bs[j] = bs[j], bs[i] })
				if got := ids(bs, mustBuild(t, bs, size)); !slices.Equal(got, want) {
					t.Fatalf("Build of %v differs from Build of %v", bs, tt.backends)
				}
			}
		})
	}
}

func TestBuildEqualShares(t *testing.T) {
	tests := []struct {
		name string
		n    int
		size int
	}{
		{"1 backend", 1, Size(1)},
		{"size equals backends", 5, 5},
		{"size 2", 2, 2},
		{"3 in 7", 3, 7},
		{"N=2", 2, Size(2)},
		{"N=3", 3, Size(3)},
		{"N=4", 4, Size(4)},
		{"N=8", 8, Size(8)},
		{"N=16", 16, Size(16)},
		{"N=64", 64, Size(64)},
		{"N=256", 256, Size(256)},
		{"N=300 at MaxSize", 300, MaxSize},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bs := equalBackends(0, tt.n)
			for i, c := range slotCounts(t, bs, tt.size) {
				if lo := tt.size / tt.n; c != lo && c != lo+1 {
					t.Errorf("backend %s has %d of %d slots, want %d or %d", bs[i].ID, c, tt.size, lo, lo+1)
				}
			}
		})
	}
}

// TestBuildWeightedShares checks that a backend with weight w of total W
// gets ⌊M·w/W⌋ or ⌈M·w/W⌉ of M slots.
func TestBuildWeightedShares(t *testing.T) {
	tests := []struct {
		name    string
		weights []int
		size    int
	}{
		{"1 2 3", []int{1, 2, 3}, Size(6)},
		{"one heavy", []int{1, 1, 1, 10}, Size(13)},
		{"coprime", []int{5, 3}, Size(8)},
		{"100 to 1", []int{100, 1}, Size(101)},
		{"small table", []int{7, 2, 1}, 11},
		{"capped size", []int{2000, 700, 300, 1, 1}, Size(3002)},
		{"weight below one slot", []int{100000, 1}, Size(100001)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bs := make([]Backend, len(tt.weights))
			for i, w := range tt.weights {
				bs[i] = Backend{ID: fmt.Sprintf("198.51.100.%d:443", i), Weight: w}
			}
			total := totalWeight(bs)
			for i, c := range slotCounts(t, bs, tt.size) {
				lo := tt.size * bs[i].Weight / total
				hi := lo
				if tt.size*bs[i].Weight%total != 0 {
					hi++
				}
				if c < lo || c > hi {
					t.Errorf("backend %s (weight %d/%d) has %d of %d slots, want %d..%d", bs[i].ID, bs[i].Weight, total, c, tt.size, lo, hi)
				}
			}
		})
	}
}

// Bounds on the share of slots that change owner, beyond the removed
// backend's own 1/N, when one of N equal-weight backends is removed from a
// table of Size(N) slots. They bound the mean and the 90th percentile over
// many removals, not every removal: docs/maglev.md shows the rare tail and
// where it comes from. Measured (TestReport, and this test's sample): mean
// ≤ 4.8 points, 90th percentile ≤ 6.6 points.
const (
	maxMeanExtraMoved = 0.06
	maxP90ExtraMoved  = 0.08
)

func TestBuildRemoveAndAddBack(t *testing.T) {
	for _, n := range []int{2, 3, 4, 8, 16, 64, 256} {
		t.Run(fmt.Sprintf("N=%d", n), func(t *testing.T) {
			size := Size(n)
			var extra []float64
			for set := range max(1, 256/n) {
				bs := equalBackends(set, n)
				full := mustBuild(t, bs, size)
				for r := range bs {
					rest := without(bs, r)
					less := mustBuild(t, rest, size)
					extra = append(extra, moved(bs, full, rest, less)-1/float64(n))

					again := append(rest, bs[r])
					if !slices.Equal(ids(again, mustBuild(t, again, size)), ids(bs, full)) {
						t.Fatalf("set %d: adding back %s does not restore the table", set, bs[r].ID)
					}
				}
			}
			slices.Sort(extra)
			if mean := meanOf(extra); mean > maxMeanExtraMoved {
				t.Errorf("removing 1 of %d moves on average 1/N + %.1f%% of slots, want ≤ 1/N + %.1f%%", n, 100*mean, 100*maxMeanExtraMoved)
			}
			if p90 := quantile(extra, .9); p90 > maxP90ExtraMoved {
				t.Errorf("removing 1 of %d moves 1/N + %.1f%% of slots at the 90th percentile, want ≤ 1/N + %.1f%%", n, 100*p90, 100*maxP90ExtraMoved)
			}
		})
	}
}

// TestGolden pins the table for a fixed input. If it fails, the hash or the
// population order changed, and appliances on different versions would send
// the same flow to different backends: change it only on purpose (-update).
func TestGolden(t *testing.T) {
	bs := []Backend{{"192.0.2.1:80", 1}, {"192.0.2.2:80", 1}, {"192.0.2.3:80", 2}}
	const size = 31
	var b strings.Builder
	fmt.Fprintf(&b, "# Build(%v, %d): slot backend\n", bs, size)
	for slot, i := range mustBuild(t, bs, size) {
		fmt.Fprintf(&b, "%d %s\n", slot, bs[i].ID)
	}
	got := b.String()

	path := filepath.Join("testdata", "build.golden")
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if got != string(want) {
		t.Errorf("table differs from %s:\ngot:\n%s\nwant:\n%s", path, got, want)
	}
}

func BenchmarkBuild(b *testing.B) {
	for _, n := range []int{4, 256} {
		b.Run(fmt.Sprintf("N=%d", n), func(b *testing.B) {
			bs := equalBackends(0, n)
			size := Size(n)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Build(bs, size); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// equalBackends returns n weight-1 backends; different sets have different IDs.
func equalBackends(set, n int) []Backend {
	bs := make([]Backend, n)
	for i := range bs {
		bs[i] = Backend{ID: fmt.Sprintf("10.%d.%d.%d:8080", set, i/256, i%256), Weight: 1}
	}
	return bs
}

func totalWeight(bs []Backend) int {
	total := 0
	for _, b := range bs {
		total += b.Weight
	}
	return total
}

func mustBuild(t testing.TB, bs []Backend, size int) []int {
	t.Helper()
	table, err := Build(bs, size)
	if err != nil {
		t.Fatalf("Build(%d backends, %d): %v", len(bs), size, err)
	}
	return table
}

// slotCounts builds a table and returns how many slots each backend owns,
// failing if any slot does not name a backend.
func slotCounts(t *testing.T, bs []Backend, size int) []int {
	t.Helper()
	table := mustBuild(t, bs, size)
	if len(table) != size {
		t.Fatalf("table has %d slots, want %d", len(table), size)
	}
	for slot, i := range table {
		if i < 0 || i >= len(bs) {
			t.Fatalf("slot %d holds %d, not a backend index", slot, i)
		}
	}
	return counts(table, len(bs))
}

// counts returns how many slots each of n backends owns.
func counts(table []int, n int) []int {
	c := make([]int, n)
	for _, i := range table {
		c[i]++
	}
	return c
}

// ids returns the backend ID in each slot, for comparing tables built from
// differently ordered slices.
func ids(bs []Backend, table []int) []string {
	s := make([]string, len(table))
	for slot, i := range table {
		s[slot] = bs[i].ID
	}
	return s
}

// without returns a copy of bs without bs[i].
func without(bs []Backend, i int) []Backend {
	return append(append([]Backend(nil), bs[:i]...), bs[i+1:]...)
}

// moved returns the share of slots whose backend differs between two tables
// of the same size.
func moved(aBs []Backend, a []int, bBs []Backend, b []int) float64 {
	diff := 0
	for slot := range a {
		if aBs[a[slot]].ID != bBs[b[slot]].ID {
			diff++
		}
	}
	return float64(diff) / float64(len(a))
}

// quantile returns the q-quantile of sorted xs.
func quantile(xs []float64, q float64) float64 {
	return xs[int(q*float64(len(xs)-1))]
}

func meanOf(xs []float64) float64 {
	sum := 0.0
	for _, x := range xs {
		sum += x
	}
	return sum / float64(len(xs))
}
