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

func TestDesired(t *testing.T) {
	tests := []struct {
		name     string
		in       []Route
		want     []Route  // wanted routes, in prefix order
		held     []string // prefixes refused
		wantErrs []string // each must appear in the error
		asIs     bool     // want is in itself, not a copy
	}{{
		name: "as it is",
		in:   []Route{r("203.0.113.10/32", "10.0.1.2*1", "10.0.2.2*3"), r("203.0.113.11/32", "10.0.1.2*1"), r("2001:db8::10/128", "fd00:1::2*1")},
		want: []Route{r("203.0.113.10/32", "10.0.1.2*1", "10.0.2.2*3"), r("203.0.113.11/32", "10.0.1.2*1"), r("2001:db8::10/128", "fd00:1::2*1")},
		asIs: true,
	}, {
		name: "sorted, default weights",
		in:   []Route{r("2001:db8::10/128", "fd00:2::2", "fd00:1::2*2"), r("203.0.113.10/32", "10.0.3.2", "10.0.1.2*256", "10.0.2.2")},
		want: []Route{r("203.0.113.10/32", "10.0.1.2*256", "10.0.2.2*1", "10.0.3.2*1"), r("2001:db8::10/128", "fd00:1::2*2", "fd00:2::2*1")},
	}, {
		name: "a single next hop has no weight",
		in:   []Route{r("203.0.113.10/32", "10.0.1.2*3")},
		want: []Route{r("203.0.113.10/32", "10.0.1.2*1")},
	}, {
		name: "no next hops: not wanted",
		in:   []Route{r("203.0.113.10/32")},
	}, {
		name:     "invalid prefix",
		in:       []Route{{NextHops: []NextHop{{Addr: netip.MustParseAddr("10.0.1.2")}}}, r("203.0.113.11/32", "10.0.1.2")},
		want:     []Route{r("203.0.113.11/32", "10.0.1.2*1")},
		wantErrs: []string{"invalid Prefix via 10.0.1.2 weight 0: invalid prefix"},
	}, {
		name:     "host bits",
		in:       []Route{r("203.0.113.10/24", "10.0.1.2")},
		held:     []string{"203.0.113.0/24"},
		wantErrs: []string{"203.0.113.10/24 via 10.0.1.2 weight 0: host bits set (the prefix is 203.0.113.0/24)"},
	}, {
		name:     "host bits, and the prefix again without them",
		in:       []Route{r("203.0.113.0/24", "10.0.2.2"), r("203.0.113.10/24", "10.0.1.2"), r("203.0.113.11/32", "10.0.1.2")},
		want:     []Route{r("203.0.113.11/32", "10.0.1.2*1")},
		held:     []string{"203.0.113.0/24"},
		wantErrs: []string{"host bits set"},
	}, {
		name:     "families",
		in:       []Route{r("203.0.113.10/32", "10.0.1.2", "fd00:1::2"), r("2001:db8::10/128", "10.0.1.2"), r("203.0.113.11/32", "::ffff:10.0.1.2")},
		held:     []string{"203.0.113.10/32", "203.0.113.11/32", "2001:db8::10/128"},
		wantErrs: []string{"203.0.113.10/32 via 10.0.1.2 weight 0, fd00:1::2 weight 0: next hop fd00:1::2 is not of the prefix's family", "2001:db8::10/128 via 10.0.1.2 weight 0: next hop 10.0.1.2 is not", "next hop ::ffff:10.0.1.2 is not"},
	}, {
		name:     "weights",
		in:       []Route{r("203.0.113.10/32", "10.0.1.2*257", "10.0.2.2"), r("203.0.113.11/32", "10.0.1.2*-1")},
		held:     []string{"203.0.113.10/32", "203.0.113.11/32"},
		wantErrs: []string{"203.0.113.10/32 via 10.0.1.2 weight 257, 10.0.2.2 weight 0: next hop 10.0.1.2: weight 257 out of 1..256", "next hop 10.0.1.2: weight -1 out of 1..256"},
	}, {
		name:     "duplicate next hop",
		in:       []Route{r("203.0.113.10/32", "10.0.1.2", "10.0.2.2", "10.0.1.2*2")},
		held:     []string{"203.0.113.10/32"},
		wantErrs: []string{"next hop 10.0.1.2 given twice"},
	}, {
		name:     "duplicate prefix",
		in:       []Route{r("203.0.113.10/32", "10.0.1.2"), r("203.0.113.11/32", "10.0.1.2"), r("203.0.113.10/32", "10.0.2.2")},
		want:     []Route{r("203.0.113.11/32", "10.0.1.2*1")},
		held:     []string{"203.0.113.10/32"},
		wantErrs: []string{"route: 203.0.113.10/32: prefix given twice"},
	}, {
		name: "invalid next hop",
		in:   []Route{{Prefix: netip.MustParsePrefix("203.0.113.10/32"), NextHops: []NextHop{{}}}},
		held: []string{"203.0.113.10/32"}, wantErrs: []string{"invalid next hop"},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			input := slices.Clone(tt.in)
			want, held, err := desired(tt.in)
			if !slices.EqualFunc(tt.in, input, func(a, b Route) bool { return a.String() == b.String() }) {
				t.Error("desired changed its input")
			}
			if fmt.Sprint(want) != fmt.Sprint(tt.want) {
				t.Errorf("want = %v\n      want %v", want, tt.want)
			}
			if asIs := len(want) > 0 && &want[0] == &tt.in[0]; asIs != tt.asIs {
				t.Errorf("want is the input itself: %v, want %v", asIs, tt.asIs)
			}
			var gotHeld []string
			for _, p := range slices.SortedFunc(maps.Keys(held), netip.Prefix.Compare) {
				gotHeld = append(gotHeld, p.String())
			}
			if !slices.Equal(gotHeld, tt.held) {
				t.Errorf("held = %v, want %v", gotHeld, tt.held)
			}
			if (err != nil) != (len(tt.wantErrs) > 0) {
				t.Fatalf("err = %v, want errors %q", err, tt.wantErrs)
			}
			for _, s := range tt.wantErrs {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("err = %v\nwant %q in it", err, s)
				}
			}
		})
	}
}

