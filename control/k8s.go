package control

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strconv"

	"portico.dev/appliance/control/ipam"
	"portico.dev/appliance/control/kube"
	"portico.dev/appliance/datapath/nft"
)

// Kubernetes is what compile reads of the clusters: their Services,
// endpoints and Nodes, and the addresses IPAM gave the Services.
//
// Compile takes the IPAM result rather than the pools and leases: the
// leases Allocate returns must reach the store before any Service status
// names an address, and only the daemon can order those writes. Compile
// stays pure either way; it reads the decisions as given.
type Kubernetes struct {
	// Clusters holds one Snapshot per cluster, each with a distinct
	// Cluster name. Compile takes a Snapshot as the whole truth: the
	// caller passes the last synced one (or the one restored from the
	// store), never one whose informers have not listed yet.
	Clusters []*kube.Snapshot
	// Addresses is ipam.Allocate's result over IPAMServices(Clusters).
	Addresses ipam.Result
}

// IPAMServices are the Services of the snapshots as ipam.Allocate takes
// them, sorted by key.
func IPAMServices(snaps []*kube.Snapshot) []ipam.Service {
	var out []ipam.Service
	for _, s := range snaps {
		for _, svc := range s.Services {
			is := ipam.Service{
				Key:            ipam.Key{Cluster: s.Cluster, Namespace: svc.Key.Namespace, Name: svc.Key.Name},
				Policy:         ipam.FamilyPolicy(svc.IPFamilyPolicy),
				LoadBalancerIP: svc.LoadBalancerIP,
				Annotations:    svc.Annotations,
			}
			for _, f := range svc.IPFamilies {
				is.Families = append(is.Families, ipam.Family(f))
			}
			for _, p := range svc.Ports {
				is.Ports = append(is.Ports, ipam.Port{Port: p.Port, Protocol: p.Protocol})
			}
			out = append(out, is)
		}
	}
	slices.SortFunc(out, func(a, b ipam.Service) int { return a.Key.Compare(b.Key) })
	return out
}

// The kubernetes.forward-to values.
const (
	forwardToPods      = "pods"
	forwardToNodePorts = "nodeports"
)

// k8sCompiler turns the Services of the clusters into VIPs.
type k8sCompiler struct {
	forwardTo string
	addresses ipam.Result
	// static are the configured VIPs by key and by name: they win every
	// collision.
	static      map[nft.Key]string
	staticNames map[string]bool
	// taken are the Kubernetes VIPs made so far, by key, to refuse a
	// second one on the same key.
	taken map[nft.Key]string
	cache *Cache
	vips  []VIP
	warns []Warning
}

// compileKubernetes makes one VIP per (address, port, protocol) of every
// Service that IPAM gave addresses, and warns, naming the Service, of each
// Service, address or port refused or skipped. static are the configured
// VIPs, which win any collision; cache, when not nil, keeps lookup tables
// from one compile to the next.
func compileKubernetes(forwardTo string, k Kubernetes, static []VIP, cache *Cache) ([]VIP, []Warning) {
	if len(k.Clusters) == 0 {
		return nil, nil
	}
	c := &k8sCompiler{
		forwardTo: cmp.Or(forwardTo, forwardToPods), addresses: k.Addresses, cache: cache,
		static: map[nft.Key]string{}, staticNames: map[string]bool{}, taken: map[nft.Key]string{},
	}
	for _, v := range static {
		c.static[v.Key] = v.Name
		c.staticNames[v.Name] = true
	}
	// Clusters and Services in a fixed order: which of two colliding
	// Kubernetes VIPs wins, and the order of the warnings, must not
	// depend on the order of the input.
	snaps := slices.Clone(k.Clusters)
	slices.SortStableFunc(snaps, func(a, b *kube.Snapshot) int { return cmp.Compare(a.Cluster, b.Cluster) })
	for _, s := range snaps {
		svcs := slices.Clone(s.Services)
		slices.SortStableFunc(svcs, func(a, b kube.Service) int {
			return cmp.Or(cmp.Compare(a.Key.Namespace, b.Key.Namespace), cmp.Compare(a.Key.Name, b.Key.Name))
		})
		for i := range svcs {
			c.service(s, &svcs[i])
		}
	}
	return c.vips, c.warns
}

