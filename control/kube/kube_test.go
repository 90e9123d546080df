package kube_test

import (
	"bytes"
	"context"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"portico.dev/appliance/control/kube"
	kubetest "portico.dev/appliance/test/kube"
)

// waitTimeout bounds every wait for the watcher or the apiserver. It is no assertion on
// speed: after the apiserver comes back a reflector waits out a backoff of up to 30 s.
const waitTimeout = 2 * time.Minute

const (
	ns    = "portico-test"
	class = "portico.dev/appliance"
)

// logs is a concurrency-safe log buffer; the test asserts on its lines and prints them when
// it fails.
type logs struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logs) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logs) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// env is a cluster with the test's namespace, and the appliance's view of it.
type env struct {
	c    *kubetest.Cluster
	cs   kubernetes.Interface
	conn *kube.Conn
	logs *logs
	log  *slog.Logger
}

func newEnv(t *testing.T) *env {
	t.Helper()
	c := kubetest.Start(t)
	e := &env{c: c, cs: c.Client(t), logs: &logs{}}
	e.log = slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("appliance log:\n%s", e.logs)
		}
	})
	var err error
	if e.conn, err = kube.Open("test", c.Kubeconfig(), e.log); err != nil {
		t.Fatal(err)
	}
	if _, err := e.cs.CoreV1().Namespaces().Create(t.Context(),
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return e
}

// watcher is a running Watcher whose OnChange feeds changes.
type watcher struct {
	*kube.Watcher
	changes chan struct{}
}

// watch runs a Watcher until the test ends, and waits for it to stop then.
func (e *env) watch(t *testing.T, sel kube.Selector, events kube.EventRecorder, log *slog.Logger) *watcher {
	t.Helper()
	w := &watcher{changes: make(chan struct{}, 1)}
	var err error
	w.Watcher, err = kube.NewWatcher(e.conn, kube.Options{
		Selector: sel,
		Events:   events,
		Log:      log,
		OnChange: func() {
			select {
			case w.changes <- struct{}{}:
			default:
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return w
}

// waitFor waits until the watcher's Snapshot satisfies ok, checking after each change, and
// returns it.
func (w *watcher) waitFor(t *testing.T, what string, ok func(*kube.Snapshot) bool) *kube.Snapshot {
	t.Helper()
	timeout := time.After(waitTimeout)
	for {
		if s := w.Snapshot(); ok(s) {
			return s
		}
		select {
		case <-w.changes:
		case <-timeout:
			t.Fatalf("snapshot: %s: not within %v; last:\n%s", what, waitTimeout, dump(w.Snapshot()))
		}
	}
}

func dump(s *kube.Snapshot) string {
	var b strings.Builder
	for _, svc := range s.Services {
		b.WriteString(svc.Key.String() + ":")
		for _, e := range svc.Endpoints {
			b.WriteString(" " + endpointString(e))
		}
		b.WriteString("\n")
	}
	for _, n := range s.Nodes {
		b.WriteString("node " + n.Name + "\n")
	}
	return b.String()
}

func endpointString(e kube.Endpoint) string {
	var a []string
	for _, x := range e.Addresses {
		a = append(a, x.String())
	}
	s := strings.Join(a, ",")
	if !e.Ready {
		s += "/notready"
	}
	if e.Terminating {
		s += "/terminating"
	}
	return s
}

// endpoints lists a Service's endpoints as endpointString does, or "absent".
func endpoints(s *kube.Snapshot, name string) string {
	svc, ok := s.Service(kube.ServiceKey{Namespace: ns, Name: name})
	if !ok {
		return "absent"
	}
	var out []string
	for _, e := range svc.Endpoints {
		out = append(out, endpointString(e))
	}
	return strings.Join(out, " ")
}

func serviceNames(s *kube.Snapshot) string {
	var out []string
	for _, svc := range s.Services {
		out = append(out, svc.Key.String())
	}
	return strings.Join(out, " ")
}

func lbService(name, class string) *corev1.Service {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.ServiceSpec{
			Type:     corev1.ServiceTypeLoadBalancer,
			Selector: map[string]string{"app": name},
			Ports: []corev1.ServicePort{{
				Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(8080),
			}},
		},
	}
	if class != "" {
		svc.Spec.LoadBalancerClass = new(class)
	}
	return svc
}

type ep struct {
	addr        string
	node        string
	ready       bool
	terminating bool
}

func endpointSlice(svc, name string, typ discoveryv1.AddressType, eps ...ep) *discoveryv1.EndpointSlice {
	es := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: ns, Name: name,
			Labels: map[string]string{discoveryv1.LabelServiceName: svc},
		},
		AddressType: typ,
		Ports: []discoveryv1.EndpointPort{{
			Name: new("http"), Protocol: new(corev1.ProtocolTCP), Port: new(int32(8080)),
		}},
	}
	if svc == "" {
		es.Labels = nil
	}
	for _, e := range eps {
		x := discoveryv1.Endpoint{
			Addresses: []string{e.addr},
			Conditions: discoveryv1.EndpointConditions{
				Ready: new(e.ready), Serving: new(e.ready || e.terminating), Terminating: new(e.terminating),
			},
		}
		if e.node != "" {
			x.NodeName = new(e.node)
		}
		es.Endpoints = append(es.Endpoints, x)
	}
	return es
}

// createNode creates a Node and sets its status, a subresource.
func (e *env) createNode(t *testing.T, name string, ready bool, addrs ...corev1.NodeAddress) {
	t.Helper()
	ctx := t.Context()
	n, err := e.cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	st := corev1.ConditionFalse
	if ready {
		st = corev1.ConditionTrue
	}
	n.Status.Addresses = addrs
	n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: st}}
	if _, err := e.cs.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func internal(a string) corev1.NodeAddress {
	return corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: a}
}

