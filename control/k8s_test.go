package control_test

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	"portico.dev/appliance/control"
	"portico.dev/appliance/control/ipam"
	"portico.dev/appliance/control/kube"
	"portico.dev/appliance/control/maglev"
)

// k8sPools are the pools of the Kubernetes tests.
var k8sPools = []ipam.Pool{{
	Name:       "public",
	Prefixes:   []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24"), netip.MustParsePrefix("2001:db8::/64")},
	AutoAssign: true,
}}

// endpoint makes an endpoint: state is ready, terminating or notready;
// ports are "name=port" ("=port" for the unnamed one, "name=port/UDP").
func endpoint(slice, addr, node, state string, ports ...string) kube.Endpoint {
	e := kube.Endpoint{
		Slice: slice, Addresses: []netip.Addr{netip.MustParseAddr(addr)}, NodeName: node,
		Ready: state == "ready", Serving: state != "notready", Terminating: state == "terminating",
		Ports: map[string]kube.EndpointPort{},
	}
	for _, p := range ports {
		name, num, _ := strings.Cut(p, "=")
		proto := "TCP"
		if n, pr, ok := strings.Cut(num, "/"); ok {
			num, proto = n, pr
		}
		var port uint16
		fmt.Sscan(num, &port)
		e.Ports[name] = kube.EndpointPort{Port: port, Protocol: proto}
	}
	return e
}

// service makes a Service of namespace ns asking for addr (comma-separated
// for dual-stack, "" for auto-assign), with the given ports.
func service(name, addr, etp string, ports []kube.Port, eps ...kube.Endpoint) kube.Service {
	s := kube.Service{
		Key: kube.ServiceKey{Namespace: "ns", Name: name}, Ports: ports, Endpoints: eps,
		ExternalTrafficPolicy: etp, IPFamilies: []string{"IPv4"}, IPFamilyPolicy: "SingleStack",
	}
	if addr != "" {
		s.Annotations = map[string]string{ipam.AnnotationAddress: addr}
		if strings.Contains(addr, ",") {
			s.IPFamilies, s.IPFamilyPolicy = []string{"IPv4", "IPv6"}, "RequireDualStack"
		} else if netip.MustParseAddr(addr).Is6() {
			s.IPFamilies = []string{"IPv6"}
		}
	}
	return s
}

func node(name string, ready bool, addrs ...string) kube.Node {
	n := kube.Node{Name: name, Ready: ready}
	for _, a := range addrs {
		if ip := netip.MustParseAddr(a); ip.Is4() {
			n.IPv4 = append(n.IPv4, ip)
		} else {
			n.IPv6 = append(n.IPv6, ip)
		}
	}
	return n
}

func tcp(name string, port, nodePort uint16) kube.Port {
	return kube.Port{Name: name, Port: port, Protocol: "TCP", NodePort: nodePort}
}

// compileK8s compiles the static configuration yaml with forward-to and
// the snapshots, their addresses allocated by the real IPAM.
func compileK8s(t *testing.T, yaml, forwardTo string, snaps ...*kube.Snapshot) (control.Desired, []control.Warning) {
	t.Helper()
	c := parse(t, yaml)
	c.Kubernetes.ForwardTo = forwardTo
	res := ipam.Allocate(k8sPools, nil, control.IPAMServices(snaps))
	return control.Compile(control.Inputs{Config: c, Kubernetes: control.Kubernetes{Clusters: snaps, Addresses: res}})
}

// dumpVIPs renders each VIP as "name key: backend weight up|down, ...".
func dumpVIPs(vips []control.VIP) []string {
	var out []string
	for _, v := range vips {
		var bs []string
		for _, b := range v.Backends {
			state := "up"
			if !b.Up {
				state = "down"
			}
			bs = append(bs, fmt.Sprintf("%s w%d %s", b.Addr, b.Weight, state))
		}
		out = append(out, fmt.Sprintf("%s %s: %s", v.Name, v.Key, strings.Join(bs, ", ")))
	}
	return out
}

