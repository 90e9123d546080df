package ipam

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// obs is the Service svc(n, opts...) whose status shows ingress.
func obs(ingress string, n string, opts ...string) Observed {
	o := Observed{Service: svc(n, opts...)}
	for a := range strings.SplitSeq(ingress, ",") {
		if a != "" {
			o.Ingress = append(o.Ingress, netip.MustParseAddr(a))
		}
	}
	return o
}

// dumpReconciled renders leases as "name address seq" and reports as
// "name address: reason" (other: the Service in the way).
func dumpReconciled(r Reconciled) (leases, reports []string) {
	for _, l := range r.Leases {
		leases = append(leases, fmt.Sprintf("%s %s %d", l.Service.Name, l.Address, l.Seq))
	}
	for _, rp := range r.Reports {
		s := fmt.Sprintf("%s %s: %s", rp.Service.Name, rp.Address, rp.Reason)
		if rp.Other != (Key{}) {
			s += " (other: " + rp.Other.Name + ")"
		}
		reports = append(reports, s)
	}
	return leases, reports
}

var c1Complete = map[string]bool{"c1": true}

func TestReconcile(t *testing.T) {
	tests := []struct {
		name        string
		leases      []Lease
		observed    []Observed
		complete    map[string]bool
		wantLeases  []string
		wantReports []string
	}{
		{name: "status agrees with the lease",
			leases:     []Lease{lease("a", "203.0.113.2", 4)},
			observed:   []Observed{obs("203.0.113.2", "a")},
			complete:   c1Complete,
			wantLeases: []string{"a 203.0.113.2 4"}},
		{name: "lost store: status addresses taken, new Seq one per Service in key order",
			leases:     []Lease{lease("a", "203.0.113.1", 7)},
			observed:   []Observed{obs("203.0.113.1", "a"), obs("2001:db8::3,198.51.100.5", "c", "dual"), obs("203.0.113.2", "b")},
			complete:   c1Complete,
			wantLeases: []string{"c 198.51.100.5 9", "a 203.0.113.1 7", "b 203.0.113.2 8", "c 2001:db8::3 9"}},
		{name: "free status address wins over the stored lease, which keeps its Seq",
			leases:      []Lease{lease("a", "203.0.113.1", 3)},
			observed:    []Observed{obs("203.0.113.2", "a")},
			complete:    c1Complete,
			wantLeases:  []string{"a 203.0.113.2 3"},
			wantReports: []string{"a 203.0.113.1: stored lease of 203.0.113.1 by c1/ns/a replaced by 203.0.113.2, the address its status shows"}},
		{name: "fresh family takes the Service's oldest Seq",
			leases:     []Lease{lease("a", "203.0.113.1", 3)},
			observed:   []Observed{obs("203.0.113.1,2001:db8::1", "a", "dual")},
			complete:   c1Complete,
			wantLeases: []string{"a 203.0.113.1 3", "a 2001:db8::1 3"}},
		{name: "status outside every pool: lease kept",
			leases:      []Lease{lease("a", "203.0.113.1", 1)},
			observed:    []Observed{obs("192.0.2.9", "a")},
			complete:    c1Complete,
			wantLeases:  []string{"a 203.0.113.1 1"},
			wantReports: []string{"a 192.0.2.9: status address 192.0.2.9 of c1/ns/a not taken: the address is outside every pool; c1/ns/a keeps its lease of 203.0.113.1"}},
		{name: "status on a broadcast address",
			observed:    []Observed{obs("203.0.113.3", "a")},
			complete:    c1Complete,
			wantReports: []string{"a 203.0.113.3: status address 203.0.113.3 of c1/ns/a not taken: the address is the network or broadcast address of 203.0.113.0/30; c1/ns/a gets a IPv4 address when it is served"}},
		{name: "status of a family the Service is not served for",
			observed:    []Observed{obs("2001:db8::1", "a", "v4")},
			complete:    c1Complete,
			wantReports: []string{"a 2001:db8::1: status address 2001:db8::1 of c1/ns/a not taken: the Service is served for [IPv4] only"}},
		{name: "status other than the request: the request wins",
			leases:      []Lease{lease("a", "198.51.100.7", 1)},
			observed:    []Observed{obs("198.51.100.8", "a", "ip=198.51.100.7")},
			complete:    c1Complete,
			wantLeases:  []string{"a 198.51.100.7 1"},
			wantReports: []string{"a 198.51.100.8: status address 198.51.100.8 of c1/ns/a not taken: the Service requests 198.51.100.7 (spec.loadBalancerIP); c1/ns/a keeps its lease of 198.51.100.7"}},
		{name: "status address leased to another: lease kept, both named",
			leases:      []Lease{lease("a", "203.0.113.1", 2), lease("b", "203.0.113.2", 1)},
			observed:    []Observed{obs("203.0.113.2", "a"), obs("203.0.113.2", "b")},
			complete:    c1Complete,
			wantLeases:  []string{"a 203.0.113.1 2", "b 203.0.113.2 1"},
			wantReports: []string{"a 203.0.113.2: status address 203.0.113.2 of c1/ns/a not taken: address 203.0.113.2 is held by c1/ns/b, and the two do not carry the same portico.dev/sharing-key annotation; c1/ns/a keeps its lease of 203.0.113.1 (other: b)"}},
		{name: "status address leased to another with the same sharing key: shared",
			leases:     []Lease{lease("b", "203.0.113.2", 1)},
			observed:   []Observed{obs("203.0.113.2", "a", "key=k", "port=80/TCP"), obs("203.0.113.2", "b", "key=k", "port=53/UDP")},
			complete:   c1Complete,
			wantLeases: []string{"a 203.0.113.2 2", "b 203.0.113.2 1"}},
		{name: "same sharing key but a port collides",
			leases:      []Lease{lease("b", "203.0.113.2", 1)},
			observed:    []Observed{obs("203.0.113.2", "a", "key=k", "port=80/TCP"), obs("203.0.113.2", "b", "key=k", "port=80/TCP")},
			complete:    c1Complete,
			wantLeases:  []string{"b 203.0.113.2 1"},
			wantReports: []string{"a 203.0.113.2: status address 203.0.113.2 of c1/ns/a not taken: port 80/TCP collides on shared address 203.0.113.2 with port 80/TCP of c1/ns/b; c1/ns/a gets a IPv4 address when it is served (other: b)"}},
		{name: "two statuses, no lease: the first by key wins",
			observed:    []Observed{obs("203.0.113.2", "b"), obs("203.0.113.2", "a")},
			complete:    c1Complete,
			wantLeases:  []string{"a 203.0.113.2 1"},
			wantReports: []string{"b 203.0.113.2: status address 203.0.113.2 of c1/ns/b not taken: address 203.0.113.2 is held by c1/ns/a, and the two do not carry the same portico.dev/sharing-key annotation; c1/ns/b gets a IPv4 address when it is served (other: a)"}},
		{name: "two statuses: the lease holder wins over the first by key",
			leases:      []Lease{lease("b", "203.0.113.2", 5)},
			observed:    []Observed{obs("203.0.113.2", "b"), obs("203.0.113.2", "a")},
			complete:    c1Complete,
			wantLeases:  []string{"b 203.0.113.2 5"},
			wantReports: []string{"a 203.0.113.2: status address 203.0.113.2 of c1/ns/a not taken: address 203.0.113.2 is held by c1/ns/b, and the two do not carry the same portico.dev/sharing-key annotation; c1/ns/a gets a IPv4 address when it is served (other: b)"}},
		{name: "a move frees an address for another status, in a later round",
			leases:      []Lease{lease("a", "203.0.113.1", 1), lease("b", "2001:db8::1", 2)},
			observed:    []Observed{obs("203.0.113.2", "a"), obs("203.0.113.1,2001:db8::1", "b", "dual")},
			complete:    c1Complete,
			wantLeases:  []string{"b 203.0.113.1 2", "a 203.0.113.2 1", "b 2001:db8::1 2"},
			wantReports: []string{"a 203.0.113.1: stored lease of 203.0.113.1 by c1/ns/a replaced by 203.0.113.2, the address its status shows"}},
		{name: "a swap is not untangled: both keep their leases",
			leases:     []Lease{lease("a", "203.0.113.1", 1), lease("b", "203.0.113.2", 2)},
			observed:   []Observed{obs("203.0.113.2", "a"), obs("203.0.113.1", "b")},
			complete:   c1Complete,
			wantLeases: []string{"a 203.0.113.1 1", "b 203.0.113.2 2"},
			wantReports: []string{
				"a 203.0.113.2: status address 203.0.113.2 of c1/ns/a not taken: address 203.0.113.2 is held by c1/ns/b, and the two do not carry the same portico.dev/sharing-key annotation; c1/ns/a keeps its lease of 203.0.113.1 (other: b)",
				"b 203.0.113.1: status address 203.0.113.1 of c1/ns/b not taken: address 203.0.113.1 is held by c1/ns/a, and the two do not carry the same portico.dev/sharing-key annotation; c1/ns/b keeps its lease of 203.0.113.2 (other: a)"}},
		{name: "lease of a deleted Service dropped when the view is complete, freeing its address",
			leases:      []Lease{lease("gone", "203.0.113.1", 1)},
			observed:    []Observed{obs("203.0.113.1", "a")},
			complete:    c1Complete,
			wantLeases:  []string{"a 203.0.113.1 2"},
			wantReports: []string{"gone 203.0.113.1: stored lease of 203.0.113.1 by c1/ns/gone dropped: c1/ns/gone is not a LoadBalancer Service of cluster c1 served by the appliance (deleted, or of another class)"}},
		{name: "lease of an unseen Service kept when the view is not complete, and not shared",
			leases:      []Lease{lease("unseen", "203.0.113.1", 1)},
			observed:    []Observed{obs("203.0.113.1", "a", "key=k")},
			complete:    map[string]bool{"other": true},
			wantLeases:  []string{"unseen 203.0.113.1 1"},
			wantReports: []string{"a 203.0.113.1: status address 203.0.113.1 of c1/ns/a not taken: address 203.0.113.1 is held by c1/ns/unseen, which is not in its cluster's view, so whether the two may share it is unknown; c1/ns/a gets a IPv4 address when it is served (other: unseen)"}},
		{name: "stored leases of unseen Services are not judged",
			leases:     []Lease{lease("x", "203.0.113.1", 1), lease("y", "203.0.113.1", 2), lease("a", "203.0.113.1", 3)},
			observed:   []Observed{obs("", "a")},
			wantLeases: []string{"a 203.0.113.1 3", "x 203.0.113.1 1", "y 203.0.113.1 2"}},
		{name: "stored conflict between seen Services: the older lease stays",
			leases:      []Lease{lease("a", "203.0.113.1", 2), lease("b", "203.0.113.1", 1)},
			observed:    []Observed{obs("", "a"), obs("", "b")},
			complete:    c1Complete,
			wantLeases:  []string{"b 203.0.113.1 1"},
			wantReports: []string{"a 203.0.113.1: stored lease of 203.0.113.1 by c1/ns/a dropped: address 203.0.113.1 is held by c1/ns/b, and the two do not carry the same portico.dev/sharing-key annotation, whose lease is older (other: b)"}},
		{name: "stored leases no longer wanted are dropped",
			leases: []Lease{lease("a", "192.0.2.1", 1), lease("b", "203.0.113.0", 1), lease("c", "2001:db8::1", 1),
				lease("d", "203.0.113.1", 1), lease("e", "203.0.113.2", 1), lease("e", "198.51.100.1", 2), lease("f", "198.51.100.2", 1)},
			observed: []Observed{obs("", "a"), obs("", "b"), obs("", "c", "v4"), obs("", "d", "ip=198.51.100.9"), obs("", "e"), obs("", "f", "ann=nope")},
			complete: c1Complete,
			wantReports: []string{
				"a 192.0.2.1: stored lease of 192.0.2.1 by c1/ns/a dropped: the address is outside every pool",
				"b 203.0.113.0: stored lease of 203.0.113.0 by c1/ns/b dropped: the address is the network or broadcast address of 203.0.113.0/30",
				"c 2001:db8::1: stored lease of 2001:db8::1 by c1/ns/c dropped: the Service is served for [IPv4] only",
				"d 203.0.113.1: stored lease of 203.0.113.1 by c1/ns/d dropped: the Service requests 198.51.100.9 (spec.loadBalancerIP)",
				"e 198.51.100.1: stored lease of 198.51.100.1 by c1/ns/e dropped: the Service holds an older IPv4 lease, of 203.0.113.2",
				`f 198.51.100.2: stored lease of 198.51.100.2 by c1/ns/f dropped: the Service is refused: annotation portico.dev/address: "nope" is not an IP address`},
			wantLeases: []string{"e 203.0.113.2 1"}},
		{name: "two addresses of one family in a status: the first counts",
			observed:    []Observed{obs("203.0.113.2,203.0.113.1,203.0.113.2", "a")},
			complete:    c1Complete,
			wantLeases:  []string{"a 203.0.113.2 1"},
			wantReports: []string{"a 203.0.113.1: status address 203.0.113.1 of c1/ns/a not taken: the status also shows 203.0.113.2, and the first IPv4 address counts"}},
		{name: "status of a refused Service",
			observed:    []Observed{obs("203.0.113.2", "a", "ann=203.0.113.x")},
			complete:    c1Complete,
			wantReports: []string{`a 203.0.113.2: status address 203.0.113.2 of c1/ns/a not taken: the Service is refused: annotation portico.dev/address: "203.0.113.x" is not an IP address`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := Reconcile(testPools, tt.leases, tt.observed, tt.complete)
			gotLeases, gotReports := dumpReconciled(r)
			if !slices.Equal(gotLeases, tt.wantLeases) {
				t.Errorf("leases\n%s\nwant\n%s", strings.Join(gotLeases, "\n"), strings.Join(tt.wantLeases, "\n"))
			}
			if !slices.Equal(gotReports, tt.wantReports) {
				t.Errorf("reports\n%s\nwant\n%s", strings.Join(gotReports, "\n"), strings.Join(tt.wantReports, "\n"))
			}
			checkReconciled(t, testPools, r, tt.leases, tt.observed)
		})
	}
}

