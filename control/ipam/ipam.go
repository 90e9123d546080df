// Package ipam decides which addresses of the configured pools each
// Kubernetes Service of type LoadBalancer gets. It is pure: Allocate takes
// the pools, the current leases and the wanted Services and returns every
// Service's addresses (or the reason it gets none) and the new set of
// leases; persisting leases and writing Service status are the caller's.
// On start, Reconcile first merges the stored leases with the addresses
// the clusters' Service statuses show (see its rules).
//
// Rules, in the words an operator reads in a refusal:
//   - A Service may request addresses (annotation portico.dev/address,
//     comma-separated, one per family, else spec.loadBalancerIP). A
//     requested address may come from any pool; one outside every pool is
//     refused.
//   - Otherwise addresses are assigned from the auto-assign pools only, in
//     pool order, prefix order, lowest free address first, skipping the
//     network and broadcast addresses of IPv4 prefixes shorter than /31.
//   - One address has one owner, except that Services carrying the same
//     sharing key (annotation portico.dev/sharing-key) may share it when no
//     port (number and protocol) is used by two of them.
//   - A lease is kept while its Service still wants the address: no other
//     Service's request or auto-assignment takes it. Services
//     are processed one at a time, all their families at once, in a fixed
//     order (holders of a kept lease, oldest lease first; then Services
//     that request addresses; then the rest; ties by key), so the result
//     does not depend on the order of the input, and a refused Service
//     holds nothing and so changes nothing for the others.
package ipam

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"portico.dev/appliance/control/config"
)

// Annotations read from a Service.
const (
	// AnnotationAddress requests addresses: comma-separated, at most one
	// per family. It wins over spec.loadBalancerIP.
	AnnotationAddress = "portico.dev/address"
	// AnnotationSharingKey lets Services with the same value share an
	// address when their ports do not collide.
	AnnotationSharingKey = "portico.dev/sharing-key"
)

// Family is an IP family, spelt as in a Service's spec.ipFamilies.
type Family string

// The families.
const (
	IPv4 Family = "IPv4"
	IPv6 Family = "IPv6"
)

// FamilyPolicy is a Service's spec.ipFamilyPolicy.
type FamilyPolicy string

// The policies. The empty policy is taken as SingleStack, as the API
// server defaults it.
const (
	// SingleStack serves the first of the Service's families only.
	SingleStack FamilyPolicy = "SingleStack"
	// PreferDualStack serves every family it can; the Service is refused
	// only when it gets no address at all.
	PreferDualStack FamilyPolicy = "PreferDualStack"
	// RequireDualStack serves every family of the Service or none.
	RequireDualStack FamilyPolicy = "RequireDualStack"
)

// Key names a Service: its cluster (as in kubernetes.clusters[].name),
// namespace and name.
type Key struct {
	Cluster, Namespace, Name string
}

// String returns "cluster/namespace/name".
func (k Key) String() string { return k.Cluster + "/" + k.Namespace + "/" + k.Name }

// Compare orders keys by cluster, namespace, then name.
func (k Key) Compare(o Key) int {
	return cmp.Or(cmp.Compare(k.Cluster, o.Cluster), cmp.Compare(k.Namespace, o.Namespace), cmp.Compare(k.Name, o.Name))
}

// Port is one port of a Service, as the datapath sees it: number and
// protocol (TCP, UDP or SCTP).
type Port struct {
	Port     uint16
	Protocol string
}

func (p Port) String() string { return fmt.Sprintf("%d/%s", p.Port, p.Protocol) }

// Service is what the address manager needs of a wanted Service.
type Service struct {
	Key Key
	// Families is spec.ipFamilies, primary first. Empty: the families
	// of the requested addresses, or IPv4 when none is requested.
	Families []Family
	Policy   FamilyPolicy
	// LoadBalancerIP is spec.loadBalancerIP ("" when unset).
	LoadBalancerIP string
	// Annotations are the Service's annotations; only AnnotationAddress
	// and AnnotationSharingKey are read.
	Annotations map[string]string
	Ports       []Port
}

