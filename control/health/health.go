// Package health runs active health checks against load-balancer backends.
//
// A Manager runs one prober goroutine per target. Each prober connects to
// its backend every Check.Interval and turns the results into an up/down
// state with rise/fall hysteresis, so one lost probe does not flap a backend
// in and out of a pool. Callers hand the Manager the whole desired set of
// targets with Set and learn about transitions through the notify callback.
package health

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"
)

// Check describes how a target is probed.
type Check struct {
	Type     string        // "tcp" (connect succeeds) or "http" (GET Path answers 2xx or 3xx)
	Path     string        // http only; "" means "/"
	Interval time.Duration // pause between the end of one probe and the start of the next
	Timeout  time.Duration // bound on one probe (connect and response); at most Interval
	Rise     int           // consecutive successes that bring a down target up
	Fall     int           // consecutive failures that bring an up target down
}

// Target is one backend to probe.
type Target struct {
	ID    string // caller's key, unique within a Set, e.g. "vip-name/10.0.1.11:8080"
	Addr  netip.AddrPort
	Check Check
	Up    bool // state when the target is first added, e.g. restored from persisted state
}

// Event reports a state transition of a target.
type Event struct {
	ID     string
	Addr   netip.AddrPort
	Up     bool
	Reason string // e.g. "3 consecutive failures: dial tcp 10.0.1.11:8080: connect: connection refused"
}

func (t Target) validate() error {
	c := t.Check
	switch {
	case !t.Addr.IsValid():
		return errors.New("invalid address")
	case c.Type != "tcp" && c.Type != "http":
		return fmt.Errorf("unknown check type %q", c.Type)
	case c.Type == "http" && c.Path != "" && !strings.HasPrefix(c.Path, "/"):
		return fmt.Errorf("path %q does not start with /", c.Path)
	case c.Interval <= 0:
		return fmt.Errorf("interval %v is not positive", c.Interval)
	case c.Timeout <= 0 || c.Timeout > c.Interval:
		return fmt.Errorf("timeout %v is not in (0, interval %v]", c.Timeout, c.Interval)
	case c.Rise < 1 || c.Fall < 1:
		return fmt.Errorf("rise %d and fall %d must be at least 1", c.Rise, c.Fall)
	}
	return nil
}

// Manager keeps one prober running per target.
//
// Each target's counters and state belong to its prober goroutine; the
// Manager's mutex only serialises Set, State and Close over the map of
// probers.
type Manager struct {
	log    *slog.Logger
	notify func(Event)
	client *http.Client // shared by every http probe

	mu      sync.Mutex
	probers map[string]*prober
	closed  bool
}

// NewManager returns a Manager with no targets that logs to log with
// component=health. notify is called from the
// probers' goroutines on every state transition, never for a target's initial
// state. It must return quickly (forward to a channel, say) and must not call
// the Manager: Set and Close wait for probers that may be inside notify.
func NewManager(log *slog.Logger, notify func(Event)) *Manager {
	return &Manager{
		log:    log.With("component", "health"),
		notify: notify,
		client: &http.Client{
			// A probe must see a fresh connection, as a new client would,
			// not one a previous probe left open. No Proxy: probes go
			// straight to the backend.
			Transport: &http.Transport{DisableKeepAlives: true},
			// A redirect already shows the backend is serving.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		probers: make(map[string]*prober),
	}
}

// Set makes the running probers match targets: it starts probers for new
// targets, stops those of removed ones and restarts, with fresh counters but
// the current state, those whose Addr or Check changed. Unchanged targets keep
// running untouched; their Up field is ignored. Invalid targets are logged and
// treated as absent. When Set returns, stopped probers have ended and will
// send no more events. Set after Close does nothing.
func (m *Manager) Set(targets []Target) {
	want := make(map[string]Target, len(targets))
	for _, t := range targets {
		if err := t.validate(); err != nil {
			m.log.Error("target not probed", "target", t.ID, "err", err)
			continue
		}
		want[t.ID] = t
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return
	}
	var stale []*prober
	for id, p := range m.probers {
		if t, ok := want[id]; !ok || t.Addr != p.target.Addr || t.Check != p.target.Check {
			stale = append(stale, p)
		}
	}
	stop(stale)
	for _, p := range stale {
		delete(m.probers, p.target.ID)
		if t, ok := want[p.target.ID]; ok {
			t.Up = p.up.Load() // a restarted prober carries on from the old one's state
			want[t.ID] = t
		}
	}
	for id, t := range want {
		if _, running := m.probers[id]; !running {
			m.probers[id] = m.start(t)
		}
	}
}

// State returns whether each target is currently up, keyed by ID.
func (m *Manager) State() map[string]bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	state := make(map[string]bool, len(m.probers))
	for id, p := range m.probers {
		state[id] = p.up.Load()
	}
	return state
}

// Close stops every prober and waits for their goroutines to end.
func (m *Manager) Close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = true
	stop(slices.Collect(maps.Values(m.probers)))
	clear(m.probers)
}

func (m *Manager) start(t Target) *prober {
	ctx, cancel := context.WithCancel(context.Background())
	p := &prober{
		target: t,
		probe:  m.probeFunc(t),
		report: m.report,
		cancel: cancel,
		done:   make(chan struct{}),
	}
	p.up.Store(t.Up)
	go p.run(ctx)
	return p
}

func (m *Manager) report(e Event) {
	m.log.Info("target state changed", "target", e.ID, "addr", e.Addr, "up", e.Up, "reason", e.Reason)
	m.notify(e)
}

// stop cancels all of probers before waiting for any, so that stopping many
// costs one probe cancellation rather than one per prober.
func stop(probers []*prober) {
	for _, p := range probers {
		p.cancel()
	}
	for _, p := range probers {
		<-p.done
	}
}