func (c *k8sCompiler) warn(key ipam.Key, format string, args ...any) {
	c.warns = append(c.warns, Warning{Path: "k8s/" + key.String(), Message: fmt.Sprintf(format, args...), Service: key})
}

// service compiles one Service.
func (c *k8sCompiler) service(s *kube.Snapshot, svc *kube.Service) {
	key := ipam.Key{Cluster: s.Cluster, Namespace: svc.Key.Namespace, Name: svc.Key.Name}
	d, ok := c.addresses.Decision(key)
	switch {
	case !ok:
		c.warn(key, "no address: IPAM has not seen this Service yet")
		return
	case d.Refused():
		c.warn(key, "no address: %s", d.Reason)
		return
	case d.Reason != "":
		c.warn(key, "%s", d.Reason)
	}
	for _, addr := range d.Addresses {
		for _, p := range svc.Ports {
			c.port(s, svc, key, addr, p)
		}
	}
}

// port compiles the VIP of one address and port of a Service.
func (c *k8sCompiler) port(s *kube.Snapshot, svc *kube.Service, key ipam.Key, addr netip.Addr, p kube.Port) {
	portName := p.Name
	if portName == "" {
		portName = strconv.Itoa(int(p.Port))
	}
	fam := familyName(addr)
	what := fmt.Sprintf("port %s (%d/%s) on %s", portName, p.Port, p.Protocol, addr)
	v := VIP{
		Name:      fmt.Sprintf("k8s/%s/%s/%s", key, portName, fam),
		Key:       nft.Key{Addr: addr, Port: p.Port},
		Scheduler: nft.Hash,
	}
	switch p.Protocol {
	case "TCP", "":
		v.Key.Proto = nft.TCP
	case "UDP":
		v.Key.Proto = nft.UDP
	default:
		c.warn(key, "%s: protocol %s is not supported (only TCP and UDP); port not served", what, p.Protocol)
		return
	}
	if name, ok := c.static[v.Key]; ok {
		c.warn(key, "%s: %s is also the static VIP %q; the static VIP wins, port not served", what, v.Key, name)
		return
	}
	if other, ok := c.taken[v.Key]; ok {
		c.warn(key, "%s: %s is already the VIP %q; port not served", what, v.Key, other)
		return
	}
	if c.staticNames[v.Name] {
		c.warn(key, "%s: its VIP name %q is the name of a static VIP; port not served", what, v.Name)
		return
	}
	switch c.forwardTo {
	case forwardToNodePorts:
		if p.NodePort == 0 {
			c.warn(key, "%s: no nodePort allocated (spec.allocateLoadBalancerNodePorts: false?), and forward-to is nodeports; port not served", what)
			return
		}
		v.Backends = c.nodeBackends(s, svc, key, what, addr, p.NodePort)
	default:
		v.Backends = c.podBackends(svc, key, what, addr, p)
	}
	v, err := c.cache.k8sVIP(v)
	if err != nil {
		c.warn(key, "%s: lookup table: %v", what, err)
	}
	if len(v.Slots) == 0 {
		why := "no ready endpoint"
		if c.forwardTo == forwardToNodePorts {
			why = "no ready endpoint, or no Ready node to reach one"
		}
		c.warn(key, "%s: no backend is up (%s): new connections to %s are refused and the address is not announced for it", what, why, v.Key)
	}
	c.taken[v.Key] = v.Name
	c.vips = append(c.vips, v)
}

// familyName is the family of a, as in VIP names.
func familyName(a netip.Addr) string {
	if a.Is4() {
		return "ipv4"
	}
	return "ipv6"
}

// addrOf returns the first of addrs in the family of like: Kubernetes
// uses an endpoint's first address, and a slice holds one family.
func addrOf(addrs []netip.Addr, like netip.Addr) (netip.Addr, bool) {
	for _, a := range addrs {
		if a.Is4() == like.Is4() {
			return a, true
		}
	}
	return netip.Addr{}, false
}