// Pool is a config pool with parsed prefixes.
type Pool struct {
	Name       string
	Prefixes   []netip.Prefix
	AutoAssign bool
}

// Lease is one address held by one Service. A shared address has one lease
// per Service.
type Lease struct {
	Service Key
	Address netip.Addr
	// Seq orders leases by age: a lower Seq is older. Allocate gives all
	// leases it creates for one Service the same Seq, above every Seq of
	// its input.
	Seq uint64
}

// Decision is the outcome for one Service.
type Decision struct {
	Service Key
	// Addresses are the Service's addresses, in the order of its
	// families; empty when the Service is refused.
	Addresses []netip.Addr
	// Reason says why the Service is refused, or, for a PreferDualStack
	// Service served in part, why a family is missing; "" otherwise.
	Reason string
}

// Refused reports whether the Service got no address.
func (d Decision) Refused() bool { return len(d.Addresses) == 0 }

// Result is the outcome of Allocate.
type Result struct {
	// Decisions has one entry per distinct Service key, sorted by key.
	Decisions []Decision
	// Leases is the new set of leases, sorted by address then key: the
	// kept ones and the new ones; leases of Services no longer wanted, or
	// of addresses they no longer want, are gone.
	Leases []Lease
}

// Decision returns the decision for k, and whether there is one.
func (r Result) Decision(k Key) (Decision, bool) {
	i, ok := slices.BinarySearchFunc(r.Decisions, k, func(d Decision, k Key) int { return d.Service.Compare(k) })
	if !ok {
		return Decision{}, false
	}
	return r.Decisions[i], true
}

// PoolsFromConfig parses the config's pools. The config has validated
// them, so an error here means a caller skipped validation.
func PoolsFromConfig(cfg []config.Pool) ([]Pool, error) {
	out := make([]Pool, 0, len(cfg))
	for i, c := range cfg {
		pl := Pool{Name: c.Name, AutoAssign: c.AutoAssign}
		for j, cidr := range c.CIDRs {
			pfx, err := netip.ParsePrefix(cidr)
			if err != nil {
				return nil, fmt.Errorf("ipam: pools[%d].cidrs[%d]: %w", i, j, err)
			}
			pl.Prefixes = append(pl.Prefixes, pfx.Masked())
		}
		out = append(out, pl)
	}
	return out, nil
}

// owner is one holder of an address during an allocation.
type owner struct {
	key        Key
	sharingKey string
	ports      []Port
	// unseen: a lease of a Service Reconcile did not find in its
	// cluster's view, whose annotations and ports are unknown.
	unseen bool
}

// state is the address book of one allocation.
type state struct {
	pools  []Pool
	owners map[netip.Addr][]owner
	// promised holds the kept leases of Services not served yet, so
	// that auto-assigning an earlier Service's other family does not take
	// them.
	promised map[netip.Addr][]owner
}

// poolOf returns the pool and prefix holding a, if any.
func (s *state) poolOf(a netip.Addr) (*Pool, netip.Prefix, bool) {
	for i := range s.pools {
		for _, p := range s.pools[i].Prefixes {
			if p.Contains(a) {
				return &s.pools[i], p, true
			}
		}
	}
	return nil, netip.Prefix{}, false
}

