package route

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"portico.dev/appliance/test/topo"
)

var (
	vip4 = r("203.0.113.10/32", "10.0.1.2*1", "10.0.2.2*1", "10.0.3.2*1")
	vip6 = r("2001:db8::10/128", "fd00:1::2*1", "fd00:2::2*1", "fd00:3::2*1")
)

// upLab brings up testdata/ecmp.clab.yml and returns it with a descriptor
// of the router's namespace.
func upLab(t *testing.T) (*topo.Lab, int) {
	lab := topo.UpT(t, "testdata/ecmp.clab.yml")
	f, err := os.Open(filepath.Join("/var/run/netns", lab.Namespace("router")))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return lab, int(f.Fd())
}

// changeLog counts the routes a target changed, from its debug log.
type changeLog struct{ bytes.Buffer }

func (l *changeLog) take() int {
	n := strings.Count(l.String(), `msg="route changed"`)
	l.Reset()
	return n
}

func newTarget(t *testing.T, fd int) (*Target, *changeLog) {
	log := &changeLog{}
	tg, err := NewTarget(Options{NetNS: fd, Log: slog.New(slog.NewTextHandler(log, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tg.Close)
	return tg, log
}

// show returns what ip shows of the router's routes of protocol proto, one
// route or next hop a line, spaces collapsed.
func show(t *testing.T, lab *topo.Lab, proto string) string {
	t.Helper()
	var b strings.Builder
	for _, fam := range []string{"-4", "-6"} {
		out, err := lab.Exec(t.Context(), "router", "ip", fam, "route", "show", "proto", proto)
		if err != nil {
			t.Fatal(err)
		}
		for line := range strings.Lines(string(out)) {
			b.WriteString(strings.Join(strings.Fields(line), " ") + "\n")
		}
	}
	return b.String()
}

func run(t *testing.T, lab *topo.Lab, node string, argv ...string) {
	t.Helper()
	if _, err := lab.Exec(t.Context(), node, argv...); err != nil {
		t.Fatal(err)
	}
}

func requireDump(t *testing.T, tg *Target, want []Route) {
	t.Helper()
	got, err := tg.Dump(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("Dump = %v\n       want %v", got, want)
	}
}

func requireErrs(t *testing.T, err error, want []string) {
	t.Helper()
	if (err != nil) != (len(want) > 0) {
		t.Fatalf("err = %v, want errors %q", err, want)
	}
	for _, s := range want {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("err = %v\nwant %q in it", err, s)
		}
	}
}

// TestSet applies a sequence of route sets to the router, with routes of
// the operator (protocol static) in the way, and checks what the kernel
// shows after each.
func TestSet(t *testing.T) {
	t.Parallel()
	lab, fd := upLab(t)
	run(t, lab, "router", "ip", "route", "add", "198.51.100.0/24", "via", "10.0.1.2", "proto", "static")
	run(t, lab, "router", "ip", "route", "add", "203.0.113.20/32", "via", "10.0.2.2", "proto", "static")
	run(t, lab, "router", "ip", "-6", "route", "add", "2001:db8::20/128", "via", "fd00:2::2", "proto", "static")
	statics := show(t, lab, "static")
	tg, log := newTarget(t, fd)

	steps := []struct {
		name    string
		set     []Route
		errs    []string
		changes int
		dump    []Route
		show    string
	}{{
		name:    "three next hops",
		set:     []Route{r("203.0.113.10/32", "10.0.3.2", "10.0.1.2", "10.0.2.2"), r("2001:db8::10/128", "fd00:2::2", "fd00:1::2", "fd00:3::2")},
		changes: 2,
		dump:    []Route{vip4, vip6},
		show: `203.0.113.10
nexthop via 10.0.1.2 dev eth1 weight 1
nexthop via 10.0.2.2 dev eth2 weight 1
nexthop via 10.0.3.2 dev eth3 weight 1
2001:db8::10 metric 1024 pref medium
nexthop via fd00:1::2 dev eth1 weight 1
nexthop via fd00:2::2 dev eth2 weight 1
nexthop via fd00:3::2 dev eth3 weight 1
`,
	}, {
		name: "same again",
		set:  []Route{vip6, vip4},
		dump: []Route{vip4, vip6},
		show: `203.0.113.10
nexthop via 10.0.1.2 dev eth1 weight 1
nexthop via 10.0.2.2 dev eth2 weight 1
nexthop via 10.0.3.2 dev eth3 weight 1
2001:db8::10 metric 1024 pref medium
nexthop via fd00:1::2 dev eth1 weight 1
nexthop via fd00:2::2 dev eth2 weight 1
nexthop via fd00:3::2 dev eth3 weight 1
`,
	}, {
		name:    "two next hops, weighted",
		set:     []Route{r("203.0.113.10/32", "10.0.1.2*1", "10.0.3.2*3"), r("2001:db8::10/128", "fd00:3::2*3", "fd00:1::2")},
		changes: 2,
		dump:    []Route{r("203.0.113.10/32", "10.0.1.2*1", "10.0.3.2*3"), r("2001:db8::10/128", "fd00:1::2*1", "fd00:3::2*3")},
		show: `203.0.113.10
nexthop via 10.0.1.2 dev eth1 weight 1
nexthop via 10.0.3.2 dev eth3 weight 3
2001:db8::10 metric 1024 pref medium
nexthop via fd00:1::2 dev eth1 weight 1
nexthop via fd00:3::2 dev eth3 weight 3
`,
	}, {
		name:    "one next hop",
		set:     []Route{r("203.0.113.10/32", "10.0.2.2*2"), r("2001:db8::10/128", "fd00:2::2")},
		changes: 2,
		dump:    []Route{r("203.0.113.10/32", "10.0.2.2*1"), r("2001:db8::10/128", "fd00:2::2*1")},
		show: `203.0.113.10 via 10.0.2.2 dev eth2
2001:db8::10 via fd00:2::2 dev eth2 metric 1024 pref medium
`,
	}, {
		name:    "prefixes of the operator's routes",
		set:     []Route{vip4, vip6, r("203.0.113.20/32", "10.0.1.2"), r("2001:db8::20/128", "fd00:1::2", "fd00:3::2")},
		errs:    []string{"route: add 203.0.113.20/32 via 10.0.1.2: prefix held by a route of protocol static", "route: add 2001:db8::20/128 via fd00:1::2, fd00:3::2: prefix held by a route of protocol static"},
		changes: 2,
		dump:    []Route{vip4, vip6},
		show: `203.0.113.10
nexthop via 10.0.1.2 dev eth1 weight 1
nexthop via 10.0.2.2 dev eth2 weight 1
nexthop via 10.0.3.2 dev eth3 weight 1
2001:db8::10 metric 1024 pref medium
nexthop via fd00:1::2 dev eth1 weight 1
nexthop via fd00:2::2 dev eth2 weight 1
nexthop via fd00:3::2 dev eth3 weight 1
`,
	}, {
		name:    "refused route keeps its prefix",
		set:     []Route{r("203.0.113.10/32", "10.0.1.2", "fd00:1::2")},
		errs:    []string{"203.0.113.10/32 via 10.0.1.2 weight 0, fd00:1::2 weight 0: next hop fd00:1::2 is not of the prefix's family"},
		changes: 1,
		dump:    []Route{vip4},
		show: `203.0.113.10
nexthop via 10.0.1.2 dev eth1 weight 1
nexthop via 10.0.2.2 dev eth2 weight 1
nexthop via 10.0.3.2 dev eth3 weight 1
`,
	}, {
		name:    "none",
		changes: 1,
		dump:    []Route{},
	}}
	for _, s := range steps {
		err := tg.Set(t.Context(), NewList(s.set))
		if t.Failed() {
			break
		}
		t.Run(s.name, func(t *testing.T) {
			requireErrs(t, err, s.errs)
			if got := log.take(); got != s.changes {
				t.Errorf("%d routes changed, want %d", got, s.changes)
			}
			requireDump(t, tg, s.dump)
			if got := show(t, lab, "bgp"); got != s.show {
				t.Errorf("ip route show proto bgp:\n%s\nwant\n%s", got, s.show)
			}
			if got := show(t, lab, "static"); got != statics {
				t.Errorf("the operator's routes changed:\n%s\nwant\n%s", got, statics)
			}
		})
	}
}

// TestReplaceKeepsPrefix changes the next hops of a route over and over
// while another netlink socket looks the prefix up: it must never find it
// missing, as it would if a replace were a delete and an add.
func TestReplaceKeepsPrefix(t *testing.T) {
	t.Parallel()
	_, fd := upLab(t)
	for _, vip := range []Route{vip4, vip6} {
		t.Run(vip.Prefix.Addr().String(), func(t *testing.T) {
			tg, _ := newTarget(t, fd)
			h, err := netlink.NewHandleAt(netns.NsHandle(fd))
			if err != nil {
				t.Fatal(err)
			}
			defer h.Close()
			if err := tg.Set(t.Context(), NewList([]Route{vip})); err != nil {
				t.Fatal(err)
			}

			ctx, stop := context.WithCancel(t.Context())
			var seen map[int]int // lookups by the number of next hops found
			var wg sync.WaitGroup
			defer wg.Wait()
			defer stop()
			var lookups atomic.Int64
			wg.Go(func() { seen = poll(ctx, t, h, vip.Prefix, &lookups) })
			two := Route{vip.Prefix, vip.NextHops[1:]}
			one := Route{vip.Prefix, vip.NextHops[2:]}
			// Enough changes for enough lookups to fall between them, however
			// slow the machine.
			start := time.Now()
			for i := 0; i < 100 || lookups.Load() < 1000 && time.Since(start) < 10*time.Second; i++ {
				for _, r := range []Route{two, vip, one, vip} {
					if err := tg.Set(t.Context(), NewList([]Route{r})); err != nil {
						t.Fatal(err)
					}
				}
			}
			stop()
			wg.Wait()
			t.Logf("lookups by next hops found: %v", seen)
			if seen[0] > 0 {
				t.Errorf("the prefix was missing in %d lookups", seen[0])
			}
			if lookups.Load() < 1000 {
				t.Errorf("only %d lookups during the changes", lookups.Load())
			}
			if err := tg.Set(t.Context(), nil); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// poll looks p up in the main table until ctx is done, counting the
// lookups in n, and returns them by the number of next hops found.
func poll(ctx context.Context, t *testing.T, h *netlink.Handle, p netip.Prefix, n *atomic.Int64) map[int]int {
	seen := map[int]int{}
	filter := &netlink.Route{Dst: ipNet(p), Table: unix.RT_TABLE_MAIN}
	for ctx.Err() == nil {
		rs, err := h.RouteListFiltered(family(p.Addr()), filter, netlink.RT_FILTER_DST|netlink.RT_FILTER_TABLE)
		if err != nil {
			t.Error(err)
			return seen
		}
		hops := 0
		for _, r := range rs {
			hops += max(len(r.MultiPath), 1)
		}
		seen[hops]++
		n.Add(1)
	}
	return seen
}

// TestAdopt restarts the target: the new one adopts the routes of the old
// one, and trusts what it applied itself until Resync.
func TestAdopt(t *testing.T) {
	t.Parallel()
	lab, fd := upLab(t)
	extra := r("198.51.100.0/24", "10.0.1.2")
	first, _ := newTarget(t, fd)
	if err := first.Set(t.Context(), NewList([]Route{vip4, vip6, extra})); err != nil {
		t.Fatal(err)
	}
	first.Close()

	tg, log := newTarget(t, fd)
	if err := tg.Set(t.Context(), NewList([]Route{vip6, extra, vip4})); err != nil {
		t.Fatal(err)
	}
	if n := log.take(); n != 0 {
		t.Errorf("Set after a restart changed %d routes, want none", n)
	}
	if err := tg.Set(t.Context(), NewList([]Route{vip4})); err != nil {
		t.Fatal(err)
	}
	if n := log.take(); n != 2 {
		t.Errorf("Set with fewer routes changed %d routes, want 2 deleted", n)
	}
	requireDump(t, tg, []Route{vip4})

	run(t, lab, "router", "ip", "route", "del", "203.0.113.10/32", "proto", "bgp")
	if err := tg.Set(t.Context(), NewList([]Route{vip4})); err != nil {
		t.Fatal(err)
	}
	if n := log.take(); n != 0 {
		t.Errorf("Set read the kernel (%d routes changed) before Resync", n)
	}
	tg.Resync()
	if err := tg.Set(t.Context(), NewList([]Route{vip4})); err != nil {
		t.Fatal(err)
	}
	if n := log.take(); n != 1 {
		t.Errorf("Set after Resync changed %d routes, want the deleted one added", n)
	}
	requireDump(t, tg, []Route{vip4})
}

// TestUnreachable: the kernel refuses a next hop that no connected route
// covers; the error names it, and the other routes are installed.
func TestUnreachable(t *testing.T) {
	t.Parallel()
	_, fd := upLab(t)
	tg, log := newTarget(t, fd)
	routes := []Route{
		vip4,
		r("203.0.113.11/32", "192.0.2.1"),
		r("203.0.113.12/32", "10.0.1.2", "192.0.2.1"),
		r("2001:db8::11/128", "fd00:1::2", "2001:db8:ffff::1"),
	}
	want := []string{
		"route: add 203.0.113.11/32 via 192.0.2.1: next hop 192.0.2.1 not on a connected network: network is unreachable",
		"route: add 203.0.113.12/32 via 10.0.1.2, 192.0.2.1: next hop 192.0.2.1 not on a connected network",
		"route: add 2001:db8::11/128 via 2001:db8:ffff::1, fd00:1::2: next hop 2001:db8:ffff::1 not on a connected network: no route to host",
	}
	for range 2 {
		requireErrs(t, tg.Set(t.Context(), NewList(routes)), want)
		requireDump(t, tg, []Route{vip4})
	}
	if n := log.take(); n != 1 {
		t.Errorf("%d routes changed, want 1", n)
	}
}

// TestTraffic: connections from the client through the router to the
// service address reach every node, the router spreading flows by their
// ports (fib_multipath_hash_policy=1).
func TestTraffic(t *testing.T) {
	t.Parallel()
	lab, fd := upLab(t)
	tg, _ := newTarget(t, fd)
	if err := tg.Set(t.Context(), NewList([]Route{vip4, vip6})); err != nil {
		t.Fatal(err)
	}
	waitDAD(t, lab)
	for _, node := range []string{"node1", "node2", "node3"} {
		for _, vip := range []Route{vip4, vip6} {
			inNS(t, lab, node, func() error {
				ln, err := net.Listen("tcp", netip.AddrPortFrom(vip.Prefix.Addr(), 8080).String())
				if err != nil {
					return err
				}
				t.Cleanup(func() { ln.Close() })
				go serveName(ln, node)
				return nil
			})
		}
	}
	for _, vip := range []Route{vip4, vip6} {
		reached := map[string]int{}
		inNS(t, lab, "client", func() error {
			for range 60 {
				name, err := dialName(netip.AddrPortFrom(vip.Prefix.Addr(), 8080))
				if err != nil {
					return err
				}
				reached[name]++
			}
			return nil
		})
		t.Logf("%s: connections by node: %v", vip.Prefix, reached)
		if len(reached) != 3 {
			t.Errorf("%s: connections reached %v, want all three nodes", vip.Prefix, reached)
		}
	}
}

// waitDAD waits until no node has a tentative IPv6 address. While the
// link-local ones of a fresh lab are tentative (about 2 s), the first IPv6
// packets through the router are lost, and with multipath the retransmitted
// SYN of a connection has been seen to reach another node, which resets it.
func waitDAD(t *testing.T, lab *topo.Lab) {
	t.Helper()
	for _, node := range []string{"client", "router", "node1", "node2", "node3"} {
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			out, err := lab.Exec(t.Context(), node, "ip", "-6", "addr", "show", "tentative")
			if err != nil {
				t.Fatal(err)
			}
			if len(bytes.TrimSpace(out)) == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("node %s: addresses still tentative:\n%s", node, out)
			}
		}
	}
}

// serveName writes name to every connection.
func serveName(ln net.Listener, name string) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		_, _ = io.WriteString(c, name)
		c.Close()
	}
}

func dialName(ap netip.AddrPort) (string, error) {
	c, err := net.DialTimeout("tcp", ap.String(), 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		return "", err
	}
	b, err := io.ReadAll(c)
	return string(b), err
}

// inNS runs fn in node's namespace, on a thread of its own.
func inNS(t *testing.T, lab *topo.Lab, node string, fn func() error) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the thread ends with the goroutine instead of
		// carrying the namespace over to other goroutines.
		runtime.LockOSThread()
		h, err := netns.GetFromName(lab.Namespace(node))
		if err != nil {
			errc <- err
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			errc <- err
			return
		}
		errc <- fn()
	}()
	if err := <-errc; err != nil {
		t.Fatalf("node %s: %v", node, err)
	}
}

