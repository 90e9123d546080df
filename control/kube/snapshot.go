// Package kube watches a Kubernetes cluster for the appliance: the LoadBalancer Services it
// serves, their EndpointSlices and the cluster's Nodes. A Watcher keeps client-go shared
// informers on the three kinds and publishes what the appliance needs as an immutable
// Snapshot, from which the daemon compiles its desired state; a StatusWriter writes the
// addresses the appliance gave a Service into its status; a Recorder records Kubernetes
// Events on Services.
//
// Everything here is level-triggered: the Watcher tells its owner that something changed and
// the next Snapshot holds the whole current state, so a missed notification, a resync or a
// restart lead to the same result. The apiserver going away changes nothing: the informers
// keep their caches and client-go retries with backoff.
package kube

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
)

// AnnotationPrefix starts the annotations a Snapshot keeps from a Service; others are
// dropped.
const AnnotationPrefix = "portico.dev/"

// ServiceKey names a Service.
type ServiceKey struct {
	Namespace string
	Name      string
}

// String returns "namespace/name".
func (k ServiceKey) String() string { return k.Namespace + "/" + k.Name }

// Snapshot is the state of one cluster as the appliance needs it. It is immutable: the
// Watcher makes a new one for every change and callers must not modify what it holds.
type Snapshot struct {
	// Cluster is the cluster's name from the configuration.
	Cluster string
	// Synced is true once the informers have listed every kind; before that a Snapshot may
	// lack objects that exist, and must not be taken as their removal.
	Synced bool
	// Services are the LoadBalancer Services of the configured class, sorted by key.
	Services []Service
	// Nodes are the cluster's Nodes with at least one InternalIP, sorted by name.
	Nodes []Node
}

// Service returns the Service named by key, if the Snapshot has it.
func (s *Snapshot) Service(key ServiceKey) (Service, bool) {
	i, ok := slices.BinarySearchFunc(s.Services, key, func(svc Service, k ServiceKey) int {
		return strings.Compare(svc.Key.String(), k.String())
	})
	if !ok {
		return Service{}, false
	}
	return s.Services[i], true
}

// Service is a LoadBalancer Service the appliance serves.
type Service struct {
	Key ServiceKey
	// UID identifies this incarnation of the Service; Events refer to it.
	UID types.UID
	// Class is spec.loadBalancerClass, empty when the Service names none.
	Class string
	Ports []Port
	// IPFamilies is spec.ipFamilies in order: "IPv4", "IPv6".
	IPFamilies []string
	// IPFamilyPolicy is spec.ipFamilyPolicy: SingleStack, PreferDualStack or
	// RequireDualStack.
	IPFamilyPolicy string
	// ExternalTrafficPolicy is Cluster or Local.
	ExternalTrafficPolicy string
	// Annotations holds those whose key starts with AnnotationPrefix, unparsed.
	Annotations map[string]string
	// LoadBalancerIP is spec.loadBalancerIP as written, unparsed: IPAM judges it.
	LoadBalancerIP string
	// Ingress are the IPs of status.loadBalancer.ingress, in order; entries with a
	// hostname only or an unparsable IP are left out.
	Ingress []netip.Addr
	// Endpoints come from every EndpointSlice labelled with the Service's name, sorted by
	// slice name then order within the slice.
	Endpoints []Endpoint
}

// Port is one port of a Service.
type Port struct {
	Name     string
	Port     uint16
	Protocol string // TCP | UDP | SCTP
	// NodePort is the port on every node, 0 when none is allocated.
	NodePort uint16
}

// Endpoint is one endpoint of an EndpointSlice.
type Endpoint struct {
	// Slice is the name of the EndpointSlice it comes from.
	Slice     string
	Addresses []netip.Addr
	// Ready, Serving and Terminating are the endpoint's conditions, with Kubernetes'
	// defaults for those left unset: a missing Ready or Serving means true, a missing
	// Terminating false.
	Ready       bool
	Serving     bool
	Terminating bool
	// NodeName is the node the endpoint runs on, empty if unknown.
	NodeName string
	// Ports are the slice's ports, by name ("" for an unnamed port).
	Ports map[string]EndpointPort
}

// EndpointPort is one port of an EndpointSlice.
type EndpointPort struct {
	Port     uint16
	Protocol string
}

// Node is a cluster node with its InternalIP addresses.
type Node struct {
	Name string
	// IPv4 and IPv6 are the node's InternalIP addresses, in the order of its status.
	IPv4  []netip.Addr
	IPv6  []netip.Addr
	Ready bool
}

// Selector says which Services the appliance serves.
type Selector struct {
	// Class is the load-balancer-class of the configuration.
	Class string
	// DefaultClass also selects Services that name no class.
	DefaultClass bool
}

// Selects reports whether svc is a LoadBalancer Service of the selected class.
func (sel Selector) Selects(svc *corev1.Service) bool {
	if svc.Spec.Type != corev1.ServiceTypeLoadBalancer {
		return false
	}
	if svc.Spec.LoadBalancerClass == nil || *svc.Spec.LoadBalancerClass == "" {
		return sel.DefaultClass
	}
	return *svc.Spec.LoadBalancerClass == sel.Class
}

