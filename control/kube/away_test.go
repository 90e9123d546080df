package kube_test

import (
	"context"
	"log/slog"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"portico.dev/appliance/control/kube"
)

// waitConn polls the Conn's state until it is connected as want; the Conn has no
// notification of its own, and its state changes only with the watcher's requests.
func waitConn(t *testing.T, conn *kube.Conn, want bool) kube.ConnState {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		st := conn.State()
		if st.Connected == want {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("connection state %+v, want connected=%v within %v", st, want, waitTimeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestWatcherAPIServerAway stops the apiserver under a synced Watcher: the Snapshot stays
// as it was, no notification brings a Snapshot without the Service, and the connection is
// reported lost. Changes made when it is back (before the Watcher's backoff has run out)
// reach the Snapshot, and a Watcher started afresh sees the same state.
func TestWatcherAPIServerAway(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	e.createNode(t, "node1", true, internal("10.0.1.11"))
	e.createService(t, lbService("web", class))
	e.createService(t, lbService("gone", class))
	e.applySlice(t, endpointSlice("web", "web-1", discoveryv1.AddressTypeIPv4,
		ep{"10.244.1.5", "node1", true, false}, ep{"10.244.1.6", "node1", true, false}))

	// Every Snapshot an OnChange would make the daemon compile, from the stop on.
	var (
		mu       sync.Mutex
		away     bool
		seenAway []*kube.Snapshot
	)
	w := &watcher{changes: make(chan struct{}, 1)}
	var err error
	w.Watcher, err = kube.NewWatcher(e.conn, kube.Options{
		Selector: kube.Selector{Class: class},
		Log:      e.log,
		OnChange: func() {
			mu.Lock()
			if away {
				seenAway = append(seenAway, w.Snapshot())
			}
			mu.Unlock()
			select {
			case w.changes <- struct{}{}:
			default:
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(runCtx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	before := w.waitFor(t, "synced with web and gone", func(s *kube.Snapshot) bool {
		return s.Synced && endpoints(s, "web") == "10.244.1.5 10.244.1.6" && endpoints(s, "gone") == "" && len(s.Nodes) == 1
	})
	waitConn(t, e.conn, true)

	mu.Lock()
	away = true
	mu.Unlock()
	stopped := time.Now()
	e.c.StopAPIServer(t)
	st := waitConn(t, e.conn, false)
	t.Logf("apiserver stopped; connection lost noticed after %v: %s", time.Since(stopped).Round(time.Millisecond), st.LastError)
	if st.LastError == "" {
		t.Error("connection lost with no error recorded")
	}
	after := w.Snapshot()
	if d := cmp.Diff(before, after, cmpopts.EquateComparable(netip.Addr{})); d != "" {
		t.Errorf("snapshot changed with the apiserver away (-before +after):\n%s", d)
	}
	if !w.HasSynced() {
		t.Error("HasSynced false with the apiserver away")
	}

	e.c.StartAPIServer(t)
	// Changes made before the watcher is back: a scale-down, a deletion, a new Service.
	connected := e.conn.State().Connected
	e.applySlice(t, endpointSlice("web", "web-1", discoveryv1.AddressTypeIPv4, ep{"10.244.1.6", "node1", true, false}))
	if err := e.cs.CoreV1().Services(ns).Delete(ctx, "gone", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	e.createService(t, lbService("new", class))
	restarted := time.Now()
	t.Logf("changes made with the watcher connected=%v", connected)
	s := w.waitFor(t, "converged after the restart", func(s *kube.Snapshot) bool {
		return serviceNames(s) == ns+"/new "+ns+"/web" && endpoints(s, "web") == "10.244.1.6"
	})
	t.Logf("apiserver back to snapshot converged: %v", time.Since(restarted).Round(time.Millisecond))
	waitConn(t, e.conn, true)

	mu.Lock()
	for i, snap := range seenAway {
		if _, ok := snap.Service(kube.ServiceKey{Namespace: ns, Name: "web"}); !ok || len(snap.Nodes) != 1 || !snap.Synced {
			t.Errorf("notification %d while away or reconnecting: snapshot without web or node1:\n%s", i, dump(snap))
		}
	}
	mu.Unlock()

	// A restart of the appliance: a new Watcher over the same cluster converges to the same
	// Snapshot.
	conn2, err := kube.Open("test", e.c.Kubeconfig(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	e2 := *e
	e2.conn = conn2
	fresh := e2.watch(t, kube.Selector{Class: class}, nil, slog.New(slog.DiscardHandler))
	f := fresh.waitFor(t, "fresh watcher synced", func(s *kube.Snapshot) bool { return s.Synced })
	if d := cmp.Diff(s, f, cmpopts.EquateComparable(netip.Addr{})); d != "" {
		t.Errorf("a fresh watcher's snapshot differs (-running +fresh):\n%s", d)
	}
}
