package e2e

import (
	"bufio"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"portico.dev/appliance/test/kube"
)

// kubeTimeout bounds each wait for the daemon to follow a change in the
// cluster: informer, apply, status write, Event. A second on an idle
// machine; generous for a loaded one, and for a reflector's backoff.
const kubeTimeout = 2 * time.Minute

const (
	kubeNS    = "shop"
	kubeClass = "portico.dev/appliance"
	kubePool  = "203.0.113.0/28"
)

// kubeService is a LoadBalancer Service of the appliance's class with a
// TCP port named http at port that targets 8080 (the backends' HTTP), with
// one named echo at 9000 that targets 9000 (their TCP echo) if echo, and
// with the given annotations.
func kubeService(name string, port int32, echo bool, annotations map[string]string) *corev1.Service {
	ports := []corev1.ServicePort{{
		Name: "http", Protocol: corev1.ProtocolTCP, Port: port, TargetPort: intstr.FromInt32(8080),
	}}
	if echo {
		ports = append(ports, corev1.ServicePort{
			Name: "echo", Protocol: corev1.ProtocolTCP, Port: 9000, TargetPort: intstr.FromInt32(9000),
		})
	}
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: kubeNS, Name: name, Annotations: annotations},
		Spec: corev1.ServiceSpec{
			Type:              corev1.ServiceTypeLoadBalancer,
			LoadBalancerClass: new(kubeClass),
			Selector:          map[string]string{"app": name},
			Ports:             ports,
		},
	}
}

// kubeEndpoint is an endpoint of a pod at addr; terminating marks it as a
// pod being deleted (not ready, still serving).
type kubeEndpoint struct {
	addr        string
	terminating bool
}

// kubeSlice is the EndpointSlice of Service svc with the endpoints eps at
// ports http (8080) and echo (9000), named like the Service's ports.
func kubeSlice(svc string, eps ...kubeEndpoint) *discoveryv1.EndpointSlice {
	es := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: kubeNS, Name: svc + "-1",
			Labels: map[string]string{discoveryv1.LabelServiceName: svc},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports: []discoveryv1.EndpointPort{
			{Name: new("http"), Protocol: new(corev1.ProtocolTCP), Port: new(int32(8080))},
			{Name: new("echo"), Protocol: new(corev1.ProtocolTCP), Port: new(int32(9000))},
		},
	}
	for _, e := range eps {
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{
			Addresses: []string{e.addr},
			Conditions: discoveryv1.EndpointConditions{
				Ready: new(!e.terminating), Serving: new(true), Terminating: new(e.terminating),
			},
		})
	}
	return es
}

