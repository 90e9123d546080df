package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"portico.dev/appliance/control"
	"portico.dev/appliance/control/config"
	"portico.dev/appliance/control/health"
	"portico.dev/appliance/datapath/addr"
	"portico.dev/appliance/datapath/nft"
	"portico.dev/appliance/store"
)

// daemonPath programs the services as the appliance does: a control.Daemon
// (the daemon's own loop, unchanged) with the real datapath targets in the
// router's namespace (datapath/nft, datapath/addr) and a real store in a
// temporary directory. Cold programming is the daemon's first apply; a
// change is a reload with one backend of one VIP replaced, timed from the
// new configuration reaching the daemon until its apply is done: compile,
// Reconciler.Apply (the nft Set, the store's save; the addresses do not
// change) and the hand-over to the health checker. The YAML parsing and
// validation of a reload are not timed: the bench builds the configuration
// in memory.
type daemonPath struct {
	router *os.File
	log    *slog.Logger
	l4     *nft.Target
	addrs  *addr.Target
	st     *store.Store
	dir    string
	cfg    *config.Config

	// spent is the time of the last apply in each target and the store.
	mu    sync.Mutex
	spent spent

	reload  chan *config.Config
	applied chan struct{}
	stop    context.CancelFunc
	done    chan error
}

// spent is where an apply's time went, besides compile and the
// reconciler's own work.
type spent struct {
	l4, addrs, store time.Duration
}

func newDaemonPath(router *os.File, log *slog.Logger) (*daemonPath, error) {
	p := &daemonPath{router: router, log: log, reload: make(chan *config.Config), applied: make(chan struct{}, 1)}
	var err error
	if p.l4, err = nft.New(nft.Options{NetNS: int(router.Fd()), Log: log.With("component", "nft")}); err != nil {
		return nil, err
	}
	if p.addrs, err = addr.New(int(router.Fd())); err != nil {
		return nil, errors.Join(err, p.close())
	}
	if p.dir, err = os.MkdirTemp("", "l4bench-store-"); err != nil {
		return nil, errors.Join(err, p.close())
	}
	if p.st, err = store.Open(filepath.Join(p.dir, "state.db")); err != nil {
		return nil, errors.Join(err, p.close())
	}
	return p, nil
}

// prepare builds the configuration: what the daemon reads from its file.
func (p *daemonPath) prepare(services []service) error {
	p.cfg = &config.Config{}
	for i, s := range services {
		v := config.VIP{Name: fmt.Sprintf("vip%d", i), Address: s.vip.String(), Port: vipPort, Protocol: "tcp", Scheduler: "maglev"}
		v.Backends = configBackends(s.backends)
		p.cfg.VIPs = append(p.cfg.VIPs, v)
	}
	return nil
}

func configBackends(backends []netip.AddrPort) []config.Backend {
	out := make([]config.Backend, len(backends))
	for i, b := range backends {
		w := 1
		out[i] = config.Backend{Address: b.String(), Weight: &w}
	}
	return out
}

// apply starts the daemon and waits for its first apply.
func (p *daemonPath) apply(ctx context.Context) error {
	quiet := p.log.Handler()
	d := &control.Daemon{
		Reconciler: control.NewReconciler(control.Targets{
			L4:        timedL4{p.l4, p},
			Addresses: timedAddrs{p.addrs, p},
		}, timedStore{p.st, p}, slog.New(levelAtLeast{quiet, slog.LevelWarn}).With("component", "reconcile")),
		Health: appliedSignal(p.applied),
		Log:    slog.New(levelAtLeast{quiet, slog.LevelWarn}).With("component", "daemon"),
		// No resync while measuring.
		Resync: 24 * time.Hour,
	}
	runCtx, stop := context.WithCancel(context.Background())
	p.stop, p.done = stop, make(chan error, 1)
	p.resetSpent()
	go func() { p.done <- d.Run(runCtx, p.cfg, nil, p.reload) }()
	return p.waitApplied(ctx)
}

