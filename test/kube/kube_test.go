package kube

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"portico.dev/appliance/test/topo"
)

// eventTimeout bounds waits for an informer to see a change. After the apiserver comes back
// a reflector retries with a backoff of up to tens of seconds.
const eventTimeout = 2 * time.Minute

func lbService(ns, name string) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.ServiceSpec{
			Type:     corev1.ServiceTypeLoadBalancer,
			Selector: map[string]string{"app": name},
			Ports: []corev1.ServicePort{{
				Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(8080),
			}},
		},
	}
}

func endpointSlice(ns, svc string, addrs ...string) *discoveryv1.EndpointSlice {
	es := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: ns, Name: svc + "-1",
			Labels: map[string]string{discoveryv1.LabelServiceName: svc},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports: []discoveryv1.EndpointPort{{
			Name: new("http"), Protocol: new(corev1.ProtocolTCP), Port: new(int32(8080)),
		}},
	}
	for _, a := range addrs {
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{a},
			Conditions: discoveryv1.EndpointConditions{Ready: new(true)},
		})
	}
	return es
}

// TestCluster drives the apiserver as the appliance will: objects created and read back,
// a Service watched through an informer, its status written, and the apiserver stopped and
// started again under a running client and informer.
func TestCluster(t *testing.T) {
	c := Start(t)
	cs := c.Client(t)
	ctx := t.Context()

	// The kubeconfig file, as a daemon would load it, reaches the same apiserver.
	fileCfg, err := clientcmd.BuildConfigFromFlags("", c.Kubeconfig())
	if err != nil {
		t.Fatal(err)
	}
	fileCS, err := kubernetes.NewForConfig(fileCfg)
	if err != nil {
		t.Fatal(err)
	}
	v, err := fileCS.Discovery().ServerVersion()
	if err != nil {
		t.Fatal(err)
	}
	if v.GitVersion != "v1.36.3" {
		t.Errorf("server version %q, want v1.36.3", v.GitVersion)
	}

	const ns, name = "portico-test", "web"
	if _, err := cs.CoreV1().Namespaces().Create(ctx,
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().Services(ns).Create(ctx, lbService(ns, name), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.DiscoveryV1().EndpointSlices(ns).Create(ctx,
		endpointSlice(ns, name, "10.0.1.11", "10.0.1.12"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	svc, err := fileCS.CoreV1().Services(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if svc.Spec.Type != corev1.ServiceTypeLoadBalancer {
		t.Errorf("service type %q, want LoadBalancer", svc.Spec.Type)
	}
	// The apiserver's own allocators ran: a ClusterIP from ServiceCIDRs and a node port.
	ip, err := netip.ParseAddr(svc.Spec.ClusterIP)
	if err != nil || !netip.MustParsePrefix("10.96.0.0/16").Contains(ip) {
		t.Errorf("cluster IP %q, want one in 10.96.0.0/16", svc.Spec.ClusterIP)
	}
	if svc.Spec.Ports[0].NodePort == 0 {
		t.Error("no node port allocated")
	}
	es, err := fileCS.DiscoveryV1().EndpointSlices(ns).Get(ctx, name+"-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range es.Endpoints {
		got = append(got, e.Addresses...)
	}
	if strings.Join(got, ",") != "10.0.1.11,10.0.1.12" || es.Labels[discoveryv1.LabelServiceName] != name {
		t.Errorf("endpoint slice has addresses %v, labels %v; want 10.0.1.11, 10.0.1.12 of service %s",
			got, es.Labels, name)
	}

	// An informer sees the status the appliance will write.
	updates := make(chan *corev1.Service, 16)
	stop := make(chan struct{})
	factory := informers.NewSharedInformerFactoryWithOptions(cs, 0, informers.WithNamespace(ns))
	inf := factory.Core().V1().Services().Informer()
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		UpdateFunc: func(_, obj any) {
			select {
			case updates <- obj.(*corev1.Service):
			case <-stop:
			}
		},
	}); err != nil {
		t.Fatal(err)
	}
	factory.Start(stop)
	defer factory.Shutdown() // waits for the informer's goroutines
	defer close(stop)
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		t.Fatal("service informer did not sync")
	}
	svc.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "203.0.113.10"}}
	if _, err := cs.CoreV1().Services(ns).UpdateStatus(ctx, svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitUpdate(t, updates, func(s *corev1.Service) bool {
		ing := s.Status.LoadBalancer.Ingress
		return len(ing) == 1 && ing[0].IP == "203.0.113.10"
	})

	// With the apiserver gone requests fail; when it is back the same client and the same
	// informer work again, and what was stored is still there.
	c.StopAPIServer(t)
	if _, err := cs.CoreV1().Services(ns).Get(ctx, name, metav1.GetOptions{}); err == nil {
		t.Fatal("service read with the apiserver stopped")
	}
	c.StartAPIServer(t)
	svc, err = cs.CoreV1().Services(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if ing := svc.Status.LoadBalancer.Ingress; len(ing) != 1 || ing[0].IP != "203.0.113.10" {
		t.Errorf("after restart, status ingress %v, want 203.0.113.10", ing)
	}
	svc.Labels = map[string]string{"restarted": "yes"}
	if _, err := cs.CoreV1().Services(ns).Update(ctx, svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitUpdate(t, updates, func(s *corev1.Service) bool { return s.Labels["restarted"] == "yes" })
}

// waitUpdate waits until the informer delivers a Service for which ok is true.
func waitUpdate(t *testing.T, updates <-chan *corev1.Service, ok func(*corev1.Service) bool) {
	t.Helper()
	timeout := time.After(eventTimeout)
	for {
		select {
		case s := <-updates:
			if ok(s) {
				return
			}
		case <-timeout:
			t.Fatalf("informer delivered no matching update in %v", eventTimeout)
		}
	}
}

// TestClusterNetns runs the apiserver in a lab node listening on its link address: the
// test's client reaches it through the node's namespace, and another node over the link
// with the CA and token of the kubeconfig.
func TestClusterNetns(t *testing.T) {
	lab := topo.UpT(t, "testdata/kube.clab.yml")
	c := StartWith(t, Options{Netns: lab.Namespace("api"), Address: netip.MustParseAddr("192.0.2.1")})
	cs := c.Client(t)
	if _, err := cs.CoreV1().Namespaces().Create(t.Context(),
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "from-test"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	kc, err := clientcmd.LoadFromFile(c.Kubeconfig())
	if err != nil {
		t.Fatal(err)
	}
	cluster := kc.Clusters[kc.Contexts[kc.CurrentContext].Cluster]
	ca := filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(ca, cluster.CertificateAuthorityData, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := lab.Exec(t.Context(), "client", "curl", "-sS", "--fail", "--cacert", ca,
		"-H", "Authorization: Bearer "+kc.AuthInfos[kc.Contexts[kc.CurrentContext].AuthInfo].Token,
		cluster.Server+"/api/v1/namespaces/from-test")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if !strings.Contains(string(out), `"name": "from-test"`) {
		t.Errorf("namespace from the client node:\n%s", out)
	}
}