// checkTable checks a hash VIP's lookup table: sized from the weight of
// every backend, up or down, it holds only the backends that are up, each
// in proportion to its weight (⌊size·w/W⌋ or ⌈size·w/W⌉ slots, W the
// weight of those up).
func checkTable(t *testing.T, v control.VIP) {
	t.Helper()
	total, upTotal := 0, 0
	for _, b := range v.Backends {
		total += b.Weight
		if b.Up {
			upTotal += b.Weight
		}
	}
	if upTotal == 0 {
		if len(v.Slots) != 0 {
			t.Errorf("%s: no backend up but %d slots", v.Name, len(v.Slots))
		}
		return
	}
	size := maglev.Size(total)
	if len(v.Slots) != size {
		t.Errorf("%s: %d slots, want %d (Size of total weight %d)", v.Name, len(v.Slots), size, total)
	}
	n := count(v.Slots)
	for _, b := range v.Backends {
		if !b.Up {
			if n[b.Addr] != 0 {
				t.Errorf("%s: down backend %s has %d slots", v.Name, b.Addr, n[b.Addr])
			}
			continue
		}
		lo := size * b.Weight / upTotal
		if got := n[b.Addr]; got < lo || got > lo+1 {
			t.Errorf("%s: backend %s weight %d has %d slots of %d, want %d or %d", v.Name, b.Addr, b.Weight, got, size, lo, lo+1)
		}
	}
}

