package ipam

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"portico.dev/appliance/control/config"
)

var testPools = []Pool{
	{Name: "public", Prefixes: []netip.Prefix{netip.MustParsePrefix("203.0.113.0/30"), netip.MustParsePrefix("2001:db8::/126")}, AutoAssign: true},
	{Name: "reserved", Prefixes: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}},
}

// svc builds a Service named n in cluster c1, namespace ns; opts set the
// rest: "v6", "dual" (PreferDualStack v4,v6), "require" (RequireDualStack
// v4,v6), "ip=A" (loadBalancerIP), "ann=A,B" (address annotation),
// "v4" (IPv4 given), "key=K" (sharing key), "port=80/TCP".
func svc(n string, opts ...string) Service {
	s := Service{Key: Key{"c1", "ns", n}, Annotations: map[string]string{}}
	for _, o := range opts {
		k, v, _ := strings.Cut(o, "=")
		switch k {
		case "v4":
			s.Families = []Family{IPv4}
		case "v6":
			s.Families = []Family{IPv6}
		case "dual":
			s.Families, s.Policy = []Family{IPv4, IPv6}, PreferDualStack
		case "require":
			s.Families, s.Policy = []Family{IPv4, IPv6}, RequireDualStack
		case "ip":
			s.LoadBalancerIP = v
		case "ann":
			s.Annotations[AnnotationAddress] = v
		case "key":
			s.Annotations[AnnotationSharingKey] = v
		case "port":
			var p Port
			fmt.Sscanf(strings.Replace(v, "/", " ", 1), "%d %s", &p.Port, &p.Protocol)
			s.Ports = append(s.Ports, p)
		default:
			panic(o)
		}
	}
	return s
}

func lease(n, addr string, seq uint64) Lease {
	return Lease{Service: Key{"c1", "ns", n}, Address: netip.MustParseAddr(addr), Seq: seq}
}

// dump renders decisions one a line: "name: addrs" or "name: refused: why".
func dump(r Result) []string {
	var out []string
	for _, d := range r.Decisions {
		switch {
		case d.Refused():
			out = append(out, d.Service.Name+": refused: "+d.Reason)
		case d.Reason != "":
			out = append(out, fmt.Sprintf("%s: %v (%s)", d.Service.Name, d.Addresses, d.Reason))
		default:
			out = append(out, fmt.Sprintf("%s: %v", d.Service.Name, d.Addresses))
		}
	}
	return out
}

