package kube

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestSelects(t *testing.T) {
	lb := func(class *string) *corev1.Service {
		return &corev1.Service{Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, LoadBalancerClass: class}}
	}
	ours, other, empty := "portico.dev/appliance", "other.example/lb", ""
	for _, tc := range []struct {
		name string
		sel  Selector
		svc  *corev1.Service
		want bool
	}{
		{"our class", Selector{Class: ours}, lb(&ours), true},
		{"other class", Selector{Class: ours, DefaultClass: true}, lb(&other), false},
		{"no class, default", Selector{Class: ours, DefaultClass: true}, lb(nil), true},
		{"no class, not default", Selector{Class: ours}, lb(nil), false},
		{"empty class, default", Selector{Class: ours, DefaultClass: true}, lb(&empty), true},
		{"not LoadBalancer", Selector{Class: ours, DefaultClass: true}, &corev1.Service{Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeNodePort}}, false},
	} {
		if got := tc.sel.Selects(tc.svc); got != tc.want {
			t.Errorf("%s: Selects %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestSliceFrom(t *testing.T) {
	meta := metav1.ObjectMeta{Namespace: "ns", Name: "s1", Labels: map[string]string{discoveryv1.LabelServiceName: "web"}}
	for _, tc := range []struct {
		name      string
		es        discoveryv1.EndpointSlice
		want      string // endpoints as addresses/ready/serving/terminating
		problems  string
		wantError string
	}{
		{name: "defaults", es: discoveryv1.EndpointSlice{ObjectMeta: meta, Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{"10.0.0.1"}},
		}}, want: "10.0.0.1 rs-"},
		{name: "terminating", es: discoveryv1.EndpointSlice{ObjectMeta: meta, Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{"fd00::1"}, Conditions: discoveryv1.EndpointConditions{Ready: new(false), Serving: new(true), Terminating: new(true)}},
		}}, want: "fd00::1 -sT"},
		{name: "bad address skipped alone", es: discoveryv1.EndpointSlice{ObjectMeta: meta, Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{"pod.example.com"}}, {Addresses: []string{"10.0.0.2"}}, {},
		}}, want: "10.0.0.2 rs-", problems: `endpoints[0]: addresses "pod.example.com": not IP addresses; endpoint skipped; endpoints[2]: no addresses; endpoint skipped`},
		{name: "no label", es: discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "s1"}},
			wantError: "endpointslice ns/s1: no label kubernetes.io/service-name"},
	} {
		s, problems, err := sliceFrom(&tc.es)
		if tc.wantError != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantError) {
				t.Errorf("%s: err %v, want %q", tc.name, err, tc.wantError)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		var got []string
		for _, e := range s.endpoints {
			flags := []byte("---")
			for i, on := range []bool{e.Ready, e.Serving, e.Terminating} {
				if on {
					flags[i] = "rsT"[i]
				}
			}
			got = append(got, e.Addresses[0].String()+" "+string(flags))
		}
		if g := strings.Join(got, " "); g != tc.want {
			t.Errorf("%s: endpoints %q, want %q", tc.name, g, tc.want)
		}
		var gotProblems []string
		for _, p := range problems {
			gotProblems = append(gotProblems, strings.TrimPrefix(p, "endpointslice ns/s1: "))
		}
		if g := strings.Join(gotProblems, "; "); g != tc.problems {
			t.Errorf("%s: problems %q, want %q", tc.name, g, tc.problems)
		}
		if s.service != (ServiceKey{"ns", "web"}) {
			t.Errorf("%s: service %v, want ns/web", tc.name, s.service)
		}
	}
}

func TestNodeFrom(t *testing.T) {
	node := func(addrs ...corev1.NodeAddress) *corev1.Node {
		return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}, Status: corev1.NodeStatus{Addresses: addrs}}
	}
	for _, tc := range []struct {
		name string
		n    *corev1.Node
		want string
	}{
		{"dual-stack", node(corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: "10.0.0.1"}, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: "fd00::1"}), "[10.0.0.1] [fd00::1]"},
		{"external only", node(corev1.NodeAddress{Type: corev1.NodeExternalIP, Address: "198.51.100.1"}), "node n1: status.addresses: no InternalIP; node skipped"},
		{"unparsable", node(corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: "n1.example"}), `node n1: status.addresses: InternalIP "n1.example": not an IP address; node skipped`},
	} {
		n, err := nodeFrom(tc.n)
		got := ""
		if err != nil {
			got = err.Error()
		} else {
			got = strings.TrimSpace(strings.Join([]string{fmtAddrs(n.IPv4), fmtAddrs(n.IPv6)}, " "))
		}
		if got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}

func fmtAddrs(a []netip.Addr) string { return fmt.Sprint(a) }
