package control

import (
	"context"
	"log/slog"
	"maps"
	"sync"
	"time"

	"portico.dev/appliance/control/config"
	"portico.dev/appliance/control/health"
)

// DefaultResync is how often the daemon re-reads the kernel by default.
const DefaultResync = 5 * time.Minute

// HealthChecker runs the backends' health checks (control/health in
// production).
type HealthChecker interface {
	// Set makes the running checks match targets: starts new ones, stops
	// removed ones, and leaves unchanged ones running with their state.
	Set(targets []health.Target)
}

// Daemon is the one goroutine that owns the inputs (configuration, health)
// and drives the reconciler: every change of an input compiles a new
// Desired and applies it; a failed apply is retried with backoff; a
// periodic resync repairs what someone else changed in the kernel.
type Daemon struct {
	Reconciler *Reconciler
	Health     HealthChecker
	Log        *slog.Logger
	// Resync is how often the kernel state is read back and repaired;
	// 0 means DefaultResync.
	Resync time.Duration

	mu      sync.Mutex
	pending []health.Event
	wake    chan struct{}
}

// Notify queues a health event for Run. It never blocks, so the health
// checker may call it while Run is waiting for the checker.
func (d *Daemon) Notify(ev health.Event) {
	d.mu.Lock()
	d.pending = append(d.pending, ev)
	d.mu.Unlock()
	select {
	case d.wakeChan() <- struct{}{}:
	default:
	}
}

func (d *Daemon) wakeChan() chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.wake == nil {
		d.wake = make(chan struct{}, 1)
	}
	return d.wake
}

func (d *Daemon) takeEvents() []health.Event {
	d.mu.Lock()
	defer d.mu.Unlock()
	evs := d.pending
	d.pending = nil
	return evs
}

// Run applies cfg, then serves until ctx ends: new configurations from
// reload, health changes from Notify. seed gives the state of backends
// (from the last applied Desired), so a restart does not send traffic to
// backends that were down.
func (d *Daemon) Run(ctx context.Context, cfg *config.Config, seed map[string]bool, reload <-chan *config.Config) error {
	state := maps.Clone(seed)
	if state == nil {
		state = map[string]bool{}
	}
	const minBackoff, maxBackoff = 500 * time.Millisecond, 30 * time.Second
	backoff := minBackoff
	retry := time.NewTimer(0)
	retry.Stop()
	every := d.Resync
	if every <= 0 {
		every = DefaultResync
	}
	resync := time.NewTicker(every)
	defer resync.Stop()

	apply := func(why string) {
		want, warns := Compile(Inputs{Config: cfg, Health: state})
		for _, w := range warns {
			d.Log.Warn("compile", "path", w.Path, "msg", w.Message)
		}
		if err := d.Reconciler.Apply(ctx, want); err != nil {
			d.Log.Error("apply failed, will retry", "why", why, "err", err, "retry_in", backoff)
			retry.Reset(backoff)
			backoff = min(2*backoff, maxBackoff)
			return
		}
		backoff = minBackoff
		state = want.Health()
		d.Health.Set(want.HealthTargets())
	}
	apply("start")
	for {
		select {
		case <-ctx.Done():
			return nil
		case c := <-reload:
			cfg = c
			apply("reload")
		case <-d.wakeChan():
			changed := false
			for _, ev := range d.takeEvents() {
				d.Log.Info("backend health", "backend", ev.ID, "up", ev.Up, "reason", ev.Reason)
				if up, known := state[ev.ID]; known && up != ev.Up {
					state[ev.ID] = ev.Up
					changed = true
				}
			}
			if changed {
				apply("health")
			}
		case <-retry.C:
			apply("retry")
		case <-resync.C:
			d.Reconciler.Resync()
			apply("resync")
		}
	}
}
