package route

import (
	"cmp"
	"iter"
	"net/netip"
	"slices"
	"sort"
)

// maxChunk is the most routes one chunk of a List holds. A change copies
// the chunks it touches and a comparison skips the chunks two Lists share:
// at 100,000 routes, 256 makes both a few hundred chunks' work.
const maxChunk = 256

// List is an immutable list of routes, one per prefix, sorted by prefix
// (netip.Prefix.Compare). It is made of chunks that the Lists made from one
// another share: With copies only the chunks its changes touch, and Diff
// skips the chunks both sides share, so that a change of k routes among n
// costs about k + n/256, not n. The zero List and nil are empty.
type List struct {
	chunks [][]Route // each non-empty and never changed once in a List
	n      int
}

// NewList returns a List of routes; of routes with the same prefix, the
// last counts, and a route with no next hops counts as none.
func NewList(routes []Route) *List { return (*List)(nil).With(routes) }

// Len returns the number of routes.
func (l *List) Len() int {
	if l == nil {
		return 0
	}
	return l.n
}

// All yields the routes in prefix order. They must not be changed.
func (l *List) All() iter.Seq[Route] {
	return func(yield func(Route) bool) {
		if l == nil {
			return
		}
		for _, c := range l.chunks {
			for _, r := range c {
				if !yield(r) {
					return
				}
			}
		}
	}
}

// Routes returns a copy of the routes in prefix order.
func (l *List) Routes() []Route {
	out := make([]Route, 0, l.Len())
	for r := range l.All() {
		out = append(out, r)
	}
	return out
}

// Get returns the route for p, if the List has one.
func (l *List) Get(p netip.Prefix) (Route, bool) {
	if l == nil {
		return Route{}, false
	}
	// The last chunk whose first prefix is not after p.
	i := sort.Search(len(l.chunks), func(i int) bool { return l.chunks[i][0].Prefix.Compare(p) > 0 }) - 1
	if i < 0 {
		return Route{}, false
	}
	c := l.chunks[i]
	j, found := slices.BinarySearchFunc(c, p, func(r Route, p netip.Prefix) int { return r.Prefix.Compare(p) })
	if !found {
		return Route{}, false
	}
	return c[j], true
}

// With returns l with changes made, in order: a route replaces the route
// of its prefix or is added, and a route with no next hops removes its
// prefix's route. l does not change; the result shares every chunk of l
// that no change falls into. The routes of changes are kept, not copied.
func (l *List) With(changes []Route) *List {
	if len(changes) == 0 {
		if l == nil {
			return &List{}
		}
		return l
	}
	cs := sortChanges(changes)
	out := &List{}
	var chunks [][]Route
	if l != nil {
		chunks = l.chunks
		out.chunks = make([][]Route, 0, len(chunks)+len(cs)/maxChunk+1)
	}
	if len(chunks) == 0 {
		out.add(mergeChunk(nil, cs), false)
		return out
	}
	for i, c := range chunks {
		// The changes up to the next chunk's first prefix go into this
		// chunk, and those before the first chunk too.
		end := len(cs)
		if i+1 < len(chunks) {
			next := chunks[i+1][0].Prefix
			end = sort.Search(len(cs), func(k int) bool { return cs[k].Prefix.Compare(next) >= 0 })
		}
		if end == 0 {
			out.add(c, true)
			continue
		}
		out.add(mergeChunk(c, cs[:end]), false)
		cs = cs[end:]
	}
	return out
}

// sortChanges returns changes sorted by prefix, of changes to one prefix
// only the last. changes does not change.
func sortChanges(changes []Route) []Route {
	if slices.IsSortedFunc(changes, byPrefix) {
		out := make([]Route, 0, len(changes))
		for i, c := range changes {
			if i+1 == len(changes) || changes[i+1].Prefix != c.Prefix {
				out = append(out, c)
			}
		}
		return out
	}
	// A stable sort is several times slower than sorting the positions
	// by prefix, then position.
	order := make([]int32, len(changes))
	for i := range order {
		order[i] = int32(i)
	}
	slices.SortFunc(order, func(a, b int32) int {
		return cmp.Or(changes[a].Prefix.Compare(changes[b].Prefix), cmp.Compare(a, b))
	})
	out := make([]Route, 0, len(changes))
	for i, o := range order {
		if i+1 == len(order) || changes[order[i+1]].Prefix != changes[o].Prefix {
			out = append(out, changes[o])
		}
	}
	return out
}