// reserved reports whether a is the network or broadcast address of an
// IPv4 prefix shorter than /31, which are never handed out.
func reserved(p netip.Prefix, a netip.Addr) bool {
	if !a.Is4() || p.Bits() >= 31 {
		return false
	}
	return a == p.Addr() || a == lastAddr(p)
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	for i := range b {
		hostBits := max(0, min(8, (i+1)*8-p.Bits()))
		b[i] |= byte(1<<hostBits - 1)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// conflict returns why o cannot take a, or "" when it can: a is free, or
// every holder shares o's non-empty sharing key and no port collides.
func (s *state) conflict(a netip.Addr, o owner) string {
	_, why := s.blocker(a, o)
	return why
}

// blocker returns the first holder of a that o may not share it with, and
// why; "" when there is none.
func (s *state) blocker(a netip.Addr, o owner) (Key, string) {
	for _, h := range s.owners[a] {
		if h.key == o.key {
			continue
		}
		if why := clash(a, h, o); why != "" {
			return h.key, why
		}
	}
	return Key{}, ""
}

// clash returns why o may not share a with its holder h, or "" when it
// may: both carry the same non-empty sharing key and no port is used by
// both. A holder whose Service is unseen shares with nobody, as its
// annotations and ports are unknown.
func clash(a netip.Addr, h, o owner) string {
	if h.unseen {
		return fmt.Sprintf("address %s is held by %s, which is not in its cluster's view, so whether the two may share it is unknown", a, h.key)
	}
	if o.sharingKey == "" || h.sharingKey != o.sharingKey {
		return fmt.Sprintf("address %s is held by %s, and the two do not carry the same %s annotation", a, h.key, AnnotationSharingKey)
	}
	for _, p := range o.ports {
		if slices.Contains(h.ports, p) {
			return fmt.Sprintf("port %s collides on shared address %s with port %s of %s", p, a, p, h.key)
		}
	}
	return ""
}

// autoAssign returns the address o gets in family f: the lowest address of
// the auto-assign pools that o may share, else the lowest free one.
func (s *state) autoAssign(f Family, o owner) (netip.Addr, string) {
	if o.sharingKey != "" {
		var best netip.Addr
		for a, hs := range s.owners {
			if familyOf(a) != f || len(hs) == 0 || s.conflict(a, o) != "" || s.promisedConflict(a, o) != "" {
				continue
			}
			if pl, _, ok := s.poolOf(a); !ok || !pl.AutoAssign {
				continue
			}
			if !best.IsValid() || a.Less(best) {
				best = a
			}
		}
		if best.IsValid() {
			return best, ""
		}
	}
	var names []string
	for _, pl := range s.pools {
		if !pl.AutoAssign {
			continue
		}
		for _, p := range pl.Prefixes {
			if familyOf(p.Addr()) != f {
				continue
			}
			names = append(names, pl.Name)
			// Every address taken is in s.owners or s.promised, so
			// the first free one is at most
			// len(s.owners)+len(s.promised)+2 steps away, however
			// large the prefix.
			for a := p.Addr(); a.IsValid() && p.Contains(a); a = a.Next() {
				if !reserved(p, a) && len(s.owners[a]) == 0 && len(s.promised[a]) == 0 {
					return a, ""
				}
			}
		}
	}
	if len(names) == 0 {
		return netip.Addr{}, fmt.Sprintf("no auto-assign pool has %s addresses", f)
	}
	return netip.Addr{}, fmt.Sprintf("no free %s address in any auto-assign pool (%s)", f, strings.Join(slices.Compact(names), ", "))
}

// promisedConflict returns why o may not take a that is promised to
// another Service, or "" when it may.
func (s *state) promisedConflict(a netip.Addr, o owner) string {
	for _, h := range s.promised[a] {
		if h.key == o.key {
			continue
		}
		if why := clash(a, h, o); why != "" {
			return why
		}
	}
	return ""
}

func familyOf(a netip.Addr) Family {
	if a.Is4() {
		return IPv4
	}
	return IPv6
}

// parsed is a Service with its requests read.
type parsed struct {
	svc       Service
	families  []Family
	requested map[Family]netip.Addr
	source    string // where the request came from, for reasons
	err       string // why the Service is refused before allocation
}

// parse reads a Service's families and requested addresses.
func parse(svc Service) parsed {
	p := parsed{svc: svc, requested: map[Family]netip.Addr{}}
	raw, ok := svc.Annotations[AnnotationAddress]
	switch {
	case ok:
		p.source = "annotation " + AnnotationAddress
		for part := range strings.SplitSeq(raw, ",") {
			part = strings.TrimSpace(part)
			a, err := netip.ParseAddr(part)
			if err != nil || a.Zone() != "" || a.Is4In6() {
				p.err = fmt.Sprintf("annotation %s: %q is not an IP address", AnnotationAddress, part)
				return p
			}
			if prev, dup := p.requested[familyOf(a)]; dup {
				p.err = fmt.Sprintf("annotation %s: %s and %s are both %s; give at most one address per family", AnnotationAddress, prev, a, familyOf(a))
				return p
			}
			p.requested[familyOf(a)] = a
		}
	case svc.LoadBalancerIP != "":
		p.source = "spec.loadBalancerIP"
		a, err := netip.ParseAddr(svc.LoadBalancerIP)
		if err != nil || a.Zone() != "" || a.Is4In6() {
			p.err = fmt.Sprintf("spec.loadBalancerIP: %q is not an IP address", svc.LoadBalancerIP)
			return p
		}
		p.requested[familyOf(a)] = a
	}
	p.families = slices.Clone(svc.Families)
	if len(p.families) == 0 {
		for _, f := range []Family{IPv4, IPv6} {
			if _, ok := p.requested[f]; ok {
				p.families = append(p.families, f)
			}
		}
		if len(p.families) == 0 {
			p.families = []Family{IPv4}
		}
	}
	for i, f := range p.families {
		if f != IPv4 && f != IPv6 {
			p.err = fmt.Sprintf("spec.ipFamilies: unknown family %q", f)
			return p
		}
		if slices.Contains(p.families[:i], f) {
			p.err = fmt.Sprintf("spec.ipFamilies: %s twice", f)
			return p
		}
	}
	switch svc.Policy {
	case "", SingleStack:
		p.families = p.families[:1]
	case PreferDualStack:
	case RequireDualStack:
		if len(p.families) < 2 {
			p.err = fmt.Sprintf("spec.ipFamilyPolicy RequireDualStack needs two spec.ipFamilies, not %v", p.families)
			return p
		}
	default:
		p.err = fmt.Sprintf("spec.ipFamilyPolicy: unknown policy %q", svc.Policy)
		return p
	}
	for f, a := range p.requested {
		if !slices.Contains(p.families, f) {
			p.err = fmt.Sprintf("%s: %s is %s, but the Service is served for %v only", p.source, a, f, p.families)
			return p
		}
	}
	return p
}

// Allocate decides every Service's addresses. Pools must not overlap (the
// config refuses that). services are the wanted ones, each key once (of a
// key given twice, the first in input order counts). The result depends on
// the sets given, not on their order, and never gives one address to two
// Services unless both carry the same sharing key and no port collides.
func Allocate(pools []Pool, leases []Lease, services []Service) Result {
	byKey := map[Key][]Lease{}
	var nextSeq uint64 = 1
	for _, l := range leases {
		byKey[l.Service] = append(byKey[l.Service], l)
		nextSeq = max(nextSeq, l.Seq+1)
	}
	// Of two leases of one family (a store that was edited, or restored
	// with the status found in a cluster), the older one counts; the
	// order of the input must not matter.
	for _, ls := range byKey {
		slices.SortFunc(ls, func(a, b Lease) int { return cmp.Or(cmp.Compare(a.Seq, b.Seq), a.Address.Compare(b.Address)) })
	}

	ps := make([]parsed, 0, len(services))
	seen := map[Key]bool{}
	sorted := slices.Clone(services)
	slices.SortStableFunc(sorted, func(a, b Service) int { return a.Key.Compare(b.Key) })
	for _, svc := range sorted {
		if seen[svc.Key] {
			continue
		}
		seen[svc.Key] = true
		ps = append(ps, parse(svc))
	}

	// A kept lease that is not kept after all (its Service refused, or
	// an older lease in the way) has blocked others' requests and
	// auto-assignment for nothing, and the next run would not see it:
	// run again without it, so that a run on its own leases changes
	// nothing. Only the last Service served whose kept lease broke loses
	// it: an earlier one may have been blocked by that very lease, while
	// the last one was blocked by nothing that broke. Each pass drops a
	// lease, so this ends; a pass more is rare (a cycle of requests for
	// each other's leased addresses).
	for {
		res, broken := allocateOnce(pools, byKey, ps, nextSeq)
		if len(broken) == 0 {
			return res
		}
		last := broken[len(broken)-1].Service
		for _, l := range broken {
			if l.Service == last {
				byKey[last] = slices.DeleteFunc(byKey[last], func(x Lease) bool { return x.Address == l.Address })
			}
		}
	}
}

// allocateOnce is one pass of Allocate: the result, and the kept leases
// that did not end up in it, in the order their Services were served.
func allocateOnce(pools []Pool, byKey map[Key][]Lease, ps []parsed, nextSeq uint64) (Result, []Lease) {
	s := &state{pools: pools, owners: map[netip.Addr][]owner{}}

	// kept returns the leases of p that it still wants: one per family
	// it is served for, equal to its request when it has one, inside a
	// pool, and not a reserved address.
	kept := func(p parsed) []Lease {
		var out []Lease
		for _, l := range byKey[p.svc.Key] {
			f := familyOf(l.Address)
			if !slices.Contains(p.families, f) || slices.ContainsFunc(out, func(o Lease) bool { return familyOf(o.Address) == f }) {
				continue
			}
			if r, ok := p.requested[f]; ok && r != l.Address {
				continue
			}
			if _, pfx, ok := s.poolOf(l.Address); !ok || reserved(pfx, l.Address) {
				continue
			}
			out = append(out, l)
		}
		return out
	}
	type item struct {
		p      parsed
		keep   []Lease
		oldest uint64
		class  int
	}
	items := make([]item, len(ps))
	for i, p := range ps {
		it := item{p: p, class: 2}
		if p.err == "" {
			it.keep = kept(p)
		}
		switch {
		case len(it.keep) > 0:
			it.class = 0
			it.oldest = slices.MinFunc(it.keep, func(a, b Lease) int { return cmp.Compare(a.Seq, b.Seq) }).Seq
		case len(p.requested) > 0:
			it.class = 1
		}
		items[i] = it
	}
	slices.SortStableFunc(items, func(a, b item) int {
		return cmp.Or(cmp.Compare(a.class, b.class), cmp.Compare(a.oldest, b.oldest), a.p.svc.Key.Compare(b.p.svc.Key))
	})

	// Kept leases are promised before any Service is served: without
	// that, an older holder auto-assigning its other family would take
	// the lowest free address even when a younger holder keeps it.
	s.promised = map[netip.Addr][]owner{}
	for _, it := range items {
		for _, l := range it.keep {
			s.promised[l.Address] = append(s.promised[l.Address], ownerOf(it.p))
		}
	}
	var res Result
	var broken []Lease
	for _, it := range items {
		for _, l := range it.keep {
			s.promised[l.Address] = slices.DeleteFunc(s.promised[l.Address], func(o owner) bool { return o.key == it.p.svc.Key })
			if len(s.promised[l.Address]) == 0 {
				delete(s.promised, l.Address)
			}
		}
		d, ls := s.serve(it.p, it.keep, nextSeq)
		if len(ls) > 0 && slices.ContainsFunc(ls, func(l Lease) bool { return l.Seq == nextSeq }) {
			nextSeq++
		}
		res.Decisions = append(res.Decisions, d)
		res.Leases = append(res.Leases, ls...)
		for _, l := range it.keep {
			if !slices.Contains(ls, l) {
				broken = append(broken, l)
			}
		}
	}
	slices.SortFunc(res.Decisions, func(a, b Decision) int { return a.Service.Compare(b.Service) })
	slices.SortFunc(res.Leases, func(a, b Lease) int {
		return cmp.Or(a.Address.Compare(b.Address), a.Service.Compare(b.Service))
	})
	return res, broken
}

// serve gives p its addresses, all families at once, or none: on refusal
// nothing it took is left in the address book.
func (s *state) serve(p parsed, keep []Lease, seq uint64) (Decision, []Lease) {
	d := Decision{Service: p.svc.Key}
	if p.err != "" {
		d.Reason = p.err
		return d, nil
	}
	o := ownerOf(p)
	var took []netip.Addr
	var leases []Lease
	var missing []string
	// Kept and requested families first: their refusal names the
	// address that is in the way, whatever the auto-assign pools hold,
	// so the reason stays the same from one run to the next.
	order := slices.Clone(p.families)
	slices.SortStableFunc(order, func(a, b Family) int {
		_, ra := p.requested[a]
		_, rb := p.requested[b]
		ka := ra || slices.ContainsFunc(keep, func(l Lease) bool { return familyOf(l.Address) == a })
		kb := rb || slices.ContainsFunc(keep, func(l Lease) bool { return familyOf(l.Address) == b })
		switch {
		case ka && !kb:
			return -1
		case kb && !ka:
			return 1
		}
		return 0
	})
	for _, f := range order {
		var a netip.Addr
		var why string
		if i := slices.IndexFunc(keep, func(l Lease) bool { return familyOf(l.Address) == f }); i >= 0 {
			a = keep[i].Address
			if why = s.conflict(a, o); why == "" {
				leases = append(leases, keep[i])
			} else if _, requested := p.requested[f]; !requested {
				// The kept address no longer fits (another
				// Service's lease is older, or the sharing key or
				// ports changed): take a new one.
				a, why = s.autoAssign(f, o)
				if why == "" {
					leases = append(leases, Lease{Service: o.key, Address: a, Seq: seq})
				}
			}
		} else if r, ok := p.requested[f]; ok {
			a = r
			if _, pfx, in := s.poolOf(r); !in {
				why = fmt.Sprintf("requested address %s (%s) is outside every pool", r, p.source)
			} else if reserved(pfx, r) {
				why = fmt.Sprintf("requested address %s (%s) is the network or broadcast address of %s", r, p.source, pfx)
			} else if why = s.conflict(r, o); why == "" {
				if why = s.promisedConflict(r, o); why == "" {
					leases = append(leases, Lease{Service: o.key, Address: r, Seq: seq})
				}
			}
		} else {
			a, why = s.autoAssign(f, o)
			if why == "" {
				leases = append(leases, Lease{Service: o.key, Address: a, Seq: seq})
			}
		}
		if why != "" {
			missing = append(missing, why)
			if p.svc.Policy == PreferDualStack {
				continue
			}
			for _, t := range took {
				s.release(t, o.key)
			}
			d.Reason = why
			return d, nil
		}
		s.owners[a] = append(s.owners[a], o)
		took = append(took, a)
	}
	if len(took) == 0 {
		d.Reason = strings.Join(missing, "; ")
		return d, nil
	}
	// Addresses in the order of the Service's families.
	slices.SortStableFunc(took, func(a, b netip.Addr) int {
		return cmp.Compare(slices.Index(p.families, familyOf(a)), slices.Index(p.families, familyOf(b)))
	})
	d.Addresses = took
	if len(missing) > 0 {
		d.Reason = "served in part: " + strings.Join(missing, "; ")
	}
	return d, leases
}

// ownerOf is p as a holder of addresses.
func ownerOf(p parsed) owner {
	return owner{key: p.svc.Key, sharingKey: p.svc.Annotations[AnnotationSharingKey], ports: p.svc.Ports}
}

func (s *state) release(a netip.Addr, k Key) {
	s.owners[a] = slices.DeleteFunc(s.owners[a], func(o owner) bool { return o.key == k })
	if len(s.owners[a]) == 0 {
		delete(s.owners, a)
	}
}
