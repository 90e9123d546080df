//go:build report

package maglev

import (
	"fmt"
	"slices"
	"strings"
	"testing"
)

// TestReport prints the markdown tables in docs/maglev.md. It is built only
// with the report tag, since it asserts nothing (the guarantees are asserted
// in maglev_test.go):
//
//	go test -tags report ./control/maglev/ -run TestReport -v
func TestReport(t *testing.T) {
	ns := []int{2, 3, 4, 8, 16, 64, 256}
	ks := []int{8, 16, 32, 64, 128}

	// One cell per N and K: equal-weight backends from several ID sets,
	// removing each backend in turn and adding it back, at a fixed size.
	type cell struct {
		size, sets, shared int
		hi, lo             float64   // max and min share / fair share − 1
		removed, addedBack []float64 // share of slots that change owner, sorted
	}
	cells := make(map[[2]int]*cell)
	for _, n := range ns {
		for _, k := range ks {
			c := &cell{size: sizeFor(k, n), sets: min(1024, 4096/n)}
			for set := range c.sets {
				bs := equalBackends(set, n)
				full := mustBuild(t, bs, c.size)
				for _, count := range counts(full, n) {
					share := float64(count) * float64(n) / float64(c.size)
					c.hi, c.lo = max(c.hi, share-1), min(c.lo, share-1)
				}
				if sharedSkip(bs, c.size) {
					c.shared++
				}
				for r := range bs {
					rest := without(bs, r)
					less := mustBuild(t, rest, c.size)
					again := append(without(bs, r), bs[r])
					c.removed = append(c.removed, moved(bs, full, rest, less))
					c.addedBack = append(c.addedBack, moved(rest, less, again, mustBuild(t, again, c.size)))
				}
			}
			slices.Sort(c.removed)
			slices.Sort(c.addedBack)
			cells[[2]int{n, k}] = c
		}
	}
	// matrix prints one table with a row per N and a column per K.
	matrix := func(title string, format func(c *cell) string) {
		var b strings.Builder
		fmt.Fprintf(&b, "%s\n| N |", title)
		for _, k := range ks {
			fmt.Fprintf(&b, " K=%d |", k)
		}
		fmt.Fprintf(&b, "\n|--:|%s\n", strings.Repeat("--:|", len(ks)))
		for _, n := range ns {
			fmt.Fprintf(&b, "| %d |", n)
			for _, k := range ks {
				fmt.Fprintf(&b, " %s |", format(cells[[2]int{n, k}]))
			}
			b.WriteString("\n")
		}
		t.Log(b.String())
	}
	matrix("table size M", func(c *cell) string { return fmt.Sprint(c.size) })
	matrix("slot share / fair share − 1, max / min (%)", func(c *cell) string {
		return fmt.Sprintf("%+.2f / %+.2f", 100*c.hi, 100*c.lo)
	})
	matrix("slots that change owner when 1 of N is removed (ideal 1/N), mean / p90 / p99 / max (%)", func(c *cell) string {
		return fmt.Sprintf("%.1f / %.1f / %.1f / %.1f", 100*meanOf(c.removed), 100*quantile(c.removed, .9), 100*quantile(c.removed, .99), 100*slices.Max(c.removed))
	})
	matrix("slots that change owner when it is added back (ideal 1/N), mean / max (%)", func(c *cell) string {
		return fmt.Sprintf("%.1f / %.1f", 100*meanOf(c.addedBack), 100*slices.Max(c.addedBack))
	})
	matrix("tables in which two backends share a skip (% of ID sets)", func(c *cell) string {
		return fmt.Sprintf("%.1f", 100*float64(c.shared)/float64(c.sets))
	})
	t.Log("ID sets per N: 1024 for N ≤ 4, then 4096/N")

	var b strings.Builder
	fmt.Fprintln(&b, "| K | Σ M, 10,000 VIPs × 4 backends | kernel memory at 64–100 B per element |")
	fmt.Fprintln(&b, "|--:|--:|--:|")
	for _, k := range ks {
		elems := 10000 * sizeFor(k, 4)
		fmt.Fprintf(&b, "| %d | %d | %.0f–%.0f MB |\n", k, elems, float64(elems)*64/1e6, float64(elems)*100/1e6)
	}
	t.Log("memory\n" + b.String())

	b.Reset()
	fmt.Fprintln(&b, "| N | flows moved, size kept | flows moved, size recomputed |")
	fmt.Fprintln(&b, "|--:|--:|--:|")
	for _, n := range ns[:len(ns)-1] {
		var kept, resized []float64
		for set := range 16 {
			bs := equalBackends(set, n)
			rest := without(bs, 0)
			full := mustBuild(t, bs, Size(n))
			kept = append(kept, flowsMoved(bs, full, rest, mustBuild(t, rest, Size(n))))
			resized = append(resized, flowsMoved(bs, full, rest, mustBuild(t, rest, Size(n-1))))
		}
		fmt.Fprintf(&b, "| %d | %.1f%% | %.1f%% |\n", n, 100*meanOf(kept), 100*meanOf(resized))
	}
	t.Logf("flows that change backend when 1 of N is removed, K=%d\n%s", SlotsPerWeight, b.String())
}

// sizeFor is Size with k slots per weight and no cap.
func sizeFor(k, totalWeight int) int {
	n := k * totalWeight
	for !isPrime(n) {
		n++
	}
	return n
}

// sharedSkip reports whether two backends step through a table of size
// slots with the same skip, so their permutations are rotations of each other.
func sharedSkip(bs []Backend, size int) bool {
	seen := make(map[uint64]bool)
	for _, b := range bs {
		_, h2 := hashes(b.ID)
		skip := h2 % uint64(size-1)
		if seen[skip] {
			return true
		}
		seen[skip] = true
	}
	return false
}

// flowsMoved returns the share of 32-bit flow hashes whose backend differs
// between two tables, reducing a hash into a table as nft's jhash "mod" does
// (reciprocal_scale: h·M >> 32). It samples 2^16 evenly spaced hashes.
func flowsMoved(aBs []Backend, a []int, bBs []Backend, b []int) float64 {
	const samples = 1 << 16
	diff := 0
	for i := range uint64(samples) {
		h := i<<16 | 0x5a5a
		if aBs[a[h*uint64(len(a))>>32]].ID != bBs[b[h*uint64(len(b))>>32]].ID {
			diff++
		}
	}
	return float64(diff) / samples
}