// TestKubernetes runs the appliance against a real kube-apiserver: the
// apiserver and etcd run in the appliance's namespace (the daemon reads the
// kubeconfig test/kube writes), the lab's backends are the pods, and the
// client reaches the Services' addresses through the appliance. The test
// plays the controller-manager: it creates the EndpointSlices.
func TestKubernetes(t *testing.T) {
	l := newLab(t) // be1..be3 (10.0.1.11, 10.0.2.12, 10.0.3.13) are the pods
	c := kube.StartWith(t, kube.Options{Netns: l.Namespace("appliance")})
	cs := c.Client(t)
	ctx := t.Context()
	if _, err := cs.CoreV1().Namespaces().Create(ctx,
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: kubeNS}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	l.writeConfig(fmt.Sprintf(`pools:
  - {name: lab, cidrs: [%s], auto-assign: true}
kubernetes:
  clusters:
    - {name: lab, kubeconfig: %s}
  load-balancer-class: %s
  forward-to: pods
`, kubePool, c.Kubeconfig(), kubeClass))
	l.startAppliance()

	var addr netip.Addr // web's address, from its status
	shared := map[string]string{"portico.dev/sharing-key": "shop"}

	t.Run("ServiceGetsAddressAndTraffic", func(t *testing.T) {
		if _, err := cs.CoreV1().Services(kubeNS).Create(ctx, kubeService("web", 80, true, shared), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := cs.DiscoveryV1().EndpointSlices(kubeNS).Create(ctx,
			kubeSlice("web", kubeEndpoint{addr: "10.0.1.11"}, kubeEndpoint{addr: "10.0.2.12"}), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		addr = waitIngress(t, cs, "web")
		if !netip.MustParsePrefix(kubePool).Contains(addr) {
			t.Fatalf("web got %s, not from the pool %s", addr, kubePool)
		}
		target := addr.String() + ":80"
		l.waitBackends(t, target, "be1", "be2")
		hits := l.askMany(t, target, 60)
		if len(hits) != 2 || hits["be1"] == 0 || hits["be2"] == 0 {
			t.Fatalf("60 requests to %s reached %v, want be1 and be2 only", target, hits)
		}
	})
	if !addr.IsValid() {
		t.Fatal("no address for web: the steps after need it")
	}
	target := addr.String() + ":80"

	t.Run("EndpointsFollow", func(t *testing.T) {
		updateSlice(t, cs, kubeSlice("web",
			kubeEndpoint{addr: "10.0.1.11"}, kubeEndpoint{addr: "10.0.2.12"}, kubeEndpoint{addr: "10.0.3.13"}))
		l.waitBackends(t, target, "be3")

		// Established flows to the pods, be1's included, before be1 starts
		// terminating. The echo port is compiled with http, in the same
		// apply.
		conns := l.openEchoTo(t, addr.String()+":9000", 30)
		per := map[string]int{}
		for _, c := range conns {
			per[c.backend]++
		}
		if per["be1"] == 0 {
			t.Fatalf("30 echo connections reached %v, none be1", per)
		}

		updateSlice(t, cs, kubeSlice("web",
			kubeEndpoint{addr: "10.0.1.11", terminating: true}, kubeEndpoint{addr: "10.0.2.12"}, kubeEndpoint{addr: "10.0.3.13"}))
		// Eventually: a run of 30 new connections none of which reaches be1.
		waitFor(t, "be1 terminating gets no new connection", func() bool {
			return l.askMany(t, target, 30)["be1"] == 0
		})
		hits := l.askMany(t, target, 90)
		if hits["be1"] != 0 || hits["be2"] == 0 || hits["be3"] == 0 {
			t.Fatalf("be1 terminating: 90 new connections reached %v, want be2 and be3 only", hits)
		}
		if f := roundTrip(conns, "terminating"); len(f) > 0 {
			t.Fatalf("be1 terminating: %d of the 30 established connections %v failed: %v", len(f), per, f)
		}
	})

	t.Run("SharedAddress", func(t *testing.T) {
		ask := map[string]string{"portico.dev/address": addr.String()}
		share := map[string]string{"portico.dev/address": addr.String(), "portico.dev/sharing-key": "shop"}
		if _, err := cs.CoreV1().Services(kubeNS).Create(ctx, kubeService("api", 81, false, share), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := cs.DiscoveryV1().EndpointSlices(kubeNS).Create(ctx,
			kubeSlice("api", kubeEndpoint{addr: "10.0.3.13"}), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if got := waitIngress(t, cs, "api"); got != addr {
			t.Fatalf("api has %s, want the shared address %s", got, addr)
		}
		l.waitBackends(t, addr.String()+":81", "be3")
		if hits := l.askMany(t, addr.String()+":81", 20); hits["be3"] != 20 {
			t.Fatalf("20 requests to api (%s:81) reached %v, want be3 only", addr, hits)
		}

		if _, err := cs.CoreV1().Services(kubeNS).Create(ctx, kubeService("intruder", 82, false, ask), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := cs.DiscoveryV1().EndpointSlices(kubeNS).Create(ctx,
			kubeSlice("intruder", kubeEndpoint{addr: "10.0.2.12"}), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		var ev corev1.Event
		waitFor(t, "a Warning Event on intruder", func() bool {
			list, err := cs.CoreV1().Events(kubeNS).List(ctx, metav1.ListOptions{
				FieldSelector: "involvedObject.kind=Service,involvedObject.name=intruder,type=Warning",
			})
			if err != nil {
				t.Fatal(err)
			}
			if len(list.Items) > 0 {
				ev = list.Items[0]
				return true
			}
			return false
		})
		if ev.Reason != "AddressRefused" || !strings.Contains(ev.Message, addr.String()) {
			t.Errorf("intruder's Event: reason %q message %q, want AddressRefused naming %s", ev.Reason, ev.Message, addr)
		}
		// The Event is recorded after the apply that refused the Service,
		// and a refused Service's status is never written: it is empty now.
		svc, err := cs.CoreV1().Services(kubeNS).Get(ctx, "intruder", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if ing := svc.Status.LoadBalancer.Ingress; len(ing) != 0 {
			t.Errorf("refused intruder has status ingress %v, want none", ing)
		}
		if name, _, err := l.ask(addr.String() + ":82"); err == nil {
			t.Errorf("intruder's port %s:82 answered (%s), want it not served", addr, name)
		}
		// The refusal took nothing from the Services that share the address.
		if hits := l.askMany(t, target, 30); hits["be1"] != 0 || hits["be2"]+hits["be3"] != 30 {
			t.Errorf("after the refusal, web reached %v", hits)
		}
	})

	// Every line of the Kubernetes parts names its component and cluster
	// once: a key given twice is ambiguous to a log parser.
	t.Run("LogKeys", func(t *testing.T) {
		out := l.app.Output()
		for _, want := range []string{
			`msg="apiserver connected" component=kube cluster=lab`,
			`msg="informers synced" component=kube cluster=lab`,
			`msg="status written" component=kube cluster=lab service=shop/web`,
		} {
			if !strings.Contains(out, want) {
				t.Errorf("the appliance's log has no %q", want)
			}
		}
		for line := range strings.Lines(out) {
			if strings.Count(line, " component=") > 1 || strings.Count(line, " cluster=") > 1 {
				t.Errorf("a key twice: %s", line)
			}
		}
	})
}

// askMany sends n requests, each on a new connection, from the client to
// target and counts the answers per backend. Any failure fails t.
func (l *lab) askMany(t *testing.T, target string, n int) map[string]int {
	t.Helper()
	hits := map[string]int{}
	for range n {
		name, _, err := l.ask(target)
		if err != nil {
			t.Fatalf("request to %s: %v", target, err)
		}
		hits[name]++
	}
	return hits
}

// waitBackends sends requests from the client to target, each on a new
// connection, until every one of backends has answered one. Failed
// requests are retried: the VIP may not be there yet.
func (l *lab) waitBackends(t *testing.T, target string, backends ...string) {
	t.Helper()
	seen := map[string]bool{}
	var last error
	for deadline := time.Now().Add(kubeTimeout); ; time.Sleep(100 * time.Millisecond) {
		name, _, err := l.ask(target)
		if err != nil {
			last = err
		} else {
			seen[name] = true
		}
		missing := 0
		for _, be := range backends {
			if !seen[be] {
				missing++
			}
		}
		if missing == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: answers from %v within %v, want %v; last error %v\n%s",
				target, seen, kubeTimeout, backends, last, l.app.Output())
		}
	}
}

// openEchoTo opens n connections from the client to the TCP echo at
// target and reads each one's hello, which names its backend.
func (l *lab) openEchoTo(t *testing.T, target string, n int) []*echoConn {
	t.Helper()
	conns := make([]*echoConn, 0, n)
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	for range n {
		c, err := l.dial("tcp", target)
		if err != nil {
			t.Fatal(err)
		}
		ec := &echoConn{Conn: c, r: bufio.NewReader(c)}
		conns = append(conns, ec)
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		hello, err := ec.r.ReadString('\n')
		if err != nil {
			t.Fatalf("echo hello from %s: %v", target, err)
		}
		ec.backend = strings.Fields(hello)[0]
	}
	return conns
}

// waitIngress waits until Service name's status names one address and
// returns it.
func waitIngress(t *testing.T, cs kubernetes.Interface, name string) netip.Addr {
	t.Helper()
	var addr netip.Addr
	waitFor(t, name+"'s status.loadBalancer.ingress", func() bool {
		svc, err := cs.CoreV1().Services(kubeNS).Get(t.Context(), name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		ing := svc.Status.LoadBalancer.Ingress
		if len(ing) == 0 {
			return false
		}
		if len(ing) != 1 {
			t.Fatalf("%s's status ingress %v, want one address", name, ing)
		}
		if addr, err = netip.ParseAddr(ing[0].IP); err != nil {
			t.Fatalf("%s's status ingress %q: %v", name, ing[0].IP, err)
		}
		return true
	})
	return addr
}

// updateSlice replaces the endpoints of the slice es names.
func updateSlice(t *testing.T, cs kubernetes.Interface, es *discoveryv1.EndpointSlice) {
	t.Helper()
	cur, err := cs.DiscoveryV1().EndpointSlices(kubeNS).Get(t.Context(), es.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cur.Endpoints = es.Endpoints
	if _, err := cs.DiscoveryV1().EndpointSlices(kubeNS).Update(t.Context(), cur, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// waitFor polls ok until it holds, or fails t after kubeTimeout.
func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(kubeTimeout)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, kubeTimeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