// podBackends are the endpoints of the VIP's family at the Service port's
// target port, found in their EndpointSlice's ports by the Service port's
// name (an unnamed port matches the slice's unnamed port). A ready
// endpoint is up. One that is not (terminating, or failing its readiness
// probe) stays a backend but down: it gets no new flow, while conntrack
// keeps its established flows whether it is down or gone, and down keeps
// its counters and leaves the Maglev table's size alone.
func (c *k8sCompiler) podBackends(svc *kube.Service, key ipam.Key, what string, vip netip.Addr, p kube.Port) []Backend {
	up := map[netip.AddrPort]bool{}
	noPort := 0
	for _, e := range svc.Endpoints {
		a, ok := addrOf(e.Addresses, vip)
		if !ok {
			continue
		}
		ep, ok := e.Ports[p.Name]
		if !ok || ep.Port == 0 || ep.Protocol != "" && p.Protocol != "" && ep.Protocol != p.Protocol {
			noPort++
			continue
		}
		// An endpoint in two slices (while the controller moves it) is
		// one backend, up if either copy is ready.
		b := netip.AddrPortFrom(a, ep.Port)
		up[b] = up[b] || e.Ready && !e.Terminating
	}
	if noPort > 0 {
		c.warn(key, "%s: %d endpoints of this family have no %s port named %q in their EndpointSlice; they get no traffic on this port",
			what, noPort, cmp.Or(p.Protocol, "TCP"), p.Name)
	}
	out := make([]Backend, 0, len(up))
	for b, u := range up {
		out = append(out, Backend{Addr: b, Weight: 1, Up: u})
	}
	slices.SortFunc(out, func(a, b Backend) int { return a.Addr.Compare(b.Addr) })
	return out
}

// nodeBackends are the nodes' InternalIPs of the VIP's family at the
// nodePort. With externalTrafficPolicy Cluster every node is a backend of
// weight 1, up when Ready and the Service has a ready endpoint of the
// family anywhere (else kube-proxy would refuse the flow). With Local only the nodes hosting endpoints of
// the Service are, weighted by their ready endpoints, and up when Ready
// with at least one: kube-proxy on a node without a ready endpoint drops
// the traffic. A node whose endpoints all terminate stays a down backend,
// as a terminating pod does.
func (c *k8sCompiler) nodeBackends(s *kube.Snapshot, svc *kube.Service, key ipam.Key, what string, vip netip.Addr, nodePort uint16) []Backend {
	local := svc.ExternalTrafficPolicy == "Local"
	// Each endpoint of the family once, as in podBackends: ready if
	// either copy is.
	type state struct {
		node  string
		ready bool
	}
	eps := map[netip.Addr]state{}
	for _, e := range svc.Endpoints {
		a, ok := addrOf(e.Addresses, vip)
		if !ok {
			continue
		}
		r := e.Ready && !e.Terminating
		if old, seen := eps[a]; !seen || r && !old.ready {
			eps[a] = state{e.NodeName, r}
		}
	}
	ready := map[string]int{}
	hosts := map[string]bool{}
	total := 0
	for _, st := range eps {
		hosts[st.node] = true
		if st.ready {
			ready[st.node]++
			total++
		}
	}
	var out []Backend
	known := map[string]bool{}
	for _, n := range s.Nodes {
		ips := n.IPv4
		if vip.Is6() {
			ips = n.IPv6
		}
		if len(ips) == 0 {
			continue
		}
		known[n.Name] = true
		b := Backend{Addr: netip.AddrPortFrom(ips[0], nodePort), Weight: 1, Up: n.Ready && total > 0}
		if local {
			if !hosts[n.Name] {
				continue
			}
			b.Weight = max(1, ready[n.Name])
			b.Up = n.Ready && ready[n.Name] > 0
		}
		out = append(out, b)
	}
	if local {
		lost := 0
		for name, r := range ready {
			if !known[name] {
				lost += r
			}
		}
		if lost > 0 {
			c.warn(key, "%s: externalTrafficPolicy Local: %d ready endpoints are on no known node with a %s InternalIP (or name none); they get no traffic",
				what, lost, familyName(vip))
		}
	}
	slices.SortFunc(out, func(a, b Backend) int {
		return cmp.Or(a.Addr.Compare(b.Addr), cmp.Compare(b.Weight, a.Weight), boolCompare(b.Up, a.Up))
	})
	// Two nodes with one InternalIP (a misconfigured cluster) would make
	// one backend twice: keep the one of most weight, up first.
	return slices.CompactFunc(out, func(a, b Backend) bool { return a.Addr == b.Addr })
}

func boolCompare(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	}
	return -1
}
