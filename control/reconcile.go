package control

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
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
	// routes it does not own. Idempotent; its work is in proportion to
	// the changes when routes is made from the List of the last call.
	Set(ctx context.Context, routes *route.List) error
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

// AppliedStore keeps the last applied Desired but its routes across
// restarts, in parts (one per VIP, and the rest), so that a change writes
// only what changed: the whole of 10,000 VIPs is 20 MB of JSON.
type AppliedStore interface {
	// SaveApplied changes the stored parts in one transaction, durable
	// when it returns: each part of put is stored under its key, each key
	// of del removed, and with replace every part not in put removed too.
	// On error nothing changed.
	SaveApplied(put map[string][]byte, del []string, replace bool) error
}

// Reconciler owns the current Desired and makes the targets match it. It
// is not safe for concurrent use: one goroutine (the daemon's) drives it;
// only Applied may be called from others.
type Reconciler struct {
	t     Targets
	store AppliedStore
	log   *slog.Logger
	// cur is what the targets hold, nil when unknown; saved is what the
	// store holds, nil when unknown.
	cur, saved *Desired
	// services are cur's services as the L4 target was given them: an
	// unchanged VIP hands it the very same again.
	services []nft.Service
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
// changes nothing, and a target whose part of d equals its part of the
// current one is not called. The order keeps traffic flowing: VIP addresses
// are added before the services that use them and removed after; a VIP is
// withdrawn from upstream routers before its datapath goes and announced
// only once its datapath is in place. Once every target holds d, what
// differs from the stored state is saved. On error the current Desired
// stays as it was and Apply may be called again with the same d.
//
// d must not be modified afterwards: the reconciler keeps it, and the L4
// target keeps its slots.
func (r *Reconciler) Apply(ctx context.Context, d Desired) error {
	cur := r.cur
	var same sameness
	if cur != nil {
		if same = compareDesired(*cur, d); same.all() {
			return nil
		}
	}
	addrs := cur == nil || !sameAddresses(*cur, d)
	bgpChanged := !same.bgp
	var steps []func() error
	var want []netip.Addr
	if addrs {
		want = d.Addresses()
		all := want
		if cur != nil {
			all = slices.Concat(want, cur.Addresses())
			slices.SortFunc(all, netip.Addr.Compare)
			all = slices.Compact(all)
		}
		steps = append(steps, func() error { return r.t.Addresses.Set(ctx, all) })
	}
	if bgpChanged {
		withdrawFirst := d.BGP
		if cur != nil {
			withdrawFirst.Advertisements = common(cur.BGP.Advertisements, d.BGP.Advertisements)
		}
		steps = append(steps, func() error { return r.bgp(ctx, withdrawFirst) })
	}
	services := r.services
	if !same.vips {
		services = r.servicesFor(d)
		steps = append(steps, func() error { return r.t.L4.Set(ctx, services) })
	}
	if !same.routes {
		steps = append(steps, func() error { return r.routes(ctx, d.Routes) })
	}
	if bgpChanged {
		steps = append(steps, func() error { return r.bgp(ctx, d.BGP) })
	}
	if addrs {
		steps = append(steps, func() error { return r.t.Addresses.Set(ctx, want) })
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return fmt.Errorf("reconcile: %w", err)
		}
	}
	if err := r.save(d); err != nil {
		return fmt.Errorf("reconcile: %w", err)
	}
	r.cur, r.services = &d, services
	r.applied.Store(&d)
	r.log.Info("applied", "vips", len(d.VIPs))
	return nil
}

// servicesFor is d.Services(), with the service of every VIP that did not
// change since cur taken from the services cur was applied with.
func (r *Reconciler) servicesFor(d Desired) []nft.Service {
	if r.cur == nil || len(r.services) != len(r.cur.VIPs) {
		return d.Services()
	}
	out := make([]nft.Service, len(d.VIPs))
	for i, v := range d.VIPs {
		if i < len(r.cur.VIPs) && sameVIP(r.cur.VIPs[i], v) {
			out[i] = r.services[i]
		} else {
			out[i] = v.service()
		}
	}
	return out
}