// checkReconciled: a Service holds at most one lease per family; seen
// Services hold only addresses they are served for, inside a pool; and of
// two holders of one address, both are seen and may share it, or both
// leases were stored and one holder is unseen. Every lease is inside a
// pool and not a network or broadcast address.
func checkReconciled(t *testing.T, pools []Pool, r Reconciled, stored []Lease, observed []Observed) {
	t.Helper()
	seen := map[Key]parsed{}
	for _, o := range observed {
		if _, dup := seen[o.Key]; !dup {
			seen[o.Key] = parse(o.Service)
		}
	}
	ownerOf := func(k Key) owner {
		p, ok := seen[k]
		if !ok {
			return owner{key: k, unseen: true}
		}
		return owner{key: k, sharingKey: p.svc.Annotations[AnnotationSharingKey], ports: p.svc.Ports}
	}
	s := &state{pools: pools}
	families := map[Key][]Family{}
	holders := map[netip.Addr][]Key{}
	for _, l := range r.Leases {
		f := familyOf(l.Address)
		if slices.Contains(families[l.Service], f) {
			t.Errorf("%s holds two %s leases", l.Service, f)
		}
		families[l.Service] = append(families[l.Service], f)
		if p, ok := seen[l.Service]; ok && (p.err != "" || !slices.Contains(p.families, f)) {
			t.Errorf("%s holds %s, of a family it is not served for", l.Service, l.Address)
		}
		if _, pfx, ok := s.poolOf(l.Address); !ok || reserved(pfx, l.Address) {
			t.Errorf("%s holds %s, outside every pool or reserved", l.Service, l.Address)
		}
		holders[l.Address] = append(holders[l.Address], l.Service)
	}
	for a, ks := range holders {
		for i, k1 := range ks {
			for _, k2 := range ks[i+1:] {
				o1, o2 := ownerOf(k1), ownerOf(k2)
				if o1.unseen || o2.unseen {
					if !slices.ContainsFunc(stored, func(l Lease) bool { return l.Service == k1 && l.Address == a }) ||
						!slices.ContainsFunc(stored, func(l Lease) bool { return l.Service == k2 && l.Address == a }) {
						t.Errorf("%s: %s and %s hold it, one unseen, and not both from the store", a, k1, k2)
					}
					continue
				}
				if why := clash(a, o1, o2); why != "" {
					t.Errorf("%s has two owners: %s", a, why)
				}
			}
		}
	}
}