func TestCompileKubernetes(t *testing.T) {
	web := []kube.Port{tcp("http", 80, 30080), tcp("metrics", 9100, 30091)}
	allNodes := []kube.Node{
		node("n1", true, "10.0.0.1", "fd00::1"), node("n2", true, "10.0.0.2", "fd00::2"),
		node("n3", true, "10.0.0.3"), node("n4", false, "10.0.0.4"),
	}
	tests := []struct {
		name      string
		static    string // vips: of the configuration
		forwardTo string
		services  []kube.Service
		nodes     []kube.Node
		want      []string // dumpVIPs
		warns     []string
	}{
		{
			name: "pods: each named port resolves to its own target port",
			services: []kube.Service{service("web", "203.0.113.5", "Cluster", web,
				endpoint("s1", "10.1.0.1", "n1", "ready", "http=8080", "metrics=9090"),
				endpoint("s1", "10.1.0.2", "n2", "ready", "http=8080", "metrics=9090"))},
			want: []string{
				"k8s/c1/ns/web/http/ipv4 203.0.113.5:80/tcp: 10.1.0.1:8080 w1 up, 10.1.0.2:8080 w1 up",
				"k8s/c1/ns/web/metrics/ipv4 203.0.113.5:9100/tcp: 10.1.0.1:9090 w1 up, 10.1.0.2:9090 w1 up",
			},
		},
		{
			name: "pods: an unnamed single port matches the slice's unnamed port",
			services: []kube.Service{service("one", "203.0.113.6", "Cluster", []kube.Port{tcp("", 443, 0)},
				endpoint("s1", "10.1.0.1", "n1", "ready", "=8443"))},
			want: []string{"k8s/c1/ns/one/443/ipv4 203.0.113.6:443/tcp: 10.1.0.1:8443 w1 up"},
		},
		{
			name: "pods: UDP port, protocol must match the slice's",
			services: []kube.Service{service("dns", "203.0.113.7", "Cluster", []kube.Port{{Name: "dns", Port: 53, Protocol: "UDP"}},
				endpoint("s1", "10.1.0.1", "n1", "ready", "dns=5353/UDP"),
				endpoint("s2", "10.1.0.2", "n1", "ready", "dns=5353/TCP"))},
			want:  []string{"k8s/c1/ns/dns/dns/ipv4 203.0.113.7:53/udp: 10.1.0.1:5353 w1 up"},
			warns: []string{`k8s/c1/ns/dns: port dns (53/UDP) on 203.0.113.7: 1 endpoints of this family have no UDP port named "dns" in their EndpointSlice; they get no traffic on this port`},
		},
		{
			name: "pods: terminating and not-ready endpoints stay as down backends",
			services: []kube.Service{service("web", "203.0.113.5", "Cluster", web[:1],
				endpoint("s1", "10.1.0.1", "n1", "ready", "http=8080"),
				endpoint("s1", "10.1.0.2", "n1", "terminating", "http=8080"),
				endpoint("s1", "10.1.0.3", "n2", "notready", "http=8080"))},
			want: []string{"k8s/c1/ns/web/http/ipv4 203.0.113.5:80/tcp: 10.1.0.1:8080 w1 up, 10.1.0.2:8080 w1 down, 10.1.0.3:8080 w1 down"},
		},
		{
			name: "pods: an endpoint in two slices is one backend, up if either copy is ready",
			services: []kube.Service{service("web", "203.0.113.5", "Cluster", web[:1],
				endpoint("old", "10.1.0.1", "n1", "notready", "http=8080"),
				endpoint("new", "10.1.0.1", "n1", "ready", "http=8080"))},
			want: []string{"k8s/c1/ns/web/http/ipv4 203.0.113.5:80/tcp: 10.1.0.1:8080 w1 up"},
		},
		{
			name: "pods: an endpoint without the named port gets no traffic on it",
			services: []kube.Service{service("web", "203.0.113.5", "Cluster", web,
				endpoint("s1", "10.1.0.1", "n1", "ready", "http=8080", "metrics=9090"),
				endpoint("s2", "10.1.0.2", "n1", "ready", "http=8080"))},
			want: []string{
				"k8s/c1/ns/web/http/ipv4 203.0.113.5:80/tcp: 10.1.0.1:8080 w1 up, 10.1.0.2:8080 w1 up",
				"k8s/c1/ns/web/metrics/ipv4 203.0.113.5:9100/tcp: 10.1.0.1:9090 w1 up",
			},
			warns: []string{`k8s/c1/ns/web: port metrics (9100/TCP) on 203.0.113.5: 1 endpoints of this family have no TCP port named "metrics" in their EndpointSlice; they get no traffic on this port`},
		},
		{
			name: "pods: no ready endpoint: a VIP with no backend up, and a warning",
			services: []kube.Service{service("web", "203.0.113.5", "Cluster", web[:1],
				endpoint("s1", "10.1.0.2", "n1", "terminating", "http=8080"))},
			want:  []string{"k8s/c1/ns/web/http/ipv4 203.0.113.5:80/tcp: 10.1.0.2:8080 w1 down"},
			warns: []string{"k8s/c1/ns/web: port http (80/TCP) on 203.0.113.5: no backend is up (no ready endpoint): new connections to 203.0.113.5:80/tcp are refused and the address is not announced for it"},
		},
		{
			name:     "pods: no endpoint at all",
			services: []kube.Service{service("web", "203.0.113.5", "Cluster", web[:1])},
			want:     []string{"k8s/c1/ns/web/http/ipv4 203.0.113.5:80/tcp: "},
			warns:    []string{"k8s/c1/ns/web: port http (80/TCP) on 203.0.113.5: no backend is up (no ready endpoint): new connections to 203.0.113.5:80/tcp are refused and the address is not announced for it"},
		},
		{
			name: "pods: dual-stack: each family's VIP gets that family's endpoints",
			services: []kube.Service{service("web", "203.0.113.5,2001:db8::5", "Cluster", web[:1],
				endpoint("v4", "10.1.0.1", "n1", "ready", "http=8080"),
				endpoint("v6", "fd01::1", "n1", "ready", "http=8080"),
				endpoint("v6", "fd01::2", "n2", "terminating", "http=8080"))},
			want: []string{
				"k8s/c1/ns/web/http/ipv4 203.0.113.5:80/tcp: 10.1.0.1:8080 w1 up",
				"k8s/c1/ns/web/http/ipv6 [2001:db8::5]:80/tcp: [fd01::1]:8080 w1 up, [fd01::2]:8080 w1 down",
			},
		},
		{
			name:      "nodeports: Cluster: every node of the family at the nodePort, Ready ones up",
			forwardTo: "nodeports",
			services: []kube.Service{service("web", "203.0.113.5", "Cluster", web[:1],
				endpoint("s1", "10.1.0.1", "n1", "ready", "http=8080"))},
			nodes: allNodes,
			want:  []string{"k8s/c1/ns/web/http/ipv4 203.0.113.5:80/tcp: 10.0.0.1:30080 w1 up, 10.0.0.2:30080 w1 up, 10.0.0.3:30080 w1 up, 10.0.0.4:30080 w1 down"},
		},
		{
			name:      "nodeports: Local: nodes with endpoints, weighted by their ready ones",
			forwardTo: "nodeports",
			services: []kube.Service{service("web", "203.0.113.5", "Local", web[:1],
				endpoint("s1", "10.1.0.1", "n1", "ready", "http=8080"),
				endpoint("s1", "10.1.0.2", "n1", "ready", "http=8080"),
				endpoint("s1", "10.1.0.3", "n1", "ready", "http=8080"),
				endpoint("s1", "10.1.0.4", "n2", "ready", "http=8080"),
				endpoint("s1", "10.1.0.5", "n2", "terminating", "http=8080"),
				endpoint("s2", "10.1.0.6", "n3", "terminating", "http=8080"),
				endpoint("s2", "10.1.0.7", "n4", "ready", "http=8080"))},
			nodes: allNodes,
			// n3 only drains: down; n4 is not Ready: down; no endpoint of
			// the Service on any other node.
			want: []string{"k8s/c1/ns/web/http/ipv4 203.0.113.5:80/tcp: 10.0.0.1:30080 w3 up, 10.0.0.2:30080 w1 up, 10.0.0.3:30080 w1 down, 10.0.0.4:30080 w1 down"},
		},
		{
			name:      "nodeports: Local: ready endpoints on an unknown node warn",
			forwardTo: "nodeports",
			services: []kube.Service{service("web", "203.0.113.5", "Local", web[:1],
				endpoint("s1", "10.1.0.1", "n1", "ready", "http=8080"),
				endpoint("s1", "10.1.0.2", "gone", "ready", "http=8080"),
				endpoint("s1", "10.1.0.3", "", "ready", "http=8080"))},
			nodes: allNodes,
			want:  []string{"k8s/c1/ns/web/http/ipv4 203.0.113.5:80/tcp: 10.0.0.1:30080 w1 up"},
			warns: []string{"k8s/c1/ns/web: port http (80/TCP) on 203.0.113.5: externalTrafficPolicy Local: 2 ready endpoints are on no known node with a ipv4 InternalIP (or name none); they get no traffic"},
		},
		{
			name:      "nodeports: dual-stack: each family's VIP gets the nodes' InternalIPs of that family",
			forwardTo: "nodeports",
			services: []kube.Service{service("web", "203.0.113.5,2001:db8::5", "Cluster", web[:1],
				endpoint("v4", "10.1.0.1", "n3", "ready", "http=8080"), endpoint("v6", "fd01::1", "n3", "ready", "http=8080"))},
			nodes: allNodes,
			want: []string{
				"k8s/c1/ns/web/http/ipv4 203.0.113.5:80/tcp: 10.0.0.1:30080 w1 up, 10.0.0.2:30080 w1 up, 10.0.0.3:30080 w1 up, 10.0.0.4:30080 w1 down",
				"k8s/c1/ns/web/http/ipv6 [2001:db8::5]:80/tcp: [fd00::1]:30080 w1 up, [fd00::2]:30080 w1 up",
			},
		},
		{
			name:      "nodeports: no ready endpoint of the family: every node down",
			forwardTo: "nodeports",
			services: []kube.Service{service("web", "203.0.113.5", "Cluster", web[:1],
				endpoint("s1", "10.1.0.1", "n1", "terminating", "http=8080"), endpoint("v6", "fd01::1", "n1", "ready", "http=8080"))},
			nodes: allNodes[:2],
			want:  []string{"k8s/c1/ns/web/http/ipv4 203.0.113.5:80/tcp: 10.0.0.1:30080 w1 down, 10.0.0.2:30080 w1 down"},
			warns: []string{"k8s/c1/ns/web: port http (80/TCP) on 203.0.113.5: no backend is up (no ready endpoint, or no Ready node to reach one): new connections to 203.0.113.5:80/tcp are refused and the address is not announced for it"},
		},
		{
			name:      "nodeports: a port without a nodePort is not served",
			forwardTo: "nodeports",
			services: []kube.Service{service("web", "203.0.113.5", "Cluster", []kube.Port{tcp("http", 80, 0), tcp("https", 443, 30443)},
				endpoint("s1", "10.1.0.1", "n1", "ready", "http=8080", "https=8443"))},
			nodes: allNodes[:1],
			want:  []string{"k8s/c1/ns/web/https/ipv4 203.0.113.5:443/tcp: 10.0.0.1:30443 w1 up"},
			warns: []string{"k8s/c1/ns/web: port http (80/TCP) on 203.0.113.5: no nodePort allocated (spec.allocateLoadBalancerNodePorts: false?), and forward-to is nodeports; port not served"},
		},
		{
			name:   "a static VIP on the same address, port and protocol wins",
			static: "{name: web-static, address: 203.0.113.5, port: 80, backends: [{address: 10.9.0.1:80}]}",
			services: []kube.Service{service("web", "203.0.113.5", "Cluster", []kube.Port{tcp("http", 80, 0), tcp("https", 443, 0)},
				endpoint("s1", "10.1.0.1", "n1", "ready", "http=8080", "https=8443"))},
			want: []string{
				"web-static 203.0.113.5:80/tcp: 10.9.0.1:80 w1 up",
				"k8s/c1/ns/web/https/ipv4 203.0.113.5:443/tcp: 10.1.0.1:8443 w1 up",
			},
			warns: []string{`k8s/c1/ns/web: port http (80/TCP) on 203.0.113.5: 203.0.113.5:80/tcp is also the static VIP "web-static"; the static VIP wins, port not served`},
		},
		{
			name: "IPAM's refusal is the Service's warning, and it gets no VIP",
			services: []kube.Service{
				service("outside", "192.0.2.1", "Cluster", web[:1], endpoint("s1", "10.1.0.1", "n1", "ready", "http=8080")),
				service("auto", "", "Cluster", web[:1], endpoint("s1", "10.1.0.2", "n1", "ready", "http=8080")),
			},
			want:  []string{"k8s/c1/ns/auto/http/ipv4 203.0.113.1:80/tcp: 10.1.0.2:8080 w1 up"},
			warns: []string{"k8s/c1/ns/outside: no address: requested address 192.0.2.1 (annotation portico.dev/address) is outside every pool"},
		},
		{
			name:     "SCTP is refused, other ports served",
			services: []kube.Service{service("mixed", "203.0.113.8", "Cluster", []kube.Port{{Name: "s", Port: 9, Protocol: "SCTP"}, tcp("t", 9, 0)})},
			want:     []string{"k8s/c1/ns/mixed/t/ipv4 203.0.113.8:9/tcp: "},
			warns: []string{
				"k8s/c1/ns/mixed: port s (9/SCTP) on 203.0.113.8: protocol SCTP is not supported (only TCP and UDP); port not served",
				"k8s/c1/ns/mixed: port t (9/TCP) on 203.0.113.8: no backend is up (no ready endpoint): new connections to 203.0.113.8:9/tcp are refused and the address is not announced for it",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			yaml := "vips: []\n"
			if tt.static != "" {
				yaml = "vips:\n  - " + tt.static + "\n"
			}
			snap := &kube.Snapshot{Cluster: "c1", Synced: true, Services: tt.services, Nodes: tt.nodes}
			d, warns := compileK8s(t, yaml, tt.forwardTo, snap)
			var gotWarns []string
			for _, w := range warns {
				gotWarns = append(gotWarns, w.String())
				if strings.HasPrefix(w.Path, "k8s/") && w.Service.Cluster != "c1" {
					t.Errorf("warning %q names no Service: %+v", w, w.Service)
				}
			}
			// VIPs come sorted by key: compare in the order of the table.
			got := dumpVIPs(d.VIPs)
			if !slices.Equal(got, tt.want) {
				t.Errorf("VIPs:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
			if !slices.Equal(gotWarns, tt.warns) {
				t.Errorf("warnings:\n%s\nwant:\n%s", strings.Join(gotWarns, "\n"), strings.Join(tt.warns, "\n"))
			}
			for _, v := range d.VIPs {
				checkTable(t, v)
			}
		})
	}
}

// TestCompileKubernetesAnnounce: an address is announced upstream while a
// VIP on it has a backend up, static or from Kubernetes; a Service with no
// ready endpoint is not.
func TestCompileKubernetesAnnounce(t *testing.T) {
	yaml := `
vips: []
bgp:
  asn: 65000
  router-id: 10.0.0.1
  peers:
    - {name: up, address: 10.0.4.2, asn: 65100, role: upstream}
`
	port := []kube.Port{tcp("http", 80, 0)}
	snap := &kube.Snapshot{Cluster: "c1", Synced: true, Services: []kube.Service{
		service("ready", "203.0.113.5", "Cluster", port, endpoint("s", "10.1.0.1", "n1", "ready", "http=8080")),
		service("draining", "203.0.113.6", "Cluster", port, endpoint("s", "10.1.0.2", "n1", "terminating", "http=8080")),
		service("empty", "2001:db8::6", "Cluster", port),
	}}
	d, _ := compileK8s(t, yaml, "pods", snap)
	var got []string
	for _, a := range d.BGP.Advertisements {
		got = append(got, a.Prefix.String())
	}
	if want := []string{"203.0.113.5/32"}; !slices.Equal(got, want) {
		t.Errorf("advertised %v, want %v", got, want)
	}
	// The VIPs of the Services without a ready endpoint exist all the
	// same: their addresses are owned, their flows drain.
	if n := len(d.VIPs); n != 3 {
		t.Errorf("%d VIPs, want 3: %v", n, dumpVIPs(d.VIPs))
	}
}

// TestCompileKubernetesTwoClusters: Services of two clusters on one shared
// address (same sharing key, other ports) are both served; a Kubernetes
// VIP never takes a static VIP's name.
func TestCompileKubernetesTwoClusters(t *testing.T) {
	shared := func(name string, port uint16) kube.Service {
		s := service(name, "203.0.113.9", "Cluster", []kube.Port{tcp("", port, 0)}, endpoint("s", "10.1.0.1", "n1", "ready", fmt.Sprintf("=%d", port)))
		s.Annotations[ipam.AnnotationSharingKey] = "k"
		return s
	}
	a := &kube.Snapshot{Cluster: "a", Synced: true, Services: []kube.Service{shared("web", 80)}}
	b := &kube.Snapshot{Cluster: "b", Synced: true, Services: []kube.Service{shared("web", 443), shared("dup", 80)}}
	d, warns := compileK8s(t, "vips:\n  - {name: k8s/a/ns/web/80/ipv4, address: 198.51.100.1, port: 80, backends: [{address: 10.9.0.1:80}]}\n", "pods", b, a)
	want := []string{
		"k8s/a/ns/web/80/ipv4 198.51.100.1:80/tcp: 10.9.0.1:80 w1 up",
		"k8s/b/ns/web/443/ipv4 203.0.113.9:443/tcp: 10.1.0.1:443 w1 up",
	}
	if got := dumpVIPs(d.VIPs); !slices.Equal(got, want) {
		t.Errorf("VIPs:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	wantWarns := []string{
		`k8s/a/ns/web: port 80 (80/TCP) on 203.0.113.9: its VIP name "k8s/a/ns/web/80/ipv4" is the name of a static VIP; port not served`,
		"k8s/b/ns/dup: no address: port 80/TCP collides on shared address 203.0.113.9 with port 80/TCP of a/ns/web",
	}
	var got []string
	for _, w := range warns {
		got = append(got, w.String())
	}
	if !slices.Equal(got, wantWarns) {
		t.Errorf("warnings:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(wantWarns, "\n"))
	}
}

// TestCompileKubernetesDeterministic: shuffling clusters, Services,
// endpoints and nodes changes neither the Desired nor the warnings.
func TestCompileKubernetesDeterministic(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	yaml := "vips:\n  - {name: s, address: 203.0.113.1, port: 80, backends: [{address: 10.9.0.1:80}]}\n"
	var snaps []*kube.Snapshot
	for c := range 3 {
		s := &kube.Snapshot{Cluster: fmt.Sprintf("c%d", c), Synced: true}
		for i := range 6 {
			s.Nodes = append(s.Nodes, node(fmt.Sprintf("n%d", i), i != 2, fmt.Sprintf("10.%d.0.%d", c, i+1), fmt.Sprintf("fd0%d::%d", c, i+1)))
		}
		for j := range 8 {
			svc := service(fmt.Sprintf("svc%d", j), "", []string{"Cluster", "Local"}[j%2], []kube.Port{tcp("http", 80, 30080), tcp("https", 443, 30443)})
			if j%3 == 0 {
				svc.IPFamilies, svc.IPFamilyPolicy = []string{"IPv6", "IPv4"}, "PreferDualStack"
			}
			for e := range 5 {
				state := []string{"ready", "ready", "terminating", "notready"}[rng.IntN(4)]
				nodeName := fmt.Sprintf("n%d", rng.IntN(6))
				svc.Endpoints = append(svc.Endpoints,
					endpoint("v4", fmt.Sprintf("10.%d.%d.%d", 100+c, j, e+1), nodeName, state, "http=8080", "https=8443"),
					endpoint("v6", fmt.Sprintf("fd1%d:%d::%d", c, j, e+1), nodeName, state, "http=8080"))
			}
			s.Services = append(s.Services, svc)
		}
		snaps = append(snaps, s)
	}
	for _, forwardTo := range []string{"pods", "nodeports"} {
		first, firstWarns := compileK8s(t, yaml, forwardTo, snaps...)
		if len(first.VIPs) < 40 {
			t.Fatalf("%s: only %d VIPs: %v", forwardTo, len(first.VIPs), firstWarns)
		}
		if !slices.IsSortedFunc(first.VIPs, func(a, b control.VIP) int { return a.Key.Compare(b.Key) }) {
			t.Errorf("%s: VIPs not sorted by key", forwardTo)
		}
		for range 10 {
			shuffled := make([]*kube.Snapshot, len(snaps))
			for i, s := range snaps {
				c := *s
				c.Services = slices.Clone(s.Services)
				for k := range c.Services {
					c.Services[k].Endpoints = slices.Clone(c.Services[k].Endpoints)
					rng.Shuffle(len(c.Services[k].Endpoints), func(x, y int) {
						c.Services[k].Endpoints[x], c.Services[k].Endpoints[y] = c.Services[k].Endpoints[y], c.Services[k].Endpoints[x]
					})
				}
				rng.Shuffle(len(c.Services), func(x, y int) { c.Services[x], c.Services[y] = c.Services[y], c.Services[x] })
				c.Nodes = slices.Clone(s.Nodes)
				rng.Shuffle(len(c.Nodes), func(x, y int) { c.Nodes[x], c.Nodes[y] = c.Nodes[y], c.Nodes[x] })
				shuffled[i] = &c
			}
			rng.Shuffle(len(shuffled), func(x, y int) { shuffled[x], shuffled[y] = shuffled[y], shuffled[x] })
			d, warns := compileK8s(t, yaml, forwardTo, shuffled...)
			if !reflect.DeepEqual(d, first) {
				t.Fatalf("%s: shuffled input gave another Desired:\n%s\nwant:\n%s", forwardTo,
					strings.Join(dumpVIPs(d.VIPs), "\n"), strings.Join(dumpVIPs(first.VIPs), "\n"))
			}
			if !slices.Equal(warns, firstWarns) {
				t.Fatalf("%s: shuffled input gave other warnings:\n%v\nwant:\n%v", forwardTo, warns, firstWarns)
			}
		}
	}
}

// TestCompileKubernetesSameKey: two Kubernetes VIPs on one key (IPAM
// prevents it; a hand-made result does not) make one VIP, the first
// Service's by key, and a warning naming the other.
func TestCompileKubernetesSameKey(t *testing.T) {
	port := []kube.Port{tcp("http", 80, 0)}
	snap := &kube.Snapshot{Cluster: "c1", Synced: true, Services: []kube.Service{
		service("b", "", "Cluster", port, endpoint("s", "10.1.0.2", "n1", "ready", "http=8080")),
		service("a", "", "Cluster", port, endpoint("s", "10.1.0.1", "n1", "ready", "http=8080")),
	}}
	addr := []netip.Addr{netip.MustParseAddr("203.0.113.1")}
	res := ipam.Result{Decisions: []ipam.Decision{
		{Service: ipam.Key{Cluster: "c1", Namespace: "ns", Name: "a"}, Addresses: addr},
		{Service: ipam.Key{Cluster: "c1", Namespace: "ns", Name: "b"}, Addresses: addr},
	}}
	d, warns := control.Compile(control.Inputs{Config: parse(t, "vips: []\n"),
		Kubernetes: control.Kubernetes{Clusters: []*kube.Snapshot{snap}, Addresses: res}})
	if got, want := dumpVIPs(d.VIPs), []string{"k8s/c1/ns/a/http/ipv4 203.0.113.1:80/tcp: 10.1.0.1:8080 w1 up"}; !slices.Equal(got, want) {
		t.Errorf("VIPs %v, want %v", got, want)
	}
	want := []control.Warning{{Path: "k8s/c1/ns/b", Service: ipam.Key{Cluster: "c1", Namespace: "ns", Name: "b"},
		Message: `port http (80/TCP) on 203.0.113.1: 203.0.113.1:80/tcp is already the VIP "k8s/c1/ns/a/http/ipv4"; port not served`}}
	if !reflect.DeepEqual(warns, want) {
		t.Errorf("warnings %v, want %v", warns, want)
	}
}

// TestCompileKubernetesCache compiles a sequence of snapshots with one
// Cache and without: the Desireds and warnings are equal each time, and
// a VIP whose backends did not change keeps its very lookup table.
func TestCompileKubernetesCache(t *testing.T) {
	c := parse(t, "vips:\n  - {name: s, address: 198.51.100.1, port: 80, backends: [{address: 10.9.0.1:80}]}\n")
	ports := []kube.Port{tcp("http", 80, 0), tcp("https", 443, 0)}
	snap := func(webState string, extra bool) *kube.Snapshot {
		s := &kube.Snapshot{Cluster: "c1", Synced: true, Services: []kube.Service{
			service("web", "203.0.113.5", "Cluster", ports,
				endpoint("s", "10.1.0.1", "n1", "ready", "http=8080", "https=8443"),
				endpoint("s", "10.1.0.2", "n1", webState, "http=8080")),
			service("api", "203.0.113.6", "Cluster", ports[:1], endpoint("s", "10.1.0.3", "n1", "ready", "http=8080")),
		}}
		if extra {
			s.Services = append(s.Services, service("new", "203.0.113.7", "Cluster", ports[:1], endpoint("s", "10.1.0.4", "n1", "ready", "http=8080")))
		}
		return s
	}
	steps := []struct {
		name string
		snap *kube.Snapshot
		kept []string // VIPs whose table the step must reuse
	}{
		{name: "first", snap: snap("ready", false)},
		{name: "same again", snap: snap("ready", false), kept: []string{"k8s/c1/ns/web/http/ipv4", "k8s/c1/ns/web/https/ipv4", "k8s/c1/ns/api/http/ipv4"}},
		{name: "an endpoint terminates", snap: snap("terminating", false), kept: []string{"k8s/c1/ns/web/https/ipv4", "k8s/c1/ns/api/http/ipv4"}},
		{name: "a Service more", snap: snap("terminating", true), kept: []string{"k8s/c1/ns/web/http/ipv4", "k8s/c1/ns/web/https/ipv4", "k8s/c1/ns/api/http/ipv4"}},
		{name: "no cluster", snap: nil},
		{name: "back", snap: snap("ready", true)},
	}
	cache := &control.Cache{}
	var last control.Desired
	for _, st := range steps {
		var k control.Kubernetes
		if st.snap != nil {
			k.Clusters = []*kube.Snapshot{st.snap}
			k.Addresses = ipam.Allocate(k8sPools, nil, control.IPAMServices(k.Clusters))
		}
		got, gotWarns := control.Compile(control.Inputs{Config: c, Kubernetes: k, Cache: cache})
		want, wantWarns := control.Compile(control.Inputs{Config: c, Kubernetes: k})
		if !reflect.DeepEqual(got, want) || !reflect.DeepEqual(gotWarns, wantWarns) {
			t.Fatalf("%s: with a cache\n%v %v\nwithout\n%v %v", st.name, dumpVIPs(got.VIPs), gotWarns, dumpVIPs(want.VIPs), wantWarns)
		}
		for _, v := range got.VIPs {
			if !strings.HasPrefix(v.Name, "k8s/") {
				continue
			}
			kept := false
			for _, l := range last.VIPs {
				if l.Name == v.Name && len(l.Slots) > 0 && len(v.Slots) > 0 && &l.Slots[0] == &v.Slots[0] {
					kept = true
				}
			}
			if want := slices.Contains(st.kept, v.Name); kept != want {
				t.Errorf("%s: VIP %s kept its table: %v, want %v", st.name, v.Name, kept, want)
			}
		}
		last = got
	}
}
