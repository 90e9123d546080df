package control_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"portico.dev/appliance/control"
	"portico.dev/appliance/control/config"
	"portico.dev/appliance/control/health"
	"portico.dev/appliance/datapath/nft"
	"portico.dev/appliance/datapath/route"
)

// running is a Daemon started in a synctest bubble with fakes.
type running struct {
	w      *world
	h      *fakeHealth
	d      *control.Daemon
	reload chan *config.Config
	stop   func() error
}

// start runs a daemon until the test ends. Must be called inside a bubble.
func start(t *testing.T, w *world, cfg *config.Config, seed map[string]bool) *running {
	t.Helper()
	h := &fakeHealth{}
	d := &control.Daemon{Reconciler: newReconciler(w), Health: h, Log: discard(), Resync: time.Hour}
	ctx, cancel := context.WithCancel(t.Context())
	reload := make(chan *config.Config)
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx, cfg, seed, reload) }()
	stopped := false
	stop := func() error {
		if stopped {
			return nil
		}
		stopped = true
		cancel()
		return <-done
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("Run = %v", err)
		}
	})
	synctest.Wait()
	return &running{w: w, h: h, d: d, reload: reload, stop: stop}
}

func (r *running) services() []nft.Service {
	s, _, _, _ := r.w.state()
	return s
}

// l4Sets counts the L4 Set calls recorded so far, and forgets the calls.
func (r *running) l4Sets() int {
	n := 0
	for _, c := range r.w.takeCalls() {
		if len(c) >= 6 && c[:6] == "l4.Set" {
			n++
		}
	}
	return n
}

func TestDaemonStartApplies(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := parse(t, healthVIPs)
		r := start(t, &world{}, c, nil)
		want, _ := control.Compile(control.Inputs{Config: c})
		if got := r.services(); !reflect.DeepEqual(got, want.Services()) {
			t.Errorf("services after start\n%v\nwant\n%v", got, want.Services())
		}
		if n, targets := r.h.last(); n != 1 || !reflect.DeepEqual(targets, want.HealthTargets()) {
			t.Errorf("health Set %d times, last with %v", n, targets)
		}
		if saved, ok := r.w.savedDesired(t); !ok || !reflect.DeepEqual(saved, want) {
			t.Error("the saved state is not the compiled configuration")
		}
		if err := r.stop(); err != nil {
			t.Errorf("Run = %v, want nil when its context ends", err)
		}
		// Run has returned: its reconciler may be read now.
		if cur := r.d.Reconciler.Current(); cur == nil || !reflect.DeepEqual(*cur, want) {
			t.Error("Current() is not the compiled configuration")
		}
	})
}

func TestDaemonSeed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := parse(t, healthVIPs)
		seed := map[string]bool{"web/10.0.1.12:8080": false, "gone/10.0.9.9:80": false}
		r := start(t, &world{}, c, seed)
		web := r.services()[0]
		if slices.Contains(web.Slots, ap("10.0.1.12:8080")) || !slices.Contains(web.Backends, ap("10.0.1.12:8080")) {
			t.Error("a backend seeded as down takes traffic or lost its counter")
		}
		_, targets := r.h.last()
		for _, tg := range targets {
			if tg.Up != (tg.ID != "web/10.0.1.12:8080") {
				t.Errorf("health target %s seeded up=%v", tg.ID, tg.Up)
			}
		}
	})
}

func TestDaemonReload(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := start(t, &world{}, parse(t, healthVIPs), nil)
		r.w.takeCalls()

		next := parse(t, mixedVIPs)
		r.reload <- next
		synctest.Wait()
		want, _ := control.Compile(control.Inputs{Config: next})
		if got := r.services(); !reflect.DeepEqual(got, want.Services()) {
			t.Errorf("services after reload\n%v\nwant\n%v", got, want.Services())
		}
		if n, targets := r.h.last(); n != 2 || !reflect.DeepEqual(targets, want.HealthTargets()) {
			t.Errorf("health Set %d times, last with %v", n, targets)
		}
		if n := r.l4Sets(); n != 1 {
			t.Errorf("%d L4 Sets for a reload, want 1", n)
		}

		// Reloading the same configuration changes nothing.
		r.reload <- parse(t, mixedVIPs)
		synctest.Wait()
		if calls := r.w.takeCalls(); len(calls) != 0 {
			t.Errorf("an unchanged reload called %q", calls)
		}
	})
}