// TestReconcileOrderIndependent shuffles random stores and statuses: the
// same sets give the same leases and reports; no address gets two owners;
// a second Reconcile on the result changes nothing; and Allocate on the
// result keeps every address Reconcile left to a Service it serves, and
// is stable on its own leases.
func TestReconcileOrderIndependent(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	pools := []Pool{
		{Name: "auto", Prefixes: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/29"), netip.MustParsePrefix("fd00::/125")}, AutoAssign: true},
		{Name: "manual", Prefixes: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/30")}},
	}
	addrs := []string{"10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.7", "10.1.0.1", "10.1.0.2", "fd00::1", "fd00::2", "fd00::5", "192.0.2.1", "10.0.0.0"}
	for round := range 400 {
		var observed []Observed
		for i := range 3 + rng.IntN(10) {
			opts := randomOpts(rng, addrs, 4)
			var ingress []string
			for range rng.IntN(3) {
				ingress = append(ingress, addrs[rng.IntN(len(addrs))])
			}
			o := obs(strings.Join(ingress, ","), fmt.Sprintf("s%02d", i), opts...)
			if rng.IntN(3) == 0 {
				o.Key.Cluster = "c2"
			}
			observed = append(observed, o)
		}
		var leases []Lease
		for range rng.IntN(10) {
			l := lease(fmt.Sprintf("s%02d", rng.IntN(16)), addrs[rng.IntN(len(addrs))], uint64(1+rng.IntN(4)))
			if rng.IntN(3) == 0 {
				l.Service.Cluster = "c2"
			}
			leases = append(leases, l)
		}
		complete := map[string]bool{"c1": rng.IntN(2) == 0, "c2": rng.IntN(2) == 0}

		first := Reconcile(pools, leases, observed, complete)
		checkReconciled(t, pools, first, leases, observed)
		if t.Failed() {
			t.Fatalf("round %d: leases %v observed %v", round, leases, observed)
		}
		fl, fr := dumpReconciled(first)
		for range 5 {
			o2, l2 := slices.Clone(observed), slices.Clone(leases)
			rng.Shuffle(len(o2), func(i, j int) { o2[i], o2[j] = o2[j], o2[i] })
			rng.Shuffle(len(l2), func(i, j int) { l2[i], l2[j] = l2[j], l2[i] })
			gl, gr := dumpReconciled(Reconcile(pools, l2, o2, complete))
			if !slices.Equal(gl, fl) || !slices.Equal(gr, fr) {
				t.Fatalf("round %d: shuffled input gave\n%s\n%s\nwant\n%s\n%s", round,
					strings.Join(gl, "\n"), strings.Join(gr, "\n"), strings.Join(fl, "\n"), strings.Join(fr, "\n"))
			}
		}
		if again := Reconcile(pools, first.Leases, observed, complete); !slices.Equal(again.Leases, first.Leases) {
			al, _ := dumpReconciled(again)
			t.Fatalf("round %d: Reconcile on its own leases gave\n%s\nwant\n%s", round, strings.Join(al, "\n"), strings.Join(fl, "\n"))
		}

		services := make([]Service, len(observed))
		for i, o := range observed {
			services[i] = o.Service
		}
		alloc := Allocate(pools, first.Leases, services)
		checkInvariants(t, alloc, services)
		for _, l := range first.Leases {
			d, ok := alloc.Decision(l.Service)
			if ok && !d.Refused() && !slices.Contains(d.Addresses, l.Address) {
				t.Fatalf("round %d: Allocate moved %s off %s, which Reconcile left to it: %v\nreconciled:\n%s\nservices: %+v\nallocated:\n%s", round, l.Service, l.Address, d, strings.Join(fl, "\n"), services, strings.Join(dump(alloc), "\n"))
			}
		}
		again := Allocate(pools, alloc.Leases, services)
		if !slices.Equal(dump(again), dump(alloc)) || !slices.Equal(again.Leases, alloc.Leases) {
			t.Fatalf("round %d: Allocate after Reconcile is not stable:\n%s\nwant\n%s", round, strings.Join(dump(again), "\n"), strings.Join(dump(alloc), "\n"))
		}
	}
}
