package ipam

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
)

// Observed is a Service as found in its cluster on start: what Allocate
// needs of it, and the IPs of its status.loadBalancer.ingress, in order.
type Observed struct {
	Service
	Ingress []netip.Addr
}

// Report is one disagreement Reconcile settled: a status address it did
// not take, or a stored lease it dropped or replaced.
type Report struct {
	// Service is the Service whose status address or lease is concerned.
	Service Key
	// Address is that status address or leased address.
	Address netip.Addr
	// Other is the Service in the way, when there is one.
	Other Key
	// Reason is a sentence naming the Services, the address and what was
	// done.
	Reason string
}

// Reconciled is the outcome of Reconcile.
type Reconciled struct {
	// Leases is the new set of leases, sorted by address then key, to be
	// stored and given to Allocate.
	Leases []Lease
	// Reports are sorted by Service, address, then reason.
	Reports []Report
}

// entry is a lease Reconcile holds for one Service and family; fresh
// marks one taken from a status with no lease before it, whose Seq is set
// at the end.
type entry struct {
	lease Lease
	fresh bool
}

// claim is a status address that differs from its Service's lease.
type claim struct {
	o owner
	a netip.Addr
}

// Reconcile merges the stored leases with the addresses the clusters'
// Service statuses show, on start, before the first Allocate: the store
// may be older or newer than the clusters (restored from a backup, lost,
// or the status written by another load balancer), and neither may make
// one address go to two owners.
//
// observed holds the LoadBalancer Services the appliance serves, each key
// once (of a key given twice, the first in input order counts). complete
// names the clusters whose view is complete (their informers have listed
// every Service): a stored lease of a Service not in observed is dropped
// only when its cluster is complete, and kept otherwise.
//
// Rules:
//   - Stored leases are taken oldest first (Seq, then key). One is dropped
//     when its address is outside every pool or a network or broadcast
//     address; when its Service is observed and refused before allocation
//     (an unparsable annotation), is not served for the address's family,
//     requests another address of that family, or already holds an older
//     lease of it; or when an older lease holds the address and the two
//     observed Services may not share it. Whether an unobserved Service
//     may share is unknown, so a stored lease is never dropped for one.
//   - A status address is taken, replacing the Service's stored lease of
//     that family, when it is inside a pool and not a network or broadcast
//     address, of a family the Service is served for, equal to what the
//     Service requests for that family if it requests one, and either free
//     or held only by Services that may share it with this one (same
//     sharing key, no common port). Of two addresses of one family in a
//     status the first counts.
//   - Status addresses are taken in rounds until none more can be: one
//     taken may free the Service's older lease for another's status. In a
//     round, of Services whose statuses claim one address and may not
//     share, the lease holder keeps it, else the first by key takes it.
//   - A status address not taken leaves the Service's stored lease as it
//     is, and is reported naming the Service in the way.
//
// A taken address keeps the Seq of the lease it replaces, else the
// Service's oldest Seq, else a new Seq above every stored one (one per
// Service, in key order). The result depends on the sets given, not on
// their order; of two Services holding one address both are observed and
// may share it, or both leases were stored and one of them is unobserved.
func Reconcile(pools []Pool, leases []Lease, observed []Observed, complete map[string]bool) Reconciled {
	s := &state{pools: pools, owners: map[netip.Addr][]owner{}}
	var reports []Report
	report := func(k Key, a netip.Addr, other Key, format string, args ...any) {
		reports = append(reports, Report{Service: k, Address: a, Other: other, Reason: fmt.Sprintf(format, args...)})
	}

	sortedObs := slices.Clone(observed)
	slices.SortStableFunc(sortedObs, func(a, b Observed) int { return a.Key.Compare(b.Key) })
	seen := map[Key]parsed{}
	var obs []Observed
	for _, o := range sortedObs {
		if _, dup := seen[o.Key]; dup {
			continue
		}
		seen[o.Key] = parse(o.Service)
		obs = append(obs, o)
	}
	ownerOf := func(k Key) owner {
		p, ok := seen[k]
		if !ok {
			return owner{key: k, unseen: true}
		}
		return owner{key: k, sharingKey: p.svc.Annotations[AnnotationSharingKey], ports: p.svc.Ports}
	}

	// Stored leases, oldest first.
	held := map[Key]map[Family]*entry{}
	var nextSeq uint64 = 1
	stored := slices.Clone(leases)
	slices.SortFunc(stored, func(a, b Lease) int {
		return cmp.Or(cmp.Compare(a.Seq, b.Seq), a.Service.Compare(b.Service), a.Address.Compare(b.Address))
	})
	for _, l := range stored {
		nextSeq = max(nextSeq, l.Seq+1)
		k, a, f := l.Service, l.Address, familyOf(l.Address)
		p, ok := seen[k]
		prev := held[k][f]
		_, pfx, inPool := s.poolOf(a)
		switch {
		case prev != nil && prev.lease.Address == a:
			// The same lease twice: the older Seq counts.
		case !ok && complete[k.Cluster]:
			report(k, a, Key{}, "stored lease of %s by %s dropped: %s is not a LoadBalancer Service of cluster %s served by the appliance (deleted, or of another class)", a, k, k, k.Cluster)
		case !inPool:
			report(k, a, Key{}, "stored lease of %s by %s dropped: the address is outside every pool", a, k)
		case reserved(pfx, a):
			report(k, a, Key{}, "stored lease of %s by %s dropped: the address is the network or broadcast address of %s", a, k, pfx)
		case ok && p.err != "":
			report(k, a, Key{}, "stored lease of %s by %s dropped: the Service is refused: %s", a, k, p.err)
		case ok && !slices.Contains(p.families, f):
			report(k, a, Key{}, "stored lease of %s by %s dropped: the Service is served for %v only", a, k, p.families)
		case ok && p.requested[f].IsValid() && p.requested[f] != a:
			report(k, a, Key{}, "stored lease of %s by %s dropped: the Service requests %s (%s)", a, k, p.requested[f], p.source)
		case prev != nil:
			report(k, a, Key{}, "stored lease of %s by %s dropped: the Service holds an older %s lease, of %s", a, k, f, prev.lease.Address)
		default:
			o := ownerOf(k)
			var other Key
			var why string
			for _, h := range s.owners[a] {
				if !h.unseen && !o.unseen {
					if why = clash(a, h, o); why != "" {
						other = h.key
						break
					}
				}
			}
			if why != "" {
				report(k, a, other, "stored lease of %s by %s dropped: %s, whose lease is older", a, k, why)
				continue
			}
			s.owners[a] = append(s.owners[a], o)
			if held[k] == nil {
				held[k] = map[Family]*entry{}
			}
			held[k][f] = &entry{lease: l}
		}
	}

	// keeps says what a Service whose status address was not taken keeps
	// in that family.
	keeps := func(k Key, f Family) string {
		if e := held[k][f]; e != nil {
			return fmt.Sprintf("%s keeps its lease of %s", k, e.lease.Address)
		}
		return fmt.Sprintf("%s gets a %s address when it is served", k, f)
	}

	// Status addresses that differ from the leases.
	var pending []claim
	for _, ob := range obs {
		k, p := ob.Key, seen[ob.Key]
		first := map[Family]netip.Addr{}
		for _, a := range ob.Ingress {
			f := familyOf(a)
			if fa, dup := first[f]; dup {
				if fa != a {
					report(k, a, Key{}, "status address %s of %s not taken: the status also shows %s, and the first %s address counts", a, k, fa, f)
				}
				continue
			}
			first[f] = a
			if e := held[k][f]; e != nil && e.lease.Address == a {
				continue
			}
			_, pfx, inPool := s.poolOf(a)
			switch {
			case p.err != "":
				report(k, a, Key{}, "status address %s of %s not taken: the Service is refused: %s", a, k, p.err)
			case !inPool:
				report(k, a, Key{}, "status address %s of %s not taken: the address is outside every pool; %s", a, k, keeps(k, f))
			case reserved(pfx, a):
				report(k, a, Key{}, "status address %s of %s not taken: the address is the network or broadcast address of %s; %s", a, k, pfx, keeps(k, f))
			case !slices.Contains(p.families, f):
				report(k, a, Key{}, "status address %s of %s not taken: the Service is served for %v only", a, k, p.families)
			case p.requested[f].IsValid() && p.requested[f] != a:
				report(k, a, Key{}, "status address %s of %s not taken: the Service requests %s (%s); %s", a, k, p.requested[f], p.source, keeps(k, f))
			default:
				pending = append(pending, claim{o: ownerOf(k), a: a})
			}
		}
	}
	slices.SortFunc(pending, func(x, y claim) int { return cmp.Or(x.a.Compare(y.a), x.o.key.Compare(y.o.key)) })

	// Rounds: each judges every pending claim against the leases as the
	// round began and the claims it already took, then applies them.
	for {
		var taken []claim
		rest := pending[:0:0]
		for _, c := range pending {
			ok := s.conflict(c.a, c.o) == ""
			for _, t := range taken {
				if ok && t.a == c.a && clash(c.a, t.o, c.o) != "" {
					ok = false
				}
			}
			if ok {
				taken = append(taken, c)
			} else {
				rest = append(rest, c)
			}
		}
		if len(taken) == 0 {
			break
		}
		pending = rest
		for _, c := range taken {
			k, f := c.o.key, familyOf(c.a)
			if held[k] == nil {
				held[k] = map[Family]*entry{}
			}
			e := &entry{lease: Lease{Service: k, Address: c.a}, fresh: true}
			if old := held[k][f]; old != nil {
				s.release(old.lease.Address, k)
				e.lease.Seq, e.fresh = old.lease.Seq, old.fresh
				report(k, old.lease.Address, Key{}, "stored lease of %s by %s replaced by %s, the address its status shows", old.lease.Address, k, c.a)
			}
			s.owners[c.a] = append(s.owners[c.a], c.o)
			held[k][f] = e
		}
	}
	for _, c := range pending {
		other, why := s.blocker(c.a, c.o)
		report(c.o.key, c.a, other, "status address %s of %s not taken: %s; %s", c.a, c.o.key, why, keeps(c.o.key, familyOf(c.a)))
	}

	var res Reconciled
	keys := make([]Key, 0, len(held))
	for k := range held {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, Key.Compare)
	for _, k := range keys {
		var oldest uint64
		var has bool
		for _, e := range held[k] {
			if !e.fresh && (!has || e.lease.Seq < oldest) {
				oldest, has = e.lease.Seq, true
			}
		}
		if !has {
			oldest = nextSeq
			if len(held[k]) > 0 {
				nextSeq++
			}
		}
		for _, e := range held[k] {
			if e.fresh {
				e.lease.Seq = oldest
			}
			res.Leases = append(res.Leases, e.lease)
		}
	}
	slices.SortFunc(res.Leases, func(a, b Lease) int {
		return cmp.Or(a.Address.Compare(b.Address), a.Service.Compare(b.Service))
	})
	slices.SortFunc(reports, func(a, b Report) int {
		return cmp.Or(a.Service.Compare(b.Service), a.Address.Compare(b.Address), cmp.Compare(a.Reason, b.Reason))
	})
	res.Reports = reports
	return res
}