// change reloads the configuration with service i's backends replaced and
// waits for the daemon to have applied it.
func (p *daemonPath) change(ctx context.Context, i int, backends []netip.AddrPort) (time.Duration, error) {
	next := *p.cfg
	next.VIPs = slices.Clone(p.cfg.VIPs)
	next.VIPs[i].Backends = configBackends(backends)
	p.cfg = &next
	p.resetSpent()
	start := time.Now()
	select {
	case p.reload <- &next:
	case err := <-p.done:
		return 0, fmt.Errorf("daemon stopped: %v", err)
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	err := p.waitApplied(ctx)
	return time.Since(start), err
}

func (p *daemonPath) waitApplied(ctx context.Context) error {
	select {
	case <-p.applied:
		return nil
	case err := <-p.done:
		return fmt.Errorf("daemon stopped: %v", err)
	case <-time.After(5 * time.Minute):
		return fmt.Errorf("no apply within 5 minutes (see the daemon's log)")
	case <-ctx.Done():
		return ctx.Err()
	}
}

// lastSpent is where the last apply's time went.
func (p *daemonPath) lastSpent() spent {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.spent
}

func (p *daemonPath) resetSpent() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.spent = spent{}
}

func (p *daemonPath) add(f func(s *spent)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	f(&p.spent)
}

// removeAddresses stops the daemon and takes its addresses off lo, so that
// the kernel memory they held can be told from the datapath's.
func (p *daemonPath) removeAddresses(ctx context.Context) error {
	if err := p.stopDaemon(); err != nil {
		return err
	}
	return p.addrs.Set(ctx, nil)
}

func (p *daemonPath) stopDaemon() error {
	if p.stop == nil {
		return nil
	}
	p.stop()
	p.stop = nil
	return <-p.done
}

// close stops the daemon and releases what this process holds; the kernel
// keeps the rules.
func (p *daemonPath) close() error {
	errs := []error{p.stopDaemon()}
	if p.st != nil {
		errs = append(errs, p.st.Close())
	}
	if p.addrs != nil {
		p.addrs.Close()
	}
	if p.l4 != nil {
		errs = append(errs, p.l4.Close())
	}
	if p.dir != "" {
		errs = append(errs, os.RemoveAll(p.dir))
	}
	return errors.Join(errs...)
}

// The daemon hands the health checker its targets once a new configuration
// is applied: the bench's checker only says so.
type appliedSignal chan struct{}

func (s appliedSignal) Set([]health.Target) {
	select {
	case s <- struct{}{}:
	default:
	}
}

type timedL4 struct {
	t *nft.Target
	p *daemonPath
}

func (x timedL4) Set(ctx context.Context, services []nft.Service) error {
	start := time.Now()
	err := x.t.Set(ctx, services)
	x.p.add(func(s *spent) { s.l4 += time.Since(start) })
	return err
}

func (x timedL4) Resync() { x.t.Resync() }

type timedAddrs struct {
	t *addr.Target
	p *daemonPath
}

func (x timedAddrs) Set(ctx context.Context, addrs []netip.Addr) error {
	start := time.Now()
	err := x.t.Set(ctx, addrs)
	x.p.add(func(s *spent) { s.addrs += time.Since(start) })
	return err
}

type timedStore struct {
	st *store.Store
	p  *daemonPath
}

func (x timedStore) SaveApplied(put map[string][]byte, del []string, replace bool) error {
	start := time.Now()
	err := x.st.SaveApplied(put, del, replace)
	x.p.add(func(s *spent) { s.store += time.Since(start) })
	return err
}

// levelAtLeast drops records below a level: the daemon logs every apply.
type levelAtLeast struct {
	slog.Handler
	min slog.Level
}

func (h levelAtLeast) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.min && h.Handler.Enabled(ctx, l)
}

func (h levelAtLeast) WithAttrs(a []slog.Attr) slog.Handler {
	return levelAtLeast{h.Handler.WithAttrs(a), h.min}
}

func (h levelAtLeast) WithGroup(name string) slog.Handler {
	return levelAtLeast{h.Handler.WithGroup(name), h.min}
}
