package control

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"reflect"
	"slices"

	"portico.dev/appliance/datapath/nft"
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

// AppliedStore keeps the last applied Desired across restarts.
type AppliedStore interface {
	// SaveApplied replaces the stored state; durable when it returns.
	SaveApplied(data []byte) error
}

// Reconciler owns the current Desired and makes the targets match it. It
// is not safe for concurrent use: one goroutine (the daemon's) drives it.
type Reconciler struct {
	l4    L4Target
	addrs AddressTarget
	store AppliedStore
	log   *slog.Logger
	cur   *Desired
}

// NewReconciler wires a reconciler to its targets.
func NewReconciler(l4 L4Target, addrs AddressTarget, store AppliedStore, log *slog.Logger) *Reconciler {
	return &Reconciler{l4: l4, addrs: addrs, store: store, log: log}
}

// Current is the last Desired applied in full, nil before the first.
func (r *Reconciler) Current() *Desired { return r.cur }

// Apply makes the targets hold d. A Desired equal to the current one
// changes nothing. VIP addresses are added before the services that use
// them and removed after, so no packet finds a service without its
// address. Once every target holds d, d is saved as the last applied
// state. On error the current Desired stays as it was and Apply may be
// called again with the same d.
func (r *Reconciler) Apply(ctx context.Context, d Desired) error {
	if r.cur != nil && reflect.DeepEqual(*r.cur, d) {
		return nil
	}
	want := d.Addresses()
	all := want
	if r.cur != nil {
		all = slices.Concat(want, r.cur.Addresses())
		slices.SortFunc(all, netip.Addr.Compare)
		all = slices.Compact(all)
	}
	if err := r.addrs.Set(ctx, all); err != nil {
		return fmt.Errorf("reconcile: %w", err)
	}
	if err := r.l4.Set(ctx, d.Services()); err != nil {
		return fmt.Errorf("reconcile: %w", err)
	}
	if err := r.addrs.Set(ctx, want); err != nil {
		return fmt.Errorf("reconcile: %w", err)
	}
	data, err := json.Marshal(d)
	if err != nil {
		return fmt.Errorf("reconcile: encode applied state: %w", err)
	}
	if err := r.store.SaveApplied(data); err != nil {
		return fmt.Errorf("reconcile: %w", err)
	}
	r.cur = &d
	r.log.Info("applied", "vips", len(d.VIPs))
	return nil
}

// Resync makes the next Apply rewrite every target from what the kernel
// holds, even if the Desired has not changed.
func (r *Reconciler) Resync() {
	r.l4.Resync()
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