func TestAllocate(t *testing.T) {
	tests := []struct {
		name     string
		leases   []Lease
		services []Service
		want     []string
	}{
		{name: "auto-assign lowest, skipping the network address",
			services: []Service{svc("a"), svc("b")},
			want:     []string{"a: [203.0.113.1]", "b: [203.0.113.2]"}},
		{name: "pool exhausted: broadcast never handed out",
			services: []Service{svc("a"), svc("b"), svc("c")},
			want:     []string{"a: [203.0.113.1]", "b: [203.0.113.2]", "c: refused: no free IPv4 address in any auto-assign pool (public)"}},
		{name: "ipv6 takes every address",
			services: []Service{svc("a", "v6")},
			want:     []string{"a: [2001:db8::]"}},
		{name: "requested from a non-auto-assign pool",
			services: []Service{svc("a", "ip=198.51.100.7")},
			want:     []string{"a: [198.51.100.7]"}},
		{name: "annotation wins over loadBalancerIP",
			services: []Service{svc("a", "ip=198.51.100.7", "ann=198.51.100.8")},
			want:     []string{"a: [198.51.100.8]"}},
		{name: "requested outside every pool",
			services: []Service{svc("a", "ann=192.0.2.1")},
			want:     []string{"a: refused: requested address 192.0.2.1 (annotation portico.dev/address) is outside every pool"}},
		{name: "requested broadcast",
			services: []Service{svc("a", "ip=198.51.100.255")},
			want:     []string{"a: refused: requested address 198.51.100.255 (spec.loadBalancerIP) is the network or broadcast address of 198.51.100.0/24"}},
		{name: "unparsable annotation",
			services: []Service{svc("a", "ann=203.0.113.x"), svc("b")},
			want:     []string{`a: refused: annotation portico.dev/address: "203.0.113.x" is not an IP address`, "b: [203.0.113.1]"}},
		{name: "unparsable loadBalancerIP",
			services: []Service{svc("a", "ip=nope")},
			want:     []string{`a: refused: spec.loadBalancerIP: "nope" is not an IP address`}},
		{name: "two addresses of one family",
			services: []Service{svc("a", "dual", "ann=198.51.100.1,198.51.100.2")},
			want:     []string{"a: refused: annotation portico.dev/address: 198.51.100.1 and 198.51.100.2 are both IPv4; give at most one address per family"}},
		{name: "requested family not served",
			services: []Service{svc("a", "v4", "ann=2001:db8::1")},
			want:     []string{"a: refused: annotation portico.dev/address: 2001:db8::1 is IPv6, but the Service is served for [IPv4] only"}},
		{name: "requested address held, no sharing key",
			services: []Service{svc("a", "ann=198.51.100.1"), svc("b", "ann=198.51.100.1")},
			want:     []string{"a: [198.51.100.1]", "b: refused: address 198.51.100.1 is held by c1/ns/a, and the two do not carry the same portico.dev/sharing-key annotation"}},
		{name: "sharing with the same key, other ports",
			services: []Service{svc("a", "ann=198.51.100.1", "key=k", "port=80/TCP"), svc("b", "ann=198.51.100.1", "key=k", "port=53/UDP")},
			want:     []string{"a: [198.51.100.1]", "b: [198.51.100.1]"}},
		{name: "sharing: same number, other protocol",
			services: []Service{svc("a", "ann=198.51.100.1", "key=k", "port=53/TCP"), svc("b", "ann=198.51.100.1", "key=k", "port=53/UDP")},
			want:     []string{"a: [198.51.100.1]", "b: [198.51.100.1]"}},
		{name: "sharing: port collision names the other",
			services: []Service{svc("a", "ann=198.51.100.1", "key=k", "port=80/TCP"), svc("b", "ann=198.51.100.1", "key=k", "port=443/TCP", "port=80/TCP")},
			want:     []string{"a: [198.51.100.1]", "b: refused: port 80/TCP collides on shared address 198.51.100.1 with port 80/TCP of c1/ns/a"}},
		{name: "sharing: other key",
			services: []Service{svc("a", "ann=198.51.100.1", "key=k", "port=80/TCP"), svc("b", "ann=198.51.100.1", "key=j", "port=443/TCP")},
			want:     []string{"a: [198.51.100.1]", "b: refused: address 198.51.100.1 is held by c1/ns/a, and the two do not carry the same portico.dev/sharing-key annotation"}},
		{name: "auto-assign shares with the same key",
			services: []Service{svc("a", "key=k", "port=80/TCP"), svc("b", "key=k", "port=443/TCP"), svc("c", "key=k", "port=80/TCP")},
			want:     []string{"a: [203.0.113.1]", "b: [203.0.113.1]", "c: [203.0.113.2]"}},
		{name: "auto-assign does not share a non-auto-assign address",
			services: []Service{svc("a", "ann=198.51.100.1", "key=k", "port=80/TCP"), svc("b", "key=k", "port=443/TCP")},
			want:     []string{"a: [198.51.100.1]", "b: [203.0.113.1]"}},
		{name: "dual-stack",
			services: []Service{svc("a", "dual"), svc("b", "require", "ann=198.51.100.9,2001:db8::3")},
			want:     []string{"a: [203.0.113.1 2001:db8::]", "b: [198.51.100.9 2001:db8::3]"}},
		{name: "prefer dual-stack served in part",
			services: []Service{svc("a", "v6"), svc("b", "v6"), svc("c", "v6"), svc("d", "v6"), svc("e", "dual")},
			want: []string{"a: [2001:db8::]", "b: [2001:db8::1]", "c: [2001:db8::2]", "d: [2001:db8::3]",
				"e: [203.0.113.1] (served in part: no free IPv6 address in any auto-assign pool (public))"}},
		{name: "require dual-stack refused whole: its v4 stays free",
			services: []Service{svc("a", "v6"), svc("b", "v6"), svc("c", "v6"), svc("d", "v6"), svc("e", "require"), svc("f")},
			want: []string{"a: [2001:db8::]", "b: [2001:db8::1]", "c: [2001:db8::2]", "d: [2001:db8::3]",
				"e: refused: no free IPv6 address in any auto-assign pool (public)", "f: [203.0.113.1]"}},
		{name: "lease kept though a lower address is free",
			leases:   []Lease{lease("a", "203.0.113.2", 1)},
			services: []Service{svc("b"), svc("a")},
			want:     []string{"a: [203.0.113.2]", "b: [203.0.113.1]"}},
		{name: "older lease wins a conflict",
			leases:   []Lease{lease("b", "198.51.100.1", 1), lease("a", "198.51.100.1", 2)},
			services: []Service{svc("a", "ann=198.51.100.1"), svc("b", "ann=198.51.100.1")},
			want:     []string{"a: refused: address 198.51.100.1 is held by c1/ns/b, and the two do not carry the same portico.dev/sharing-key annotation", "b: [198.51.100.1]"}},
		{name: "auto-assigning an older holder's other family leaves a younger holder's lease",
			leases:   []Lease{lease("a", "203.0.113.1", 1), lease("b", "2001:db8::", 2)},
			services: []Service{svc("a", "dual"), svc("b", "v6")},
			want:     []string{"a: [203.0.113.1 2001:db8::1]", "b: [2001:db8::]"}},
		{name: "an older holder's request for its other family leaves a younger holder's lease",
			leases:   []Lease{lease("a", "203.0.113.1", 1), lease("b", "2001:db8::2", 2)},
			services: []Service{svc("a", "dual", "ann=2001:db8::2"), svc("b", "v6")},
			want: []string{"a: [203.0.113.1] (served in part: address 2001:db8::2 is held by c1/ns/b, and the two do not carry the same portico.dev/sharing-key annotation)",
				"b: [2001:db8::2]"}},
		{name: "lease of a Service no longer wanted is freed",
			leases:   []Lease{lease("gone", "203.0.113.1", 1)},
			services: []Service{svc("a")},
			want:     []string{"a: [203.0.113.1]"}},
		{name: "lease outside the pools is dropped",
			leases:   []Lease{lease("a", "192.0.2.1", 1)},
			services: []Service{svc("a")},
			want:     []string{"a: [203.0.113.1]"}},
		{name: "lease replaced by a new request",
			leases:   []Lease{lease("a", "203.0.113.1", 1)},
			services: []Service{svc("a", "ip=198.51.100.3"), svc("b")},
			want:     []string{"a: [198.51.100.3]", "b: [203.0.113.1]"}},
		{name: "requester before auto-assign whatever the keys",
			services: []Service{svc("a"), svc("z", "ann=203.0.113.1")},
			want:     []string{"a: [203.0.113.2]", "z: [203.0.113.1]"}},
		{name: "bad policy",
			services: []Service{{Key: Key{"c1", "ns", "a"}, Families: []Family{IPv4}, Policy: "Maybe"}},
			want:     []string{`a: refused: spec.ipFamilyPolicy: unknown policy "Maybe"`}},
		{name: "require dual-stack with one family",
			services: []Service{{Key: Key{"c1", "ns", "a"}, Families: []Family{IPv4}, Policy: RequireDualStack}},
			want:     []string{"a: refused: spec.ipFamilyPolicy RequireDualStack needs two spec.ipFamilies, not [IPv4]"}},
		{name: "families from the request",
			services: []Service{{Key: Key{"c1", "ns", "a"}, Policy: PreferDualStack, Annotations: map[string]string{AnnotationAddress: "2001:db8::2, 198.51.100.4"}}},
			want:     []string{"a: [198.51.100.4 2001:db8::2]"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := Allocate(testPools, tt.leases, tt.services)
			if got := dump(r); !slices.Equal(got, tt.want) {
				t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
			checkInvariants(t, r, tt.services)
			// Restart: the leases of this run give the same result.
			if again := Allocate(testPools, r.Leases, tt.services); !slices.Equal(dump(again), dump(r)) || !slices.Equal(again.Leases, r.Leases) {
				t.Errorf("re-run with its own leases:\n%s\nwant\n%s", strings.Join(dump(again), "\n"), strings.Join(dump(r), "\n"))
			}
		})
	}
}

// checkInvariants: no address has two owners without a shared key and
// distinct ports; leases and decisions agree.
func checkInvariants(t *testing.T, r Result, services []Service) {
	t.Helper()
	byKey := map[Key]Service{}
	for _, s := range services {
		byKey[s.Key] = s
	}
	owners := map[netip.Addr][]Key{}
	for _, d := range r.Decisions {
		for _, a := range d.Addresses {
			owners[a] = append(owners[a], d.Service)
		}
	}
	for a, ks := range owners {
		for i, k1 := range ks {
			for _, k2 := range ks[i+1:] {
				s1, s2 := byKey[k1], byKey[k2]
				key := s1.Annotations[AnnotationSharingKey]
				if key == "" || key != s2.Annotations[AnnotationSharingKey] {
					t.Errorf("%s has two owners without a common sharing key: %s, %s", a, k1, k2)
				}
				for _, p := range s1.Ports {
					if slices.Contains(s2.Ports, p) {
						t.Errorf("%s: %s and %s both use port %s", a, k1, k2, p)
					}
				}
			}
		}
	}
	var fromLeases, fromDecisions []string
	for _, l := range r.Leases {
		fromLeases = append(fromLeases, l.Service.String()+" "+l.Address.String())
	}
	for _, d := range r.Decisions {
		for _, a := range d.Addresses {
			fromDecisions = append(fromDecisions, d.Service.String()+" "+a.String())
		}
	}
	slices.Sort(fromLeases)
	slices.Sort(fromDecisions)
	if !slices.Equal(fromLeases, fromDecisions) {
		t.Errorf("leases %v do not match decisions %v", fromLeases, fromDecisions)
	}
}

// TestAllocateOrderIndependent shuffles random inputs: the same sets give
// the same result, no address gets two owners, and a second run on the
// result's leases changes nothing.
func TestAllocateOrderIndependent(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	pools := []Pool{
		{Name: "auto", Prefixes: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/29"), netip.MustParsePrefix("fd00::/125")}, AutoAssign: true},
		{Name: "manual", Prefixes: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/30")}},
	}
	addrs := []string{"10.0.0.1", "10.0.0.2", "10.0.0.7", "10.1.0.1", "10.1.0.2", "fd00::1", "fd00::5", "192.0.2.1", "10.0.0.0"}
	for round := range 300 {
		var services []Service
		for i := range 4 + rng.IntN(12) {
			opts := randomOpts(rng, addrs, 3)
			services = append(services, svc(fmt.Sprintf("s%02d", i), opts...))
		}
		var leases []Lease
		for i := range rng.IntN(8) {
			leases = append(leases, lease(fmt.Sprintf("s%02d", rng.IntN(20)), addrs[rng.IntN(len(addrs))], uint64(1+rng.IntN(4))))
			_ = i
		}
		first := Allocate(pools, leases, services)
		checkInvariants(t, first, services)
		for range 5 {
			s2, l2 := slices.Clone(services), slices.Clone(leases)
			rng.Shuffle(len(s2), func(i, j int) { s2[i], s2[j] = s2[j], s2[i] })
			rng.Shuffle(len(l2), func(i, j int) { l2[i], l2[j] = l2[j], l2[i] })
			got := Allocate(pools, l2, s2)
			if !slices.Equal(dump(got), dump(first)) || !slices.Equal(got.Leases, first.Leases) {
				t.Fatalf("round %d: shuffled input gave\n%s\nwant\n%s", round, strings.Join(dump(got), "\n"), strings.Join(dump(first), "\n"))
			}
		}
		again := Allocate(pools, first.Leases, services)
		if !slices.Equal(dump(again), dump(first)) {
			t.Fatalf("round %d: re-run with its leases gave\n%s\nwant\n%s", round, strings.Join(dump(again), "\n"), strings.Join(dump(first), "\n"))
		}
	}
}

func TestPoolsFromConfig(t *testing.T) {
	got, err := PoolsFromConfig([]config.Pool{{Name: "p", CIDRs: []string{"203.0.113.0/24", "2001:db8::/64"}, AutoAssign: true}})
	if err != nil {
		t.Fatal(err)
	}
	want := "[{p [203.0.113.0/24 2001:db8::/64] true}]"
	if fmt.Sprint(got) != want {
		t.Errorf("got %v, want %s", got, want)
	}
	if _, err := PoolsFromConfig([]config.Pool{{Name: "p", CIDRs: []string{"x"}}}); err == nil {
		t.Error("bad prefix accepted")
	}
}

// randomOpts returns random options for svc: a family policy, a requested
// address from addrs one time in annOneIn, a sharing key one time in two,
// and one port.
func randomOpts(rng *rand.Rand, addrs []string, annOneIn int) []string {
	var opts []string
	switch rng.IntN(4) {
	case 0:
		opts = append(opts, "v6")
	case 1:
		opts = append(opts, "dual")
	case 2:
		opts = append(opts, "require")
	}
	if rng.IntN(annOneIn) == 0 {
		opts = append(opts, "ann="+addrs[rng.IntN(len(addrs))])
	}
	if rng.IntN(2) == 0 {
		opts = append(opts, "key=k"+fmt.Sprint(rng.IntN(2)))
	}
	return append(opts, fmt.Sprintf("port=%d/TCP", 80+rng.IntN(3)))
}