func TestDaemonHealthEvents(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := start(t, &world{}, parse(t, healthVIPs), nil)
		before := r.services()[0].Slots
		r.w.takeCalls()
		b := ap("10.0.1.12:8080")

		// Events for unknown backends, and events that repeat the known
		// state, change nothing.
		r.d.Notify(health.Event{ID: "web/10.0.9.9:8080", Addr: ap("10.0.9.9:8080"), Up: false})
		r.d.Notify(health.Event{ID: "nope", Up: false})
		r.d.Notify(health.Event{ID: "web/10.0.1.11:8080", Addr: ap("10.0.1.11:8080"), Up: true})
		synctest.Wait()
		if calls := r.w.takeCalls(); len(calls) != 0 {
			t.Errorf("ignorable events made calls %q", calls)
		}

		// A backend going down leaves the slot table but keeps its counter.
		r.d.Notify(health.Event{ID: "web/10.0.1.12:8080", Addr: b, Up: false, Reason: "3 consecutive failures"})
		synctest.Wait()
		if n := r.l4Sets(); n != 1 {
			t.Errorf("%d L4 Sets for a backend going down, want 1", n)
		}
		web := r.services()[0]
		if slices.Equal(web.Slots, before) || slices.Contains(web.Slots, b) || !slices.Contains(web.Backends, b) {
			t.Errorf("after down: slots changed %v, holds %s %v, backends %v", !slices.Equal(web.Slots, before), b, slices.Contains(web.Slots, b), web.Backends)
		}
		if saved, _ := r.w.savedDesired(t); saved.Health()["web/10.0.1.12:8080"] {
			t.Error("the saved state still has the backend up")
		}
		// The checks stay as they are: the checker made the event.
		if n, _ := r.h.last(); n != 1 {
			t.Errorf("the health checker was handed targets %d times, want once, at start", n)
		}

		// Several events at once give at most one apply; coming back up
		// restores the original table exactly (the Maglev size is kept).
		r.d.Notify(health.Event{ID: "web/10.0.1.11:8080", Addr: ap("10.0.1.11:8080"), Up: false})
		r.d.Notify(health.Event{ID: "web/10.0.1.11:8080", Addr: ap("10.0.1.11:8080"), Up: true})
		r.d.Notify(health.Event{ID: "web/10.0.1.12:8080", Addr: b, Up: true})
		synctest.Wait()
		if n := r.l4Sets(); n > 2 {
			t.Errorf("%d L4 Sets for three queued events", n)
		}
		if got := r.services()[0].Slots; !slices.Equal(got, before) {
			t.Error("the table after down and up again differs from the first")
		}

		// Events for a VIP without a health check: the backend is known
		// but compile ignores the state, so nothing is applied.
		r.d.Notify(health.Event{ID: "plain/10.0.1.11:8080", Addr: ap("10.0.1.11:8080"), Up: false})
		synctest.Wait()
		if n := r.l4Sets(); n != 0 {
			t.Errorf("an event for an unchecked VIP made %d L4 Sets", n)
		}
	})
}

// TestDaemonEventsAfterReload: after a reload drops a backend, its events
// are unknown and ignored; a new backend's events are followed.
func TestDaemonEventsAfterReload(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := start(t, &world{}, parse(t, healthVIPs), nil)
		r.reload <- parse(t, `
vips:
  - name: web
    address: 203.0.113.10
    port: 80
    health: {type: tcp}
    backends: [{address: 10.0.1.11:8080}, {address: 10.0.1.14:8080}]
`)
		synctest.Wait()
		r.w.takeCalls()
		r.d.Notify(health.Event{ID: "web/10.0.1.12:8080", Addr: ap("10.0.1.12:8080"), Up: false})
		synctest.Wait()
		if n := r.l4Sets(); n != 0 {
			t.Errorf("an event for a removed backend made %d L4 Sets", n)
		}
		r.d.Notify(health.Event{ID: "web/10.0.1.14:8080", Addr: ap("10.0.1.14:8080"), Up: false})
		synctest.Wait()
		if n := r.l4Sets(); n != 1 || slices.Contains(r.services()[0].Slots, ap("10.0.1.14:8080")) {
			t.Errorf("an event for a new backend: %d L4 Sets, slots %v", n, r.services()[0].Slots)
		}
	})
}

func TestDaemonRetriesWithBackoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := &world{}
		w.fail("l4.Set", 9)
		t0 := time.Now()
		c := parse(t, healthVIPs)
		r := start(t, w, c, nil)
		if n, _ := r.h.last(); n != 0 {
			t.Error("health checks set up before anything was applied")
		}
		if _, ok := w.savedDesired(t); ok {
			t.Error("saved although the apply failed")
		}
		// 9 failures, then success: retries after 0.5, 1, 2, 4, 8, 16, 30,
		// 30 and 30 s. Sleep past the last one.
		time.Sleep(3 * time.Minute)
		synctest.Wait()

		s := time.Second
		want := []time.Duration{0, s / 2, 3 * s / 2, 7 * s / 2, 15 * s / 2, 31 * s / 2, 63 * s / 2, 123 * s / 2, 183 * s / 2, 243 * s / 2}
		if at := w.l4SetTimes(t0); !slices.Equal(at, want) {
			t.Errorf("L4 Set at %v, want %v", at, want)
		}
		want2, _ := control.Compile(control.Inputs{Config: c})
		if saved, ok := w.savedDesired(t); !ok || !reflect.DeepEqual(saved, want2) {
			t.Error("not applied after the retries")
		}
		if n, _ := r.h.last(); n != 1 {
			t.Errorf("health Set %d times, want once after the success", n)
		}
		w.takeCalls()

		// The backoff starts again from 0.5 s after a success.
		w.fail("l4.Set", 1)
		t1 := time.Now()
		r.d.Notify(health.Event{ID: "web/10.0.1.11:8080", Addr: ap("10.0.1.11:8080"), Up: false})
		synctest.Wait()
		time.Sleep(time.Minute)
		synctest.Wait()
		if at, want := w.l4SetTimes(t1), []time.Duration{0, s / 2}; !slices.Equal(at, want) {
			t.Errorf("after a success, L4 Set at %v, want %v", at, want)
		}
		if slices.Contains(r.services()[0].Slots, ap("10.0.1.11:8080")) {
			t.Error("the retry lost the health change")
		}
	})
}

// TestDaemonReloadDuringRetry: a new configuration while an apply is
// failing is what the retry applies; nothing older comes back.
func TestDaemonReloadDuringRetry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := &world{}
		w.fail("addrs.Set", 2)
		r := start(t, w, parse(t, healthVIPs), nil)
		next := parse(t, "vips: [{name: other, address: 198.51.100.1, port: 80, backends: [{address: 10.0.2.1:80}]}]")
		r.reload <- next // fails too (second injected fault)
		synctest.Wait()
		time.Sleep(time.Minute)
		synctest.Wait()
		want, _ := control.Compile(control.Inputs{Config: next})
		if saved, ok := w.savedDesired(t); !ok || !reflect.DeepEqual(saved, want) {
			t.Error("the reloaded configuration is not applied after the retry")
		}
		_, addrs, _, _ := w.state()
		if !slices.Equal(addrs, []netip.Addr{netip.MustParseAddr("198.51.100.1")}) {
			t.Errorf("addresses %v", addrs)
		}
	})
}

func TestDaemonResync(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := &world{}
		r := start(t, w, parse(t, healthVIPs), nil)
		w.takeCalls()
		time.Sleep(time.Hour - time.Second)
		synctest.Wait()
		if calls := w.takeCalls(); len(calls) != 0 {
			t.Errorf("calls before the resync period: %q", calls)
		}
		time.Sleep(time.Second)
		synctest.Wait()
		calls := w.takeCalls()
		// The store holds the same state already: it is not written.
		if len(calls) == 0 || calls[0] != "l4.Resync" || !slices.ContainsFunc(calls, func(c string) bool { return strings.HasPrefix(c, "l4.Set ") }) ||
			slices.ContainsFunc(calls, func(c string) bool { return strings.HasPrefix(c, "store.Save") }) {
			t.Errorf("resync calls %q, want l4.Resync then an apply to every target", calls)
		}
		if err := r.stop(); err != nil {
			t.Fatal(err)
		}
		if r.d.Reconciler.Current() == nil {
			t.Error("nothing current after the resync")
		}
	})
}

