// Package maglev builds weighted Maglev consistent-hashing lookup tables.
//
// A table is a slice of slots, each naming one backend. The datapath reduces
// a flow hash into [0, len(table)) and sends the flow to that slot's backend.
// Build is pure and deterministic: the same set of backends and the same size
// give the same table on every machine, in every process and with every Go
// version, whatever order the backends are listed in. That is what lets two
// appliances behind ECMP send a flow to the same backend.
//
// The table size should come from the configured pool (Size of its total
// weight) and stay fixed while backends go down and come back: at a fixed
// size, removing a backend usually moves little more than its own slots, and
// adding it back restores the original table exactly. Changing the size
// reshuffles nearly every flow. docs/maglev.md has the measurements.
package maglev

import (
	"cmp"
	"fmt"
	"hash/fnv"
	"math"
	"math/bits"
	"slices"
)

// Backend is one destination for the table.
type Backend struct {
	// ID is the backend's stable identity; the caller uses "addr:port".
	// The table depends on the ID alone, never on its position in a slice.
	ID string
	// Weight is the backend's relative share of the slots; it must be ≥ 1.
	Weight int
}

const (
	// SlotsPerWeight is how many slots each unit of weight gets in a table
	// from Size. See docs/maglev.md for the measurements behind it.
	SlotsPerWeight = 32
	// MaxSize is the largest table, the largest prime below 2^16.
	MaxSize = 65521
)

// Size returns the table size for a total weight: the smallest prime
// ≥ SlotsPerWeight×totalWeight, capped at MaxSize. A total weight below 1
// is treated as 1, so the result is always a usable size.
func Size(totalWeight int) int {
	if totalWeight > MaxSize/SlotsPerWeight {
		return MaxSize
	}
	n := SlotsPerWeight * max(totalWeight, 1)
	for !isPrime(n) {
		n++
	}
	return n
}

// Build fills a table of size slots: table[slot] is an index into backends.
// size must be a prime between len(backends) and MaxSize. Empty backends give
// a nil table and no error.
//
// Every backend with weight w gets ⌊size·w/W⌋ or ⌈size·w/W⌉ slots, where W is
// the total weight; with equal weights that is ⌊size/N⌋ or ⌈size/N⌉.
func Build(backends []Backend, size int) ([]int, error) {
	if len(backends) == 0 {
		return nil, nil
	}
	if size > MaxSize || !isPrime(size) {
		return nil, fmt.Errorf("maglev: size %d is not a prime ≤ %d", size, MaxSize)
	}
	if size < len(backends) {
		return nil, fmt.Errorf("maglev: size %d is smaller than %d backends", size, len(backends))
	}

	// Work in ID order so the table does not depend on the caller's order;
	// order[i] is the caller's index of the i-th backend by ID.
	order := make([]int, len(backends))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int { return cmp.Compare(backends[a].ID, backends[b].ID) })

	total := 0
	for i, bi := range order {
		b := backends[bi]
		if b.Weight < 1 {
			return nil, fmt.Errorf("maglev: backend %q: weight %d < 1", b.ID, b.Weight)
		}
		if i > 0 && backends[order[i-1]].ID == b.ID {
			return nil, fmt.Errorf("maglev: duplicate backend %q", b.ID)
		}
		if total > math.MaxInt-b.Weight {
			return nil, fmt.Errorf("maglev: backend %q: total weight overflows", b.ID)
		}
		total += b.Weight
	}

	quota := quotas(backends, order, size, total)
	m := uint64(size)
	pos := make([]uint64, len(order))  // next slot in each backend's permutation
	skip := make([]uint64, len(order)) // step through that permutation
	for i, bi := range order {
		h1, h2 := hashes(backends[bi].ID)
		pos[i] = h1 % m
		// size is prime, so any skip in [1, size-1] visits every slot.
		skip[i] = h2%(m-1) + 1
	}

	table := make([]int, size)
	for s := range table {
		table[s] = -1
	}
	// Classic Maglev population, weighted by quota: in each round every
	// backend still below its quota claims the next free slot in its own
	// permutation. The quotas sum to size, so the table fills exactly and
	// every backend ends with its quota. A backend's preferred slots depend
	// only on its ID, which is what keeps most slots in place when another
	// backend leaves.
	filled := make([]int, len(order))
	for n := 0; n < size; {
		for i, bi := range order {
			if filled[i] == quota[i] {
				continue
			}
			for table[pos[i]] >= 0 {
				pos[i] = (pos[i] + skip[i]) % m
			}
			table[pos[i]] = bi
			filled[i]++
			n++
		}
	}
	return table, nil
}

// quotas splits size slots in proportion to weight by the largest-remainder
// method: each backend gets ⌊size·w/total⌋, and the slots left over go one
// each to the largest remainders, ties to the earlier ID. The result is
// indexed like order.
func quotas(backends []Backend, order []int, size, total int) []int {
	quota := make([]int, len(order))
	rem := make([]uint64, len(order))
	left := size
	for i, bi := range order {
		hi, lo := bits.Mul64(uint64(size), uint64(backends[bi].Weight))
		q, r := bits.Div64(hi, lo, uint64(total)) // hi < total since weight ≤ total
		quota[i], rem[i] = int(q), r
		left -= int(q)
	}
	byRem := make([]int, len(order))
	for i := range byRem {
		byRem[i] = i
	}
	slices.SortStableFunc(byRem, func(a, b int) int { return cmp.Compare(rem[b], rem[a]) })
	for _, i := range byRem[:left] {
		quota[i]++
	}
	return quota
}

// hashes returns two independent 64-bit hashes of id: the first two outputs
// of splitmix64 seeded with FNV-1a(id). Both algorithms are fixed
// specifications, so the table never changes with the machine, the process
// or the Go version (unlike hash/maphash). FNV-1a alone mixes poorly when IDs
// differ in one byte, as "10.0.0.1:80" and "10.0.0.2:80" do; the splitmix64
// finalizer spreads that difference over all 64 bits.
func hashes(id string) (uint64, uint64) {
	f := fnv.New64a()
	f.Write([]byte(id))
	seed := f.Sum64()
	const gamma = 0x9e3779b97f4a7c15
	return splitmix64(seed + gamma), splitmix64(seed + gamma + gamma)
}

func splitmix64(z uint64) uint64 {
	z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
	z = (z ^ z>>27) * 0x94d049bb133111eb
	return z ^ z>>31
}

func isPrime(n int) bool {
	if n < 2 {
		return false
	}
	for d := 2; d*d <= n; d++ {
		if n%d == 0 {
			return false
		}
	}
	return true
}