func (e *env) createService(t *testing.T, svc *corev1.Service) *corev1.Service {
	t.Helper()
	out, err := e.cs.CoreV1().Services(ns).Create(t.Context(), svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func (e *env) applySlice(t *testing.T, es *discoveryv1.EndpointSlice) {
	t.Helper()
	ctx := t.Context()
	api := e.cs.DiscoveryV1().EndpointSlices(ns)
	old, err := api.Get(ctx, es.Name, metav1.GetOptions{})
	if err == nil {
		es.ResourceVersion = old.ResourceVersion
		_, err = api.Update(ctx, es, metav1.UpdateOptions{})
	} else {
		_, err = api.Create(ctx, es, metav1.CreateOptions{})
	}
	if err != nil {
		t.Fatal(err)
	}
}

// waitEvent waits until the Events API has an Event on the Service with reason, and
// returns it.
func (e *env) waitEvent(t *testing.T, service, reason string) corev1.Event {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		list, err := e.cs.CoreV1().Events(ns).List(t.Context(), metav1.ListOptions{
			FieldSelector: "involvedObject.kind=Service,involvedObject.name=" + service + ",reason=" + reason,
		})
		if err != nil {
			t.Fatal(err)
		}
		if len(list.Items) > 0 {
			return list.Items[0]
		}
		if time.Now().After(deadline) {
			t.Fatalf("no event %s on service %s within %v", reason, service, waitTimeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestWatcher creates Nodes, LoadBalancer Services of several classes and their
// EndpointSlices in a real apiserver and checks that the Snapshot holds exactly what the
// appliance needs of them, follows endpoint changes, and skips bad input alone with a log
// line and an Event.
func TestWatcher(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	rec := kube.NewRecorder(e.conn, "portico-appliance", e.log)
	t.Cleanup(rec.Shutdown)

	e.createNode(t, "node1", true, internal("10.0.1.11"), internal("fd00:1::11"),
		corev1.NodeAddress{Type: corev1.NodeHostName, Address: "node1"})
	e.createNode(t, "node2", false, internal("10.0.1.12"))
	e.createNode(t, "node3", true, corev1.NodeAddress{Type: corev1.NodeExternalIP, Address: "198.51.100.3"})

	w := e.watch(t, kube.Selector{Class: class}, rec, e.log)
	// The second watcher logs elsewhere, so that the log lines checked are the first's.
	wd := e.watch(t, kube.Selector{Class: class, DefaultClass: true}, nil, slog.New(slog.DiscardHandler))
	w.waitFor(t, "synced with two nodes", func(s *kube.Snapshot) bool { return s.Synced && len(s.Nodes) == 2 })
	if !w.HasSynced() {
		t.Error("HasSynced false after a synced snapshot")
	}

	// The Service the appliance serves, with everything a Snapshot keeps.
	web := lbService("web", class)
	web.Annotations = map[string]string{
		"portico.dev/sharing-key": "k1", "portico.dev/address": "203.0.113.10", "example.com/other": "x",
	}
	web.Spec.LoadBalancerIP = "203.0.113.10"
	web.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
	web.Spec.IPFamilyPolicy = new(corev1.IPFamilyPolicyPreferDualStack)
	web.Spec.IPFamilies = []corev1.IPFamily{corev1.IPv4Protocol, corev1.IPv6Protocol}
	web.Spec.Ports = append(web.Spec.Ports, corev1.ServicePort{
		Name: "dns", Protocol: corev1.ProtocolUDP, Port: 53, TargetPort: intstr.FromInt32(5353),
	})
	begin := time.Now()
	created := e.createService(t, web)
	e.applySlice(t, endpointSlice("web", "web-v4", discoveryv1.AddressTypeIPv4,
		ep{"10.244.1.5", "node1", true, false}, ep{"10.244.2.7", "node2", true, false}))
	s := w.waitFor(t, "web with two endpoints", func(s *kube.Snapshot) bool { return endpoints(s, "web") == "10.244.1.5 10.244.2.7" })
	t.Logf("service + endpointslice created to snapshot: %v", time.Since(begin).Round(time.Millisecond))

	// Others: another class, no class, not a LoadBalancer.
	e.createService(t, lbService("other", "other.example/lb"))
	e.createService(t, lbService("noclass", ""))
	cip := lbService("internal", "")
	cip.Spec.Type = corev1.ServiceTypeClusterIP
	e.createService(t, cip)
	wd.waitFor(t, "default class: noclass and web", func(s *kube.Snapshot) bool { return serviceNames(s) == ns+"/noclass "+ns+"/web" })
	// The watcher without default-class saw the same events (one apiserver, same order), so
	// once it shows the last change the others were there to be taken.
	e.applySlice(t, endpointSlice("web", "web-v4", discoveryv1.AddressTypeIPv4,
		ep{"10.244.1.5", "node1", true, false}, ep{"10.244.2.7", "node2", true, false}, ep{"10.244.1.6", "node1", true, false}))
	s = w.waitFor(t, "scaled up to three", func(s *kube.Snapshot) bool {
		return endpoints(s, "web") == "10.244.1.5 10.244.2.7 10.244.1.6"
	})
	if got := serviceNames(s); got != ns+"/web" {
		t.Errorf("class %s without default-class: services %q, want only %s/web", class, got, ns)
	}

	ports := func(ps []corev1.ServicePort) []kube.Port {
		var out []kube.Port
		for _, p := range ps {
			if p.NodePort == 0 {
				t.Errorf("port %s: no node port allocated", p.Name)
			}
			out = append(out, kube.Port{Name: p.Name, Port: uint16(p.Port), Protocol: string(p.Protocol), NodePort: uint16(p.NodePort)})
		}
		return out
	}
	epPorts := map[string]kube.EndpointPort{"http": {Port: 8080, Protocol: "TCP"}}
	want := kube.Service{
		Key:                   kube.ServiceKey{Namespace: ns, Name: "web"},
		UID:                   created.UID,
		Class:                 class,
		Ports:                 ports(created.Spec.Ports),
		IPFamilies:            []string{"IPv4", "IPv6"},
		IPFamilyPolicy:        "PreferDualStack",
		ExternalTrafficPolicy: "Local",
		Annotations:           map[string]string{"portico.dev/sharing-key": "k1", "portico.dev/address": "203.0.113.10"},
		LoadBalancerIP:        "203.0.113.10",
		Endpoints: []kube.Endpoint{
			{Slice: "web-v4", Addresses: []netip.Addr{netip.MustParseAddr("10.244.1.5")}, Ready: true, Serving: true, NodeName: "node1", Ports: epPorts},
			{Slice: "web-v4", Addresses: []netip.Addr{netip.MustParseAddr("10.244.2.7")}, Ready: true, Serving: true, NodeName: "node2", Ports: epPorts},
			{Slice: "web-v4", Addresses: []netip.Addr{netip.MustParseAddr("10.244.1.6")}, Ready: true, Serving: true, NodeName: "node1", Ports: epPorts},
		},
	}
	got, _ := s.Service(want.Key)
	if d := cmp.Diff(want, got, cmpopts.EquateComparable(netip.Addr{})); d != "" {
		t.Errorf("service web (-want +got):\n%s", d)
	}
	wantNodes := []kube.Node{
		{Name: "node1", IPv4: []netip.Addr{netip.MustParseAddr("10.0.1.11")}, IPv6: []netip.Addr{netip.MustParseAddr("fd00:1::11")}, Ready: true},
		{Name: "node2", IPv4: []netip.Addr{netip.MustParseAddr("10.0.1.12")}},
	}
	if d := cmp.Diff(wantNodes, s.Nodes, cmpopts.EquateComparable(netip.Addr{})); d != "" {
		t.Errorf("nodes (-want +got):\n%s", d)
	}

	// Scale down, and one endpoint terminating in a second slice (IPv6).
	e.applySlice(t, endpointSlice("web", "web-v4", discoveryv1.AddressTypeIPv4,
		ep{"10.244.1.5", "node1", true, false}, ep{"10.244.2.7", "node2", false, true}))
	e.applySlice(t, endpointSlice("web", "web-v6", discoveryv1.AddressTypeIPv6, ep{"fd00:244::5", "node1", true, false}))
	w.waitFor(t, "scaled down, one terminating, v6 added", func(s *kube.Snapshot) bool {
		return endpoints(s, "web") == "10.244.1.5 10.244.2.7/notready/terminating fd00:244::5"
	})
	if err := e.cs.DiscoveryV1().EndpointSlices(ns).Delete(ctx, "web-v6", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	w.waitFor(t, "v6 slice deleted", func(s *kube.Snapshot) bool {
		return endpoints(s, "web") == "10.244.1.5 10.244.2.7/notready/terminating"
	})

	// Bad input, each skipped alone: an FQDN slice (addresses that are no IPs) beside a good
	// endpoint, a slice of no Service, a Node without InternalIP (node3, from the start).
	e.applySlice(t, endpointSlice("web", "web-fqdn", discoveryv1.AddressTypeFQDN, ep{"pod.example.com", "node1", true, false}))
	e.applySlice(t, endpointSlice("", "orphan", discoveryv1.AddressTypeIPv4, ep{"10.244.9.9", "", true, false}))
	e.applySlice(t, endpointSlice("web", "web-v4", discoveryv1.AddressTypeIPv4, ep{"10.244.1.5", "node1", true, false}))
	w.waitFor(t, "terminating endpoint gone, bad ones skipped", func(s *kube.Snapshot) bool {
		return endpoints(s, "web") == "10.244.1.5"
	})
	ev := e.waitEvent(t, "web", kube.ReasonBadEndpoint)
	if ev.Type != corev1.EventTypeWarning || ev.InvolvedObject.UID != created.UID || !strings.Contains(ev.Message, "web-fqdn") {
		t.Errorf("event %s %s on uid %s: %q; want a Warning on %s naming web-fqdn", ev.Type, ev.Reason, ev.InvolvedObject.UID, ev.Message, created.UID)
	}
	log := e.logs.String()
	for _, want := range []string{
		`object="EndpointSlice portico-test/orphan"`,
		`object="EndpointSlice portico-test/web-fqdn"`,
		`object="Node node3"`,
	} {
		if !strings.Contains(log, `msg="skipped bad input" component=kube cluster=test `+want) {
			t.Errorf("no log line skipping %s", want)
		}
	}
	if strings.Count(log, `object="Node node3"`) != 1 {
		t.Errorf("node3 logged %d times, want once", strings.Count(log, `object="Node node3"`))
	}

	// A class change takes the Service out; back, it returns with its endpoints.
	setClass := func(c string) {
		svc, err := e.cs.CoreV1().Services(ns).Get(ctx, "other", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		svc.Spec.Type = corev1.ServiceTypeLoadBalancer
		svc.Spec.LoadBalancerClass = new(c)
		if c == "" {
			// loadBalancerClass is immutable; leaving LoadBalancer clears it.
			svc.Spec.Type = corev1.ServiceTypeClusterIP
			svc.Spec.LoadBalancerClass = nil
			for i := range svc.Spec.Ports {
				svc.Spec.Ports[i].NodePort = 0
			}
		}
		if _, err := e.cs.CoreV1().Services(ns).Update(ctx, svc, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	e.applySlice(t, endpointSlice("other", "other-1", discoveryv1.AddressTypeIPv4, ep{"10.244.3.3", "node1", true, false}))
	setClass("")
	setClass(class)
	w.waitFor(t, "other now of our class", func(s *kube.Snapshot) bool { return endpoints(s, "other") == "10.244.3.3" })
	setClass("")
	w.waitFor(t, "other no LoadBalancer", func(s *kube.Snapshot) bool { return endpoints(s, "other") == "absent" })
	if err := e.cs.CoreV1().Services(ns).Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	w.waitFor(t, "web deleted", func(s *kube.Snapshot) bool { return len(s.Services) == 0 })
}
