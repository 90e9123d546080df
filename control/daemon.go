package control

import (
	"context"
	"log/slog"
	"maps"
	"sync"
	"time"

	"portico.dev/appliance/control/config"
	"portico.dev/appliance/control/health"
	"portico.dev/appliance/datapath/route"
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

	// Learned reads the routes the BGP speaker accepts now; nil on an
	// appliance without BGP.
	Learned func() *route.List
	// StaleRoutes are the routes the last run installed (route.Target.Dump
	// reads them from the kernel). For StaleFor
	// after start each of them stays while no node announces its prefix
	// again, so that a daemon restart does not pull routes from the kernel
	// while the BGP sessions come back.
	StaleRoutes []route.Route
	StaleFor    time.Duration
	// Kubernetes connects the clusters; nil when none is configured.
	Kubernetes *KubeInputs

	mu      sync.Mutex
	pending []health.Event
	learned bool // the speaker said its routes changed
	// kubeChanged: a cluster's Snapshot changed.
	kubeChanged bool
	wake        chan struct{}
}

// RoutesChanged tells Run that the BGP speaker's routes or sessions
// changed. It never blocks.
func (d *Daemon) RoutesChanged() {
	d.mu.Lock()
	d.learned = true
	d.mu.Unlock()
	select {
	case d.wakeChan() <- struct{}{}:
	default:
	}
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

func (d *Daemon) takeEvents() (evs []health.Event, learned, kube bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	evs, learned, kube = d.pending, d.learned, d.kubeChanged
	d.pending, d.learned, d.kubeChanged = nil, false, false
	return evs, learned, kube
}

// learnedRoutes is what the speaker accepts now, plus, while stale is
// true, the last run's routes for prefixes no node has announced again.
func (d *Daemon) learnedRoutes(stale bool) *route.List {
	var live *route.List
	if d.Learned != nil {
		live = d.Learned()
	}
	if !stale {
		return live
	}
	var keep []route.Route
	for _, r := range d.StaleRoutes {
		if _, ok := live.Get(r.Prefix); !ok {
			keep = append(keep, r)
		}
	}
	return live.With(keep)
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

	stale := len(d.StaleRoutes) > 0 && d.StaleFor > 0
	staleEnd := time.NewTimer(d.StaleFor)
	defer staleEnd.Stop()
	// warned holds the last compile's warnings: each is logged when it
	// first appears, not again on every health change or resync.
	warned := map[Warning]bool{}
	cache := &Cache{}
	// configured is false from a new configuration until it is applied:
	// only then do the backends to check change. A health event changes
	// the state itself, a retry or a resync nothing; at 10,000 VIPs
	// rebuilding both takes milliseconds.
	configured := false
	// In a burst of BGP updates, an apply of routes waits until twice the
	// last apply's time has passed since it ended: the daemon then takes at
	// most a third of a core and leaves the rest to the speaker, with fewer
	// and bigger batches, and a change after a quiet spell goes at once.
	// Health changes and configurations never wait.
	var calm time.Time
	routesDue := false
	routesTimer := time.NewTimer(0)
	routesTimer.Stop()
	defer routesTimer.Stop()
	var k8s *kubeState
	if d.Kubernetes != nil {
		k8s = &kubeState{in: d.Kubernetes, log: d.Log, status: newStatusWriter(d.Kubernetes.Status, d.Log)}
		statusCtx, stopStatus := context.WithCancel(ctx)
		statusDone := make(chan struct{})
		go func() { defer close(statusDone); k8s.status.run(statusCtx) }()
		defer func() { stopStatus(); <-statusDone }()
	}
	apply := func(why string) {
		var kin Kubernetes
		var err error
		if k8s != nil {
			kin, err = k8s.step()
		}
		if err != nil {
			// Leases not saved: nothing may name the new addresses yet.
			d.Log.Error("kubernetes failed, will retry", "why", why, "err", err, "retry_in", backoff)
			retry.Reset(backoff)
			backoff = min(2*backoff, maxBackoff)
			return
		}
		want, warns := Compile(Inputs{Config: cfg, Health: state, Learned: d.learnedRoutes(stale), Cache: cache, Kubernetes: kin})
		now := make(map[Warning]bool, len(warns))
		for _, w := range warns {
			now[w] = true
			if !warned[w] {
				d.Log.Warn("compile", "path", w.Path, "msg", w.Message)
			}
		}
		warned = now
		start := time.Now()
		err = d.Reconciler.Apply(ctx, want)
		routesDue, calm = false, time.Now().Add(2*time.Since(start))
		if err != nil {
			d.Log.Error("apply failed, will retry", "why", why, "err", err, "retry_in", backoff)
			retry.Reset(backoff)
			backoff = min(2*backoff, maxBackoff)
			return
		}
		backoff = minBackoff
		if k8s != nil {
			k8s.applied(warns)
		}
		if !configured {
			state = want.checkedHealth()
			d.Health.Set(want.HealthTargets())
			configured = true
		}
	}
	apply("start")
	for {
		select {
		case <-ctx.Done():
			return nil
		case c := <-reload:
			cfg, configured = c, false
			apply("reload")
		case <-d.wakeChan():
			evs, routes, kube := d.takeEvents()
			changed := false
			for _, ev := range evs {
				d.Log.Info("backend health", "backend", ev.ID, "up", ev.Up, "reason", ev.Reason)
				if up, known := state[ev.ID]; known && up != ev.Up {
					state[ev.ID] = ev.Up
					changed = true
				}
			}
			switch wait := time.Until(calm); {
			case changed:
				apply("health")
			case kube:
				apply("kubernetes")
			case !routes || routesDue:
			case wait > 0:
				routesDue = true
				routesTimer.Reset(wait)
			default:
				apply("routes")
			}
		case <-routesTimer.C:
			if routesDue {
				apply("routes")
			}
		case <-staleEnd.C:
			if stale {
				stale = false
				apply("stale routes expired")
			}
		case <-retry.C:
			apply("retry")
		case <-resync.C:
			d.Reconciler.Resync()
			apply("resync")
		}
	}
}