// Parts of the stored state: one per VIP, and the BGP configuration. The
// routes learned from BGP are not stored: they are the kernel's, which keeps
// them across a restart of the daemon (route.Target.Dump reads them), and
// rewriting 100,000 of them on every change cost more than installing them.
// Versions before that stored them under partRoutes.
const (
	partVIP    = "vip/"
	partBGP    = "bgp"
	partRoutes = "routes"
)

// save writes what differs between d and the stored state.
func (r *Reconciler) save(d Desired) error {
	put := map[string][]byte{}
	var del []string
	encode := func(key string, v any) error {
		data, err := json.Marshal(v)
		if err != nil {
			return fmt.Errorf("encode applied state %s: %w", key, err)
		}
		put[key] = data
		return nil
	}
	old := r.saved
	if old == nil {
		old = &Desired{}
	}
	// Both lists of VIPs are sorted by key.
	i, j := 0, 0
	for i < len(old.VIPs) || j < len(d.VIPs) {
		c := 0
		switch {
		case i == len(old.VIPs):
			c = 1
		case j == len(d.VIPs):
			c = -1
		default:
			c = old.VIPs[i].Key.Compare(d.VIPs[j].Key)
		}
		switch {
		case c < 0:
			del = append(del, partVIP+old.VIPs[i].Key.String())
			i++
		case c > 0:
			if err := encode(partVIP+d.VIPs[j].Key.String(), d.VIPs[j]); err != nil {
				return err
			}
			j++
		default:
			if r.saved == nil || !sameVIP(old.VIPs[i], d.VIPs[j]) {
				if err := encode(partVIP+d.VIPs[j].Key.String(), d.VIPs[j]); err != nil {
					return err
				}
			}
			i++
			j++
		}
	}
	if r.saved == nil || !sameBGP(old.BGP, d.BGP) {
		if err := encode(partBGP, d.BGP); err != nil {
			return err
		}
	}
	if r.saved != nil && len(put) == 0 && len(del) == 0 {
		return nil
	}
	if err := r.store.SaveApplied(put, del, r.saved == nil); err != nil {
		return err
	}
	r.saved = &d
	return nil
}

func (r *Reconciler) bgp(ctx context.Context, c bgp.Config) error {
	if r.t.BGP == nil {
		return nil
	}
	return r.t.BGP.Set(ctx, c)
}

func (r *Reconciler) routes(ctx context.Context, routes *route.List) error {
	if r.t.Routes == nil {
		return nil
	}
	return r.t.Routes.Set(ctx, routes)
}

// common lists the advertisements in both a and b, in a's order.
func common(a, b []bgp.Advertisement) []bgp.Advertisement {
	in := make(map[bgp.Advertisement]bool, len(b))
	for _, x := range b {
		in[x] = true
	}
	var out []bgp.Advertisement
	for _, x := range a {
		if in[x] {
			out = append(out, x)
		}
	}
	return out
}

// Resync makes the next Apply rewrite every target from what the kernel
// holds, even if the Desired has not changed. The store is not read back:
// only the daemon writes it.
func (r *Reconciler) Resync() {
	r.t.L4.Resync()
	if r.t.Routes != nil {
		r.t.Routes.Resync()
	}
	r.cur = nil
}

// legacyPart is where an earlier version kept the whole applied state.
const legacyPart = "desired_state"

// DecodeApplied reads a Desired saved by Apply, from the parts the store
// holds. It has no Routes: they are not stored.
func DecodeApplied(parts map[string][]byte) (Desired, error) {
	var d Desired
	if data, ok := parts[legacyPart]; ok {
		if err := json.Unmarshal(data, &d); err != nil {
			return Desired{}, fmt.Errorf("decode applied state: %w", err)
		}
	}
	for key, data := range parts {
		var err error
		switch {
		case key == legacyPart:
		case strings.HasPrefix(key, partVIP):
			var v VIP
			if err = json.Unmarshal(data, &v); err == nil {
				d.VIPs = append(d.VIPs, v)
			}
		case key == partRoutes:
		case key == partBGP:
			err = json.Unmarshal(data, &d.BGP)
		default:
			err = fmt.Errorf("unknown part")
		}
		if err != nil {
			return Desired{}, fmt.Errorf("decode applied state: %s: %w", key, err)
		}
	}
	slices.SortFunc(d.VIPs, func(a, b VIP) int { return a.Key.Compare(b.Key) })
	d.Routes = nil // of an earlier version; the kernel is their record
	return d, nil
}