// serviceFrom converts a selected Service. Its endpoints are joined later.
func serviceFrom(svc *corev1.Service) Service {
	out := Service{
		Key:                   ServiceKey{svc.Namespace, svc.Name},
		UID:                   svc.UID,
		LoadBalancerIP:        svc.Spec.LoadBalancerIP,
		ExternalTrafficPolicy: string(svc.Spec.ExternalTrafficPolicy),
	}
	if svc.Spec.LoadBalancerClass != nil {
		out.Class = *svc.Spec.LoadBalancerClass
	}
	if svc.Spec.IPFamilyPolicy != nil {
		out.IPFamilyPolicy = string(*svc.Spec.IPFamilyPolicy)
	}
	for _, f := range svc.Spec.IPFamilies {
		out.IPFamilies = append(out.IPFamilies, string(f))
	}
	for _, p := range svc.Spec.Ports {
		out.Ports = append(out.Ports, Port{
			Name: p.Name, Port: uint16(p.Port), Protocol: string(p.Protocol), NodePort: uint16(p.NodePort),
		})
	}
	for k, v := range svc.Annotations {
		if strings.HasPrefix(k, AnnotationPrefix) {
			if out.Annotations == nil {
				out.Annotations = map[string]string{}
			}
			out.Annotations[k] = v
		}
	}
	for _, ing := range svc.Status.LoadBalancer.Ingress {
		if a, err := netip.ParseAddr(ing.IP); err == nil {
			out.Ingress = append(out.Ingress, a)
		}
	}
	return out
}

// slice is an EndpointSlice reduced to what a Snapshot needs.
type slice struct {
	service   ServiceKey
	endpoints []Endpoint
}

// sliceFrom converts an EndpointSlice. An endpoint with an address that does not parse, or
// with none, is left out and named in problems; a slice without the service-name label is
// an error, and nothing of it is kept.
func sliceFrom(es *discoveryv1.EndpointSlice) (s slice, problems []string, err error) {
	name := es.Labels[discoveryv1.LabelServiceName]
	if name == "" {
		return slice{}, nil, fmt.Errorf("endpointslice %s/%s: no label %s: not part of any service",
			es.Namespace, es.Name, discoveryv1.LabelServiceName)
	}
	s.service = ServiceKey{es.Namespace, name}
	ports := make(map[string]EndpointPort, len(es.Ports))
	for _, p := range es.Ports {
		var ep EndpointPort
		if p.Port != nil {
			ep.Port = uint16(*p.Port)
		}
		if p.Protocol != nil {
			ep.Protocol = string(*p.Protocol)
		}
		name := ""
		if p.Name != nil {
			name = *p.Name
		}
		ports[name] = ep
	}
	for i, e := range es.Endpoints {
		out := Endpoint{
			Slice:       es.Name,
			Ready:       e.Conditions.Ready == nil || *e.Conditions.Ready,
			Serving:     e.Conditions.Serving == nil || *e.Conditions.Serving,
			Terminating: e.Conditions.Terminating != nil && *e.Conditions.Terminating,
			Ports:       ports,
		}
		if e.NodeName != nil {
			out.NodeName = *e.NodeName
		}
		var bad []string
		for _, a := range e.Addresses {
			addr, err := netip.ParseAddr(a)
			if err != nil || addr.Zone() != "" {
				bad = append(bad, fmt.Sprintf("%q", a))
				continue
			}
			out.Addresses = append(out.Addresses, addr.Unmap())
		}
		switch {
		case len(bad) > 0:
			problems = append(problems, fmt.Sprintf("endpointslice %s/%s: endpoints[%d]: addresses %s: not IP addresses; endpoint skipped",
				es.Namespace, es.Name, i, strings.Join(bad, ", ")))
			continue
		case len(out.Addresses) == 0:
			problems = append(problems, fmt.Sprintf("endpointslice %s/%s: endpoints[%d]: no addresses; endpoint skipped",
				es.Namespace, es.Name, i))
			continue
		}
		s.endpoints = append(s.endpoints, out)
	}
	return s, problems, nil
}

// nodeFrom converts a Node; one without an InternalIP address is an error.
func nodeFrom(n *corev1.Node) (Node, error) {
	out := Node{Name: n.Name}
	var bad []string
	for _, a := range n.Status.Addresses {
		if a.Type != corev1.NodeInternalIP {
			continue
		}
		addr, err := netip.ParseAddr(a.Address)
		switch {
		case err != nil || addr.Zone() != "":
			bad = append(bad, fmt.Sprintf("%q", a.Address))
		case addr.Unmap().Is4():
			out.IPv4 = append(out.IPv4, addr.Unmap())
		default:
			out.IPv6 = append(out.IPv6, addr)
		}
	}
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			out.Ready = c.Status == corev1.ConditionTrue
		}
	}
	if len(out.IPv4)+len(out.IPv6) == 0 {
		if len(bad) > 0 {
			return Node{}, fmt.Errorf("node %s: status.addresses: InternalIP %s: not an IP address; node skipped", n.Name, strings.Join(bad, ", "))
		}
		return Node{}, fmt.Errorf("node %s: status.addresses: no InternalIP; node skipped", n.Name)
	}
	return out, nil
}
