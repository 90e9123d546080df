package route

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// r builds a route from "prefix" and "addr" or "addr*weight" next hops.
func r(prefix string, hops ...string) Route {
	rt := Route{Prefix: netip.MustParsePrefix(prefix)}
	for _, h := range hops {
		a, w, _ := strings.Cut(h, "*")
		nh := NextHop{Addr: netip.MustParseAddr(a)}
		if w != "" {
			if _, err := fmt.Sscan(w, &nh.Weight); err != nil {
				panic(err)
			}
		}
		rt.NextHops = append(rt.NextHops, nh)
	}
	return rt
}

func TestRouteString(t *testing.T) {
	got := r("203.0.113.10/32", "10.0.1.2*1", "10.0.2.2*3").String()
	if want := "203.0.113.10/32 via 10.0.1.2, 10.0.2.2 weight 3"; got != want {
		t.Errorf("String = %q, want %q", got, want)
	}
}

// TestPlan applies a sequence of wanted routes to what the kernel holds, as
// Set does when the kernel takes every change it is sent, and checks the
// changes, refusals and what the kernel holds after each.
func TestPlan(t *testing.T) {
	steps := []struct {
		name     string
		in       []Route
		changes  string   // one a line
		held     []string // prefixes refused
		fixed    bool     // some next hops needed sorting or weights
		wantErrs []string // each must appear in the error
		holds    string   // what the kernel holds after
	}{{
		name:    "add",
		in:      []Route{r("203.0.113.10/32", "10.0.1.2*1", "10.0.2.2*1"), r("2001:db8::10/128", "fd00:1::2*1")},
		changes: "add 203.0.113.10/32 via 10.0.1.2, 10.0.2.2\nadd 2001:db8::10/128 via fd00:1::2\n",
		holds:   "[203.0.113.10/32 via 10.0.1.2, 10.0.2.2 2001:db8::10/128 via fd00:1::2]",
	}, {
		name:  "same again, next hops in another order and weights left out",
		in:    []Route{r("2001:db8::10/128", "fd00:1::2"), r("203.0.113.10/32", "10.0.2.2", "10.0.1.2")},
		fixed: true,
		holds: "[203.0.113.10/32 via 10.0.1.2, 10.0.2.2 2001:db8::10/128 via fd00:1::2]",
	}, {
		name:    "weights, sorted; a single next hop has none",
		in:      []Route{r("2001:db8::10/128", "fd00:2::2", "fd00:1::2*2"), r("203.0.113.10/32", "10.0.3.2", "10.0.1.2*256", "10.0.2.2"), r("203.0.113.11/32", "10.0.1.2*3")},
		changes: "replace 203.0.113.10/32 via 10.0.1.2 weight 256, 10.0.2.2, 10.0.3.2\nadd 203.0.113.11/32 via 10.0.1.2\nreplace 2001:db8::10/128 via fd00:1::2 weight 2, fd00:2::2\n",
		fixed:   true,
		holds:   "[203.0.113.10/32 via 10.0.1.2 weight 256, 10.0.2.2, 10.0.3.2 203.0.113.11/32 via 10.0.1.2 2001:db8::10/128 via fd00:1::2 weight 2, fd00:2::2]",
	}, {
		name:    "withdrawn, and no next hops: not wanted",
		in:      []Route{r("203.0.113.10/32", "10.0.1.2*1"), r("203.0.113.11/32")},
		changes: "replace 203.0.113.10/32 via 10.0.1.2\ndelete 203.0.113.11/32 via 10.0.1.2\ndelete 2001:db8::10/128 via fd00:1::2 weight 2, fd00:2::2\n",
		holds:   "[203.0.113.10/32 via 10.0.1.2]",
	}, {
		name:     "invalid prefix",
		in:       []Route{{NextHops: []NextHop{{Addr: netip.MustParseAddr("10.0.1.2")}}}, r("203.0.113.10/32", "10.0.1.2*1")},
		held:     []string{"invalid Prefix"},
		wantErrs: []string{"invalid Prefix via 10.0.1.2 weight 0: invalid prefix"},
		holds:    "[203.0.113.10/32 via 10.0.1.2]",
	}, {
		name:     "host bits, and the prefix again without them",
		in:       []Route{r("203.0.113.0/24", "10.0.2.2"), r("203.0.113.10/24", "10.0.1.2"), r("203.0.113.10/32", "10.0.1.2*1")},
		held:     []string{"203.0.113.0/24", "203.0.113.10/24"},
		fixed:    true,
		wantErrs: []string{"203.0.113.10/24 via 10.0.1.2 weight 0: host bits set (the prefix is 203.0.113.0/24)"},
		holds:    "[203.0.113.10/32 via 10.0.1.2]",
	}, {
		name:     "families",
		in:       []Route{r("203.0.113.10/32", "10.0.1.2", "fd00:1::2"), r("2001:db8::10/128", "10.0.1.2"), r("203.0.113.11/32", "::ffff:10.0.1.2")},
		held:     []string{"203.0.113.10/32", "203.0.113.11/32", "2001:db8::10/128"},
		wantErrs: []string{"203.0.113.10/32 via 10.0.1.2 weight 0, fd00:1::2 weight 0: next hop fd00:1::2 is not of the prefix's family", "2001:db8::10/128 via 10.0.1.2 weight 0: next hop 10.0.1.2 is not", "next hop ::ffff:10.0.1.2 is not"},
		holds:    "[203.0.113.10/32 via 10.0.1.2]",
	}, {
		name:     "weights out of range",
		in:       []Route{r("203.0.113.10/32", "10.0.1.2*257", "10.0.2.2"), r("203.0.113.11/32", "10.0.1.2*-1")},
		held:     []string{"203.0.113.10/32", "203.0.113.11/32"},
		wantErrs: []string{"203.0.113.10/32 via 10.0.1.2 weight 257, 10.0.2.2 weight 0: next hop 10.0.1.2: weight 257 out of 1..256", "next hop 10.0.1.2: weight -1 out of 1..256"},
		holds:    "[203.0.113.10/32 via 10.0.1.2]",
	}, {
		name:     "duplicate next hop",
		in:       []Route{r("203.0.113.10/32", "10.0.1.2", "10.0.2.2", "10.0.1.2*2")},
		held:     []string{"203.0.113.10/32"},
		wantErrs: []string{"next hop 10.0.1.2 given twice"},
		holds:    "[203.0.113.10/32 via 10.0.1.2]",
	}, {
		name:     "invalid next hop",
		in:       []Route{{Prefix: netip.MustParsePrefix("203.0.113.10/32"), NextHops: []NextHop{{}}}},
		held:     []string{"203.0.113.10/32"},
		wantErrs: []string{"invalid next hop"},
		holds:    "[203.0.113.10/32 via 10.0.1.2]",
	}, {
		name:    "nothing",
		changes: "delete 203.0.113.10/32 via 10.0.1.2\n",
		holds:   "[]",
	}}
	have := NewList(nil)
	for _, s := range steps {
		input := slices.Clone(s.in)
		want := NewList(s.in)
		changes, held, fixed, err := plan(have, want)
		if !slices.EqualFunc(s.in, input, func(a, b Route) bool { return a.String() == b.String() }) {
			t.Errorf("%s: plan changed its input", s.name)
		}
		var b strings.Builder
		for _, c := range changes {
			fmt.Fprintf(&b, "%s %s\n", c.op, c.route)
		}
		if got := b.String(); got != s.changes {
			t.Errorf("%s: changes\n%s\nwant\n%s", s.name, got, s.changes)
		}
		var gotHeld []string
		for _, p := range slices.SortedFunc(maps.Keys(held), netip.Prefix.Compare) {
			gotHeld = append(gotHeld, p.String())
		}
		if !slices.Equal(gotHeld, s.held) {
			t.Errorf("%s: held = %v, want %v", s.name, gotHeld, s.held)
		}
		if (len(fixed) > 0) != s.fixed {
			t.Errorf("%s: fixed %v", s.name, fixed)
		}
		if (err != nil) != (len(s.wantErrs) > 0) {
			t.Fatalf("%s: err = %v, want errors %q", s.name, err, s.wantErrs)
		}
		for _, w := range s.wantErrs {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: err = %v\nwant %q in it", s.name, err, w)
			}
		}
		have = after(have, want, held, fixed)
		if got := fmt.Sprint(have.Routes()); got != s.holds {
			t.Errorf("%s: the kernel holds %s, want %s", s.name, got, s.holds)
		}
	}
}
