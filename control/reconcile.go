package control

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"reflect"
	"slices"
	"sync/atomic"

	"portico.dev/appliance/control/bgp"
	"portico.dev/appliance/datapath/nft"
	"portico.dev/appliance/datapath/route"
)

// L4Target is the L4 datapath (datapath/nft in production).
type L4Target interface {
	// Set makes the datapath hold exactly these services. It is
	// idempotent and writes only what differs from what it holds; on
	// error the datapath holds either the old or the new version of each
	// service, never a mix within one service.
	Set(ctx context.Context, services []nft.Service) error
	// Resync makes the next Set start from what the kernel really holds
	// (Dump, diff, fix) instead of from what the target last wrote.
	Resync()
}

// AddressTarget owns the VIP addresses (datapath/addr in production).
type AddressTarget interface {
	// Set makes the appliance own exactly these addresses: adds the
	// missing ones, removes ones it added earlier that are not listed, and
	// never touches addresses it did not add. Idempotent.
	Set(ctx context.Context, addrs []netip.Addr) error
}

// RouteTarget holds the routes learned from node peers in the kernel
// (datapath/route in production).
type RouteTarget interface {
	// Set makes the kernel hold exactly these routes among those the
	// target owns, replacing a changed route in place; it never touches
	// routes it does not own. Idempotent.
	Set(ctx context.Context, routes []route.Route) error
	// Resync makes the next Set start from what the kernel holds.
	Resync()
}

// BGPTarget is the BGP speaker (control/bgp in production).
type BGPTarget interface {
	// Set makes the speaker's peers and advertisements match c without
	// resetting sessions whose settings did not change. Idempotent; an
	// invalid c is refused whole.
	Set(ctx context.Context, c bgp.Config) error
}

// Targets are what a reconciler drives. Routes and BGP may be nil on an
// appliance that does no routing (and in tests of the L4 part).
type Targets struct {
	L4        L4Target
	Addresses AddressTarget
	Routes    RouteTarget
	BGP       BGPTarget
}

// AppliedStore keeps the last applied Desired across restarts.
type AppliedStore interface {
	// SaveApplied replaces the stored state; durable when it returns.
	SaveApplied(data []byte) error
}

// Reconciler owns the current Desired and makes the targets match it. It
// is not safe for concurrent use: one goroutine (the daemon's) drives it;
// only Applied may be called from others.
type Reconciler struct {
	t     Targets
	store AppliedStore
	log   *slog.Logger
	cur   *Desired
	// applied is the last Desired applied in full, for Applied; unlike
	// cur, Resync does not clear it.
	applied atomic.Pointer[Desired]
}

// NewReconciler wires a reconciler to its targets.
func NewReconciler(t Targets, store AppliedStore, log *slog.Logger) *Reconciler {
	return &Reconciler{t: t, store: store, log: log}
}

// Current is the last Desired applied in full, nil before the first.
func (r *Reconciler) Current() *Desired { return r.cur }

// Applied is the last Desired applied in full, nil before the first: what
// the datapath holds. Unlike the other methods it may be called from any
// goroutine (the gNMI server reads it); the caller must not change it.
func (r *Reconciler) Applied() *Desired { return r.applied.Load() }

// Apply makes the targets hold d. A Desired equal to the current one
// changes nothing. The order keeps traffic flowing: VIP addresses are added
// before the services that use them and removed after; a VIP is withdrawn
// from upstream routers before its datapath goes and announced only once
// its datapath is in place. Once every target holds d, d is saved as the
// last applied state. On error the current Desired stays as it was and
// Apply may be called again with the same d.
func (r *Reconciler) Apply(ctx context.Context, d Desired) error {
	if r.cur != nil && reflect.DeepEqual(*r.cur, d) {
		return nil
	}
	want := d.Addresses()
	all := want
	withdrawFirst := d.BGP
	if r.cur != nil {
		all = slices.Concat(want, r.cur.Addresses())
		slices.SortFunc(all, netip.Addr.Compare)
		all = slices.Compact(all)
		withdrawFirst.Advertisements = common(r.cur.BGP.Advertisements, d.BGP.Advertisements)
	}
	steps := []func() error{
		func() error { return r.t.Addresses.Set(ctx, all) },
		func() error { return r.bgp(ctx, withdrawFirst) },
		func() error { return r.t.L4.Set(ctx, d.Services()) },
		func() error { return r.routes(ctx, d.Routes) },
		func() error { return r.bgp(ctx, d.BGP) },
		func() error { return r.t.Addresses.Set(ctx, want) },
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return fmt.Errorf("reconcile: %w", err)
		}
	}
	data, err := json.Marshal(d)
	if err != nil {
		return fmt.Errorf("reconcile: encode applied state: %w", err)
	}
	if err := r.store.SaveApplied(data); err != nil {
		return fmt.Errorf("reconcile: %w", err)
	}
	r.cur = &d
	r.applied.Store(&d)
	r.log.Info("applied", "vips", len(d.VIPs))
	return nil
}

func (r *Reconciler) bgp(ctx context.Context, c bgp.Config) error {
	if r.t.BGP == nil {
		return nil
	}
	return r.t.BGP.Set(ctx, c)
}

func (r *Reconciler) routes(ctx context.Context, routes []route.Route) error {
	if r.t.Routes == nil {
		return nil
	}
	return r.t.Routes.Set(ctx, routes)
}

// common lists the advertisements in both a and b, in a's order.
func common(a, b []bgp.Advertisement) []bgp.Advertisement {
	var out []bgp.Advertisement
	for _, x := range a {
		if slices.Contains(b, x) {
			out = append(out, x)
		}
	}
	return out
}

// Resync makes the next Apply rewrite every target from what the kernel
// holds, even if the Desired has not changed.
func (r *Reconciler) Resync() {
	r.t.L4.Resync()
	if r.t.Routes != nil {
		r.t.Routes.Resync()
	}
	r.cur = nil
}

// DecodeApplied reads a Desired saved by Apply.
func DecodeApplied(data []byte) (Desired, error) {
	var d Desired
	if err := json.Unmarshal(data, &d); err != nil {
		return Desired{}, fmt.Errorf("decode applied state: %w", err)
	}
	return d, nil
}