// TestDaemonLogsWarningsOnce: a compile warning is logged when it appears,
// not again on each apply while it holds, and again if it returns after
// going away.
func TestDaemonLogsWarningsOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var logs strings.Builder
		var mu sync.Mutex
		log := slog.New(slog.NewTextHandler(writerFunc(func(p []byte) (int, error) {
			mu.Lock()
			defer mu.Unlock()
			return logs.Write(p)
		}), nil))
		warnings := func() int {
			mu.Lock()
			defer mu.Unlock()
			return strings.Count(logs.String(), "no backend is up")
		}
		cfg := parse(t, `
vips:
  - name: web
    address: 203.0.113.10
    port: 80
    health: {type: tcp}
    backends: [{address: 10.0.1.11:8080}]
`)
		d := &control.Daemon{Reconciler: newReconciler(&world{}), Health: &fakeHealth{}, Log: log, Resync: time.Hour}
		ctx, cancel := context.WithCancel(t.Context())
		reload := make(chan *config.Config)
		done := make(chan error, 1)
		go func() { done <- d.Run(ctx, cfg, nil, reload) }()
		synctest.Wait()
		be := ap("10.0.1.11:8080")
		steps := []struct {
			do   func()
			want int
		}{
			{func() {}, 0},
			{func() { d.Notify(health.Event{ID: "web/10.0.1.11:8080", Addr: be, Up: false}) }, 1},
			{func() { reload <- cfg }, 1},
			{func() { reload <- cfg }, 1},
			{func() { d.Notify(health.Event{ID: "web/10.0.1.11:8080", Addr: be, Up: true}) }, 1},
			{func() { d.Notify(health.Event{ID: "web/10.0.1.11:8080", Addr: be, Up: false}) }, 2},
		}
		for i, s := range steps {
			s.do()
			synctest.Wait()
			if got := warnings(); got != s.want {
				t.Errorf("after step %d: the warning was logged %d times, want %d", i, got, s.want)
			}
		}
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v", err)
		}
	})
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// TestDaemonStaleRoutes starts a daemon with the routes a last run left in
// the kernel: each stays, merged in prefix order with what the speaker
// learns, until a node announces its prefix again or StaleFor ends.
func TestDaemonStaleRoutes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := &world{}
		rec := control.NewReconciler(control.Targets{L4: fakeL4{w}, Addresses: fakeAddrs{w}, Routes: fakeRoutes{w}}, fakeStore{w}, discard())
		learned := func(prefix string, hops ...string) route.Route {
			l := route.Route{Prefix: netip.MustParsePrefix(prefix)}
			for _, h := range hops {
				l.NextHops = append(l.NextHops, route.NextHop{Addr: netip.MustParseAddr(h), Weight: 1})
			}
			return l
		}
		stale := func(prefix, hop string) route.Route {
			return route.Route{Prefix: netip.MustParsePrefix(prefix), NextHops: []route.NextHop{{Addr: netip.MustParseAddr(hop), Weight: 1}}}
		}
		d := &control.Daemon{
			Reconciler: rec, Health: &fakeHealth{}, Log: discard(), Resync: time.Hour,
			Learned: func() *route.List {
				return route.NewList([]route.Route{learned("100.64.1.0/24", "10.0.1.2", "10.0.2.2"), learned("100.64.3.0/24", "10.0.2.2")})
			},
			StaleRoutes: []route.Route{stale("100.64.0.0/24", "10.0.1.2"), stale("100.64.1.0/24", "10.0.1.2"), stale("100.64.2.0/24", "10.0.1.2"), stale("100.64.9.0/24", "10.0.1.2")},
			StaleFor:    10 * time.Second,
		}
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- d.Run(ctx, parse(t, ""), nil, nil) }()
		synctest.Wait()
		routeSets := func() []string {
			var out []string
			for _, c := range w.takeCalls() {
				if s, ok := strings.CutPrefix(c, "routes.Set"); ok {
					out = append(out, strings.TrimSpace(s))
				}
			}
			return out
		}
		want := []string{"100.64.0.0/24 via 10.0.1.2; 100.64.1.0/24 via 10.0.1.2, 10.0.2.2; 100.64.2.0/24 via 10.0.1.2; 100.64.3.0/24 via 10.0.2.2; 100.64.9.0/24 via 10.0.1.2"}
		if got := routeSets(); !slices.Equal(got, want) {
			t.Errorf("routes at start:\n%q\nwant\n%q", got, want)
		}
		time.Sleep(10 * time.Second)
		synctest.Wait()
		want = []string{"100.64.1.0/24 via 10.0.1.2, 10.0.2.2; 100.64.3.0/24 via 10.0.2.2"}
		if got := routeSets(); !slices.Equal(got, want) {
			t.Errorf("routes once StaleFor is over:\n%q\nwant\n%q", got, want)
		}
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v", err)
		}
	})
}