// TestManyRoutes: thousands of routes go to the kernel in batches; a
// refused route in the middle of a batch is reported alone, and every
// other route of the set is added, replaced and deleted as asked.
func TestManyRoutes(t *testing.T) {
	t.Parallel()
	lab, fd := upLab(t)
	const n = 5000
	// The kernel refuses two of them: the 1024th, whose answer ends the
	// first batch, and the 1501st, in the middle of the second.
	held := []netip.Prefix{netip.MustParsePrefix("100.64.127.224/27"), netip.MustParsePrefix("100.64.187.128/27")}
	for _, p := range held {
		run(t, lab, "router", "ip", "route", "add", p.String(), "via", "10.0.2.2", "proto", "static")
	}
	tg, log := newTarget(t, fd)
	routes := func(hops ...string) (all, applied []Route) {
		for i := range n {
			a := netip.AddrFrom4([4]byte{100, 64 + byte(i>>11), byte(i >> 3), byte(i&7) << 5})
			rt := r(netip.PrefixFrom(a, 27).String(), hops...)
			all = append(all, rt)
			if !slices.Contains(held, rt.Prefix) {
				applied = append(applied, rt)
			}
		}
		return all, applied
	}
	for _, hops := range [][]string{{"10.0.1.2*1"}, {"10.0.1.2*1", "10.0.3.2*2"}} {
		all, applied := routes(hops...)
		var errs []string
		for _, p := range held {
			errs = append(errs, "route: add "+p.String()+" via 10.0.1.2", "prefix held by a route of protocol static")
		}
		requireErrs(t, tg.Set(t.Context(), NewList(all)), errs)
		requireDump(t, tg, applied)
		if got := log.take(); got != n-len(held) {
			t.Errorf("%d routes changed, want %d", got, n-len(held))
		}
	}
	requireErrs(t, tg.Set(t.Context(), nil), nil)
	requireDump(t, tg, nil)
	if got := log.take(); got != n-len(held) {
		t.Errorf("%d routes deleted, want %d", got, n-len(held))
	}
	for _, p := range held {
		if got := show(t, lab, "static"); !strings.Contains(got, p.Addr().String()) {
			t.Errorf("the static route %s is gone:\n%s", p, got)
		}
	}
}
