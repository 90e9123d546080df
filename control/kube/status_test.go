package kube_test

import (
	"net/netip"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"portico.dev/appliance/control/kube"
)

// TestStatusAndEvents writes a Service's status.loadBalancer.ingress through the status
// subresource and reads it back with another client: a write happens only when the status
// differs (the resourceVersion stays when it does not), clearing empties it, a replaced
// Service is refused. An Event recorded on the Service is in the Events API.
func TestStatusAndEvents(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	svc := e.createService(t, lbService("web", class))
	key := kube.ServiceKey{Namespace: ns, Name: "web"}
	sw := kube.NewStatusWriter(e.conn, e.log)

	read := func() (string, string) {
		t.Helper()
		s, err := e.cs.CoreV1().Services(ns).Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var ips []string
		for _, ing := range s.Status.LoadBalancer.Ingress {
			ips = append(ips, ing.IP)
		}
		return strings.Join(ips, ","), s.ResourceVersion
	}
	v4 := netip.MustParseAddr("203.0.113.10")
	v6 := netip.MustParseAddr("2001:db8::10")
	for _, step := range []struct {
		name        string
		ips         []netip.Addr
		clear       bool
		wantChanged bool
		want        string
	}{
		{name: "set", ips: []netip.Addr{v4}, wantChanged: true, want: "203.0.113.10"},
		{name: "same again", ips: []netip.Addr{v4}, wantChanged: false, want: "203.0.113.10"},
		{name: "dual-stack", ips: []netip.Addr{v4, v6}, wantChanged: true, want: "203.0.113.10,2001:db8::10"},
		{name: "dual-stack again", ips: []netip.Addr{v4, v6}, wantChanged: false, want: "203.0.113.10,2001:db8::10"},
		{name: "clear", clear: true, wantChanged: true, want: ""},
		{name: "clear again", clear: true, wantChanged: false, want: ""},
	} {
		_, rvBefore := read()
		var changed bool
		var err error
		if step.clear {
			changed, err = sw.ClearIngress(ctx, key, svc.UID)
		} else {
			changed, err = sw.SetIngress(ctx, key, svc.UID, step.ips)
		}
		if err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		got, rv := read()
		if changed != step.wantChanged || got != step.want || (rv != rvBefore) != step.wantChanged {
			t.Errorf("%s: changed %v, ingress %q, resourceVersion %s -> %s; want changed %v, ingress %q",
				step.name, changed, got, rvBefore, rv, step.wantChanged, step.want)
		}
	}

	// The same IP written by a client that gives no ipMode (the apiserver fills in VIP)
	// counts as equal: no write.
	s, err := e.cs.CoreV1().Services(ns).Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "203.0.113.10"}}
	if _, err := e.cs.CoreV1().Services(ns).UpdateStatus(ctx, s, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if changed, err := sw.SetIngress(ctx, key, svc.UID, []netip.Addr{v4}); err != nil || changed {
		t.Errorf("status of the same IP without ipMode: changed %v, err %v; want no write", changed, err)
	}

	if _, err := sw.SetIngress(ctx, key, "not-the-uid", []netip.Addr{v4}); err == nil || !strings.Contains(err.Error(), "replaced") {
		t.Errorf("set with another UID: err %v, want the service was replaced", err)
	}
	if _, err := sw.SetIngress(ctx, kube.ServiceKey{Namespace: ns, Name: "nosuch"}, "", []netip.Addr{v4}); err == nil {
		t.Error("set on a missing service: no error")
	}

	rec := kube.NewRecorder(e.conn, "portico-appliance", e.log)
	t.Cleanup(rec.Shutdown)
	rec.Event(key, svc.UID, kube.EventWarning, "NoFreeAddress", "pool public: no free address")
	rec.Event(key, svc.UID, kube.EventNormal, "AddressAssigned", "203.0.113.10 from pool public")
	for _, want := range []struct{ typ, reason, msg string }{
		{corev1.EventTypeWarning, "NoFreeAddress", "pool public: no free address"},
		{corev1.EventTypeNormal, "AddressAssigned", "203.0.113.10 from pool public"},
	} {
		ev := e.waitEvent(t, "web", want.reason)
		if ev.Type != want.typ || ev.Message != want.msg || ev.InvolvedObject.UID != svc.UID ||
			ev.InvolvedObject.Namespace != ns || ev.Source.Component != "portico-appliance" {
			t.Errorf("event %s: type %s, message %q, on %s/%s uid %s, source %q; want %s %q on uid %s from portico-appliance",
				want.reason, ev.Type, ev.Message, ev.InvolvedObject.Namespace, ev.InvolvedObject.Name, ev.InvolvedObject.UID,
				ev.Source.Component, want.typ, want.msg, svc.UID)
		}
	}
}