// add appends routes, sorted and all after out's, as chunks: as they are
// if shared (a chunk of another List), else cut into chunks of at most
// maxChunk, the first joined to out's last chunk if both are small, so
// that deletions do not leave a trail of tiny chunks.
func (out *List) add(routes []Route, shared bool) {
	if len(routes) == 0 {
		return
	}
	out.n += len(routes)
	if shared {
		out.chunks = append(out.chunks, routes)
		return
	}
	if k := len(out.chunks); k > 0 {
		last := out.chunks[k-1]
		if len(last) < maxChunk/4 && len(last)+len(routes) <= maxChunk {
			out.chunks[k-1] = slices.Concat(last, routes)
			return
		}
	}
	for len(routes) > maxChunk {
		// Halves, so that the next additions nearby find room.
		out.chunks = append(out.chunks, routes[:maxChunk/2:maxChunk/2])
		routes = routes[maxChunk/2:]
	}
	out.chunks = append(out.chunks, routes)
}

// mergeChunk returns a new slice: c with the changes cs made, both sorted
// and of unique prefixes.
func mergeChunk(c, cs []Route) []Route {
	out := make([]Route, 0, len(c)+len(cs))
	i := 0
	for _, ch := range cs {
		for ; i < len(c) && c[i].Prefix.Compare(ch.Prefix) < 0; i++ {
			out = append(out, c[i])
		}
		if i < len(c) && c[i].Prefix == ch.Prefix {
			i++
		}
		if len(ch.NextHops) > 0 {
			out = append(out, ch)
		}
	}
	return append(out, c[i:]...)
}

// Diff calls f, in prefix order, for each prefix whose route differs
// between a and b (other next hops, or missing from one; nil for a missing
// route), until f returns false. It skips the chunks a and b share.
func Diff(a, b *List, f func(old, new *Route) bool) {
	var x, y cursor
	if a != nil {
		x.chunks = a.chunks
	}
	if b != nil {
		y.chunks = b.chunks
	}
	for !x.done() || !y.done() {
		if !x.done() && !y.done() && x.e == 0 && y.e == 0 && sameChunk(x.chunks[x.c], y.chunks[y.c]) {
			x.c++
			y.c++
			continue
		}
		var c int
		switch {
		case x.done():
			c = 1
		case y.done():
			c = -1
		default:
			c = x.route().Prefix.Compare(y.route().Prefix)
		}
		var cont bool
		switch {
		case c < 0:
			cont = f(x.route(), nil)
			x.next()
		case c > 0:
			cont = f(nil, y.route())
			y.next()
		default:
			cont = true
			if old, new := x.route(), y.route(); !slices.Equal(old.NextHops, new.NextHops) {
				cont = f(old, new)
			}
			x.next()
			y.next()
		}
		if !cont {
			return
		}
	}
}

// Equal reports whether a and b hold the same routes.
func Equal(a, b *List) bool {
	if a.Len() != b.Len() {
		return false
	}
	same := true
	Diff(a, b, func(_, _ *Route) bool {
		same = false
		return false
	})
	return same
}

func sameChunk(a, b []Route) bool { return len(a) == len(b) && &a[0] == &b[0] }

// cursor walks the routes of a List's chunks.
type cursor struct {
	chunks [][]Route
	c, e   int // chunk, and route in it
}

func (x *cursor) done() bool    { return x.c == len(x.chunks) }
func (x *cursor) route() *Route { return &x.chunks[x.c][x.e] }

func (x *cursor) next() {
	x.e++
	if x.e == len(x.chunks[x.c]) {
		x.c, x.e = x.c+1, 0
	}
}