// TestDiff applies a sequence of states to what the kernel holds, as Set
// does when every change succeeds.
func TestDiff(t *testing.T) {
	steps := []struct {
		name string
		in   []Route
		want string // changes, one a line
	}{{
		name: "add",
		in:   []Route{r("203.0.113.10/32", "10.0.1.2", "10.0.2.2"), r("2001:db8::10/128", "fd00:1::2")},
		want: "add 203.0.113.10/32 via 10.0.1.2, 10.0.2.2\nadd 2001:db8::10/128 via fd00:1::2\n",
	}, {
		name: "same again",
		in:   []Route{r("2001:db8::10/128", "fd00:1::2"), r("203.0.113.10/32", "10.0.2.2", "10.0.1.2")},
	}, {
		name: "weight, next hop, new prefix, withdrawn prefix",
		in:   []Route{r("203.0.113.10/32", "10.0.1.2", "10.0.2.2*2"), r("2001:db8::10/128", "fd00:1::2", "fd00:2::2"), r("198.51.100.0/24", "10.0.3.2")},
		want: "add 198.51.100.0/24 via 10.0.3.2\nreplace 203.0.113.10/32 via 10.0.1.2, 10.0.2.2 weight 2\nreplace 2001:db8::10/128 via fd00:1::2, fd00:2::2\n",
	}, {
		name: "refused route keeps its prefix, others go",
		in:   []Route{r("203.0.113.10/32", "10.0.1.2", "fd00:1::2")},
		want: "delete 198.51.100.0/24 via 10.0.3.2\ndelete 2001:db8::10/128 via fd00:1::2, fd00:2::2\n",
	}, {
		name: "nothing",
		want: "delete 203.0.113.10/32 via 10.0.1.2, 10.0.2.2 weight 2\n",
	}}
	var have []Route
	for _, s := range steps {
		want, held, _ := desired(s.in)
		var b strings.Builder
		for _, c := range diff(have, want, held) {
			fmt.Fprintf(&b, "%s %s\n", c.op, c.route)
		}
		if got := b.String(); got != s.want {
			t.Errorf("%s: changes\n%s\nwant\n%s", s.name, got, s.want)
		}
		have = next(have, want, held, nil)
	}
}
