package route

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
)

// TestListModel makes random changes to Lists, each made from an earlier
// one, and checks every List against a map of what it must hold: its
// routes, Get, Diff and Equal against any other, and that no List changed
// when another was made from it.
func TestListModel(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	prefix := func() netip.Prefix {
		// Few enough prefixes that changes hit routes that exist; both
		// families, several lengths.
		i := rng.IntN(3000)
		if i%5 == 0 {
			return netip.PrefixFrom(netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: byte(i)}), 128)
		}
		return netip.PrefixFrom(netip.AddrFrom4([4]byte{100, 64, byte(i >> 8), byte(i)}), 24+i%9)
	}
	hop := func() []NextHop {
		n := rng.IntN(3) + 1
		hops := make([]NextHop, n)
		for i := range hops {
			hops[i] = NextHop{Addr: netip.AddrFrom4([4]byte{10, 0, byte(i), byte(rng.IntN(3))}), Weight: 1}
		}
		return hops
	}
	type version struct {
		l     *List
		model map[netip.Prefix][]NextHop
		text  string // of its routes when it was made
	}
	var versions []version
	check := func(v version, what string) {
		t.Helper()
		want := slices.SortedFunc(maps.Keys(v.model), netip.Prefix.Compare)
		got := v.l.Routes()
		if len(got) != len(want) || v.l.Len() != len(want) {
			t.Fatalf("%s: %d routes (Len %d), want %d", what, len(got), v.l.Len(), len(want))
		}
		for i, r := range got {
			if r.Prefix != want[i] || !slices.Equal(r.NextHops, v.model[r.Prefix]) {
				t.Fatalf("%s: route %d is %s, want %s via %v", what, i, r, want[i], v.model[want[i]])
			}
		}
		for _, c := range v.l.chunks {
			if len(c) == 0 || len(c) > maxChunk {
				t.Fatalf("%s: a chunk of %d routes", what, len(c))
			}
		}
		if fmt.Sprint(got) != v.text {
			t.Fatalf("%s: changed since it was made", what)
		}
	}
	versions = append(versions, version{l: NewList(nil), model: map[netip.Prefix][]NextHop{}, text: "[]"})
	for step := range 400 {
		base := versions[rng.IntN(len(versions))]
		if step%3 == 0 {
			base = versions[len(versions)-1]
		}
		model := maps.Clone(base.model)
		var changes []Route
		n := rng.IntN(40)
		if step%50 == 49 {
			n = 2000 // big enough to split and empty chunks
		}
		for range n {
			r := Route{Prefix: prefix()}
			if rng.IntN(3) > 0 {
				r.NextHops = hop()
			}
			changes = append(changes, r)
			if len(r.NextHops) == 0 {
				delete(model, r.Prefix)
			} else {
				model[r.Prefix] = r.NextHops
			}
		}
		if step%4 == 0 {
			// Sorted, duplicates still in their order: the other way in.
			slices.SortStableFunc(changes, byPrefix)
		}
		l := base.l.With(changes)
		v := version{l: l, model: model, text: fmt.Sprint(l.Routes())}
		check(v, fmt.Sprintf("step %d", step))
		check(base, fmt.Sprintf("step %d: the base", step))
		for range 3 {
			p := prefix()
			r, ok := l.Get(p)
			if hops, want := model[p]; ok != want || ok && (r.Prefix != p || !slices.Equal(r.NextHops, hops)) {
				t.Fatalf("step %d: Get(%s) = %s, %v; want %v, %v", step, p, r, ok, hops, want)
			}
		}
		other := versions[rng.IntN(len(versions))]
		var diffs []netip.Prefix
		Diff(other.l, l, func(old, new *Route) bool {
			var p netip.Prefix
			switch {
			case old == nil:
				p = new.Prefix
			case new == nil:
				p = old.Prefix
			case old.Prefix != new.Prefix:
				t.Fatalf("step %d: Diff pairs %s with %s", step, old.Prefix, new.Prefix)
			default:
				p = old.Prefix
			}
			if old != nil && !slices.Equal(old.NextHops, other.model[p]) || new != nil && !slices.Equal(new.NextHops, model[p]) {
				t.Fatalf("step %d: Diff gives %v → %v for %s", step, old, new, p)
			}
			diffs = append(diffs, p)
			return true
		})
		union := maps.Clone(model)
		maps.Copy(union, other.model)
		var want []netip.Prefix
		for _, p := range slices.SortedFunc(maps.Keys(union), netip.Prefix.Compare) {
			if !slices.Equal(other.model[p], model[p]) {
				want = append(want, p)
			}
		}
		if !slices.Equal(diffs, want) {
			t.Fatalf("step %d: Diff gives %v, want %v", step, diffs, want)
		}
		if Equal(other.l, l) != (len(want) == 0) {
			t.Fatalf("step %d: Equal = %v with %d differences", step, Equal(other.l, l), len(want))
		}
		versions = append(versions, v)
	}
}

// TestListSharing checks that a small change to a big List copies only
// the chunk it touches.
func TestListSharing(t *testing.T) {
	var routes []Route
	for i := range 100_000 {
		a := netip.AddrFrom4([4]byte{100, byte(64 + i>>16), byte(i >> 8), byte(i)})
		routes = append(routes, Route{netip.PrefixFrom(a, 32), []NextHop{{netip.MustParseAddr("10.0.1.2"), 1}}})
	}
	a := NewList(routes)
	changed := Route{routes[50_000].Prefix, []NextHop{{netip.MustParseAddr("10.0.2.2"), 1}}}
	b := a.With([]Route{changed})
	shared := 0
	for _, c := range b.chunks {
		if slices.ContainsFunc(a.chunks, func(d []Route) bool { return sameChunk(c, d) }) {
			shared++
		}
	}
	if shared != len(b.chunks)-1 {
		t.Errorf("%d of %d chunks shared, want all but one", shared, len(b.chunks))
	}
	compared := 0
	Diff(a, b, func(old, new *Route) bool {
		compared++
		if old.Prefix != changed.Prefix || new.NextHops[0] != changed.NextHops[0] {
			t.Errorf("Diff: %s → %s", old, new)
		}
		return true
	})
	if compared != 1 {
		t.Errorf("Diff found %d differences, want 1", compared)
	}
}