// slowRoutes is a route target whose Set takes a while, and that records
// the time and the number of routes of each.
type slowRoutes struct {
	took time.Duration
	mu   sync.Mutex
	sets []string
}

func (s *slowRoutes) Set(_ context.Context, routes *route.List) error {
	start := time.Now()
	time.Sleep(s.took)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sets = append(s.sets, fmt.Sprintf("%s %d", start.Format("05.000"), routes.Len()))
	return nil
}

func (s *slowRoutes) Resync() {}

func (s *slowRoutes) take() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := s.sets
	s.sets = nil
	return out
}

// TestDaemonRouteBursts changes the learned routes in a burst and then
// after a quiet spell: in the burst, an apply of routes waits until twice
// the last one's time has passed since it ended and then takes every
// change so far; after the quiet spell a change goes at once.
func TestDaemonRouteBursts(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := &world{}
		rt := &slowRoutes{took: 10 * time.Millisecond}
		rec := control.NewReconciler(control.Targets{L4: fakeL4{w}, Addresses: fakeAddrs{w}, Routes: rt}, fakeStore{w}, discard())
		var mu sync.Mutex
		learned := route.NewList(nil)
		d := &control.Daemon{Reconciler: rec, Health: &fakeHealth{}, Log: discard(), Resync: time.Hour,
			Learned: func() *route.List {
				mu.Lock()
				defer mu.Unlock()
				return learned
			},
		}
		learn := func(i int) {
			mu.Lock()
			p := netip.PrefixFrom(netip.AddrFrom4([4]byte{100, 64, byte(i), 0}), 24)
			learned = learned.With([]route.Route{{Prefix: p, NextHops: []route.NextHop{{Addr: netip.MustParseAddr("10.0.1.2"), Weight: 1}}}})
			mu.Unlock()
			d.RoutesChanged()
		}
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- d.Run(ctx, parse(t, ""), nil, nil) }()
		synctest.Wait()
		t0 := time.Now()
		at := func(ms int) { time.Sleep(t0.Add(time.Duration(ms) * time.Millisecond).Sub(time.Now())) }
		// A quiet spell after the start, then a burst: one route every 4 ms
		// (never at the instant an apply is due: which goes first would be
		// a toss).
		at(1000)
		for i := range 12 {
			at(1001 + 4*i)
			learn(i)
		}
		at(2000)
		learn(100)
		at(3000)
		synctest.Wait()
		want := []string{
			"00.000 0",  // the start
			"01.001 1",  // at once after the quiet spell; ends at 1.011, so waits till 1.031
			"01.031 8",  // the seven changes since; ends at 1.041, so waits till 1.061
			"01.061 12", // the rest of the burst
			"02.000 13", // at once after the quiet spell
		}
		if got := rt.take(); !slices.Equal(got, want) {
			t.Errorf("route Sets (start, routes):\n%q\nwant\n%q", got, want)
		}
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v", err)
		}
	})
}
