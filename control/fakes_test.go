package control_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"portico.dev/appliance/control"
	"portico.dev/appliance/control/config"
	"portico.dev/appliance/control/health"
	"portico.dev/appliance/datapath/nft"
	"portico.dev/appliance/datapath/route"
)

// world is an in-memory datapath: the services the L4 target holds, the
// addresses the address target owns and the state the store keeps. It
// records every call as a line of text, checks the ordering invariant on
// every call (no service without its address), and fails calls on demand.
// It is safe for concurrent use, because the daemon calls it from Run's
// goroutine while the test reads it.
type world struct {
	mu         sync.Mutex
	calls      []string
	times      []time.Time // of each call, for backoff tests under synctest
	services   []nft.Service
	addrs      []netip.Addr
	saved      map[string][]byte
	saves      int
	resyncs    int
	failures   map[string]int // op → how many of its next calls fail
	violations []string
}

var errInjected = errors.New("injected fault")

// fail makes the next n calls of op ("l4.Set", "addrs.Set", "store.Save")
// return an error without changing anything.
func (w *world) fail(op string, n int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.failures == nil {
		w.failures = map[string]int{}
	}
	w.failures[op] = n
}

// call records a call and says whether it is to fail. Must hold w.mu.
func (w *world) call(op, args string) error {
	line := op
	if args != "" {
		line += " " + args
	}
	if w.failures[op] > 0 {
		w.failures[op]--
		line += " -> fail"
		w.calls = append(w.calls, line)
		w.times = append(w.times, time.Now())
		return fmt.Errorf("%s: %w", op, errInjected)
	}
	w.calls = append(w.calls, line)
	w.times = append(w.times, time.Now())
	return nil
}

func (w *world) owns(a netip.Addr) bool { return slices.Contains(w.addrs, a) }

// takeCalls returns the calls so far and forgets them.
func (w *world) takeCalls() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	c := w.calls
	w.calls, w.times = nil, nil
	return c
}

// l4SetTimes returns when each L4 Set recorded so far was called, relative
// to t0.
func (w *world) l4SetTimes(t0 time.Time) []time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	var at []time.Duration
	for i, c := range w.calls {
		if strings.HasPrefix(c, "l4.Set") {
			at = append(at, w.times[i].Sub(t0))
		}
	}
	return at
}

// saved returns the Desired the store holds, if any.
func (w *world) savedDesired(t *testing.T) (control.Desired, bool) {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.saves == 0 {
		return control.Desired{}, false
	}
	d, err := control.DecodeApplied(w.saved)
	if err != nil {
		t.Fatal(err)
	}
	return d, true
}

func (w *world) state() (services []nft.Service, addrs []netip.Addr, saved map[string][]byte, saves int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.services), slices.Clone(w.addrs), maps.Clone(w.saved), w.saves
}

func (w *world) checkViolations(t *testing.T) {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, v := range w.violations {
		t.Error(v)
	}
}

type fakeL4 struct{ w *world }

func (f fakeL4) Set(_ context.Context, services []nft.Service) error {
	w := f.w
	w.mu.Lock()
	defer w.mu.Unlock()
	var keys []string
	for _, s := range services {
		keys = append(keys, s.Key.String())
	}
	if err := w.call("l4.Set", strings.Join(keys, " ")); err != nil {
		return err
	}
	for _, s := range services {
		if !w.owns(s.Key.Addr) {
			w.violations = append(w.violations, fmt.Sprintf("l4.Set: service %s before its address", s.Key))
		}
	}
	w.services = slices.Clone(services)
	return nil
}

func (f fakeL4) Resync() {
	f.w.mu.Lock()
	defer f.w.mu.Unlock()
	f.w.resyncs++
	_ = f.w.call("l4.Resync", "")
}

type fakeAddrs struct{ w *world }

func (f fakeAddrs) Set(_ context.Context, addrs []netip.Addr) error {
	w := f.w
	w.mu.Lock()
	defer w.mu.Unlock()
	var s []string
	for _, a := range addrs {
		s = append(s, a.String())
	}
	if err := w.call("addrs.Set", strings.Join(s, " ")); err != nil {
		return err
	}
	for _, svc := range w.services {
		if !slices.Contains(addrs, svc.Key.Addr) {
			w.violations = append(w.violations, fmt.Sprintf("addrs.Set: removes %s while service %s holds it", svc.Key.Addr, svc.Key))
		}
	}
	w.addrs = slices.Clone(addrs)
	return nil
}

type fakeStore struct{ w *world }

func (f fakeStore) SaveApplied(put map[string][]byte, del []string, replace bool) error {
	w := f.w
	w.mu.Lock()
	defer w.mu.Unlock()
	var keys []string
	for k := range put {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var args []string
	if len(keys) > 0 {
		args = append(args, "put "+strings.Join(keys, " "))
	}
	if len(del) > 0 {
		args = append(args, "del "+strings.Join(del, " "))
	}
	if replace {
		args = append(args, "replace")
	}
	if err := w.call("store.Save", strings.Join(args, " ")); err != nil {
		return err
	}
	if replace || w.saved == nil {
		w.saved = map[string][]byte{}
	}
	for _, k := range del {
		delete(w.saved, k)
	}
	for k, v := range put {
		w.saved[k] = slices.Clone(v)
	}
	w.saves++
	return nil
}

// fakeHealth records the targets the daemon hands the health checker.
type fakeHealth struct {
	mu   sync.Mutex
	sets [][]health.Target
}

func (h *fakeHealth) Set(targets []health.Target) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.sets = append(h.sets, slices.Clone(targets))
}

func (h *fakeHealth) last() (n int, targets []health.Target) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.sets) == 0 {
		return 0, nil
	}
	return len(h.sets), h.sets[len(h.sets)-1]
}

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

func newReconciler(w *world) *control.Reconciler {
	return control.NewReconciler(control.Targets{L4: fakeL4{w}, Addresses: fakeAddrs{w}}, fakeStore{w}, discard())
}

// parse parses a configuration that must be valid.
func parse(t *testing.T, yaml string) *config.Config {
	t.Helper()
	c, err := config.Parse([]byte(yaml), nil)
	if err != nil {
		t.Fatalf("config:\n%s\n%v", yaml, err)
	}
	return c
}

// compile compiles a configuration that must give no warnings.
func compile(t *testing.T, c *config.Config, state map[string]bool) control.Desired {
	t.Helper()
	d, warns := control.Compile(control.Inputs{Config: c, Health: state})
	if len(warns) > 0 {
		t.Fatalf("warnings: %v", warns)
	}
	return d
}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// fakeRoutes records the routes of every Set.
type fakeRoutes struct{ w *world }

func (f fakeRoutes) Set(_ context.Context, routes *route.List) error {
	w := f.w
	w.mu.Lock()
	defer w.mu.Unlock()
	var s []string
	for r := range routes.All() {
		s = append(s, r.String())
	}
	return w.call("routes.Set", strings.Join(s, "; "))
}

func (f fakeRoutes) Resync() {}
