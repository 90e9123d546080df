package control_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"portico.dev/appliance/control"
	"portico.dev/appliance/control/config"
	"portico.dev/appliance/control/ipam"
	"portico.dev/appliance/control/kube"
)

// fakeKube is the clusters, lease store and status sink of a daemon test:
// it records every lease save, status write and Event in one log, so
// that their order can be checked.
type fakeKube struct {
	mu         sync.Mutex
	snaps      []*kube.Snapshot
	leases     []ipam.Lease
	ops        []string
	failStatus bool
}

func (f *fakeKube) Snapshots() []*kube.Snapshot {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.snaps)
}

func (f *fakeKube) set(snaps ...*kube.Snapshot) {
	f.mu.Lock()
	f.snaps = snaps
	f.mu.Unlock()
}

func (f *fakeKube) LoadLeases() ([]ipam.Lease, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.leases), nil
}

func (f *fakeKube) SaveLeases(leases []ipam.Lease) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.leases = slices.Clone(leases)
	var s []string
	for _, l := range leases {
		s = append(s, l.Address.String()+" "+l.Service.Name)
	}
	f.ops = append(f.ops, fmt.Sprintf("save %v", s))
	return nil
}

func (f *fakeKube) SetIngress(_ context.Context, key ipam.Key, _ types.UID, ips []netip.Addr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failStatus {
		f.ops = append(f.ops, fmt.Sprintf("status %s %v failed", key.Name, ips))
		return errors.New("apiserver away")
	}
	f.ops = append(f.ops, fmt.Sprintf("status %s %v", key.Name, ips))
	return nil
}

func (f *fakeKube) Event(key ipam.Key, _ types.UID, reason, _ string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ops = append(f.ops, fmt.Sprintf("event %s %s", key.Name, reason))
}

func (f *fakeKube) take() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	ops := f.ops
	f.ops = nil
	return ops
}

func vipNames(r *running) []string {
	var out []string
	for _, s := range r.services() {
		out = append(out, s.Key.String())
	}
	return out
}

// TestDaemonKubernetes runs the daemon on fake clusters: nothing is
// allocated before the cluster synced; then leases are saved before any
// status names them, a status equal to the decision is not written again,
// a refused Service gets one Event while it stays refused, and a failed
// status write is retried without another wake-up.
func TestDaemonKubernetes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fk := &fakeKube{}
		web := service("web", "", "Cluster", []kube.Port{tcp("http", 80, 0)}, endpoint("s", "10.1.0.1", "n1", "ready", "http=8080"))
		fk.set(&kube.Snapshot{Cluster: "c1", Services: []kube.Service{web}})
		w := &world{}
		h := &fakeHealth{}
		d := &control.Daemon{Reconciler: newReconciler(w), Health: h, Log: discard(), Resync: time.Hour,
			Kubernetes: &control.KubeInputs{Snapshots: fk.Snapshots, Pools: k8sPools, Leases: fk, Status: fk}}
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- d.Run(ctx, parse(t, ""), nil, make(chan *config.Config)) }()
		defer func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run = %v", err)
			}
		}()
		r := &running{w: w, d: d}
		step := func(name string, want []string, vips ...string) {
			t.Helper()
			d.KubernetesChanged()
			synctest.Wait()
			if got := fk.take(); !slices.Equal(got, want) {
				t.Errorf("%s: ops %q, want %q", name, got, want)
			}
			if got := vipNames(r); !slices.Equal(got, vips) {
				t.Errorf("%s: VIPs %v, want %v", name, got, vips)
			}
		}
		step("not synced", nil)

		fk.set(&kube.Snapshot{Cluster: "c1", Synced: true, Services: []kube.Service{web}})
		step("synced", []string{"save [203.0.113.1 web]", "status web [203.0.113.1]"}, "203.0.113.1:80/tcp")

		web.Ingress = []netip.Addr{netip.MustParseAddr("203.0.113.1")}
		other := service("other", "203.0.113.1", "Cluster", []kube.Port{tcp("http", 81, 0)})
		fk.set(&kube.Snapshot{Cluster: "c1", Synced: true, Services: []kube.Service{other, web}})
		step("refused", []string{"event other AddressRefused"}, "203.0.113.1:80/tcp")
		step("still refused", nil, "203.0.113.1:80/tcp")

		fk.mu.Lock()
		fk.failStatus = true
		fk.mu.Unlock()
		web2 := service("web2", "", "Cluster", []kube.Port{tcp("http", 80, 0)}, endpoint("s", "10.1.0.2", "n1", "ready", "http=8080"))
		fk.set(&kube.Snapshot{Cluster: "c1", Synced: true, Services: []kube.Service{other, web, web2}})
		step("apiserver away", []string{"save [203.0.113.1 web 203.0.113.2 web2]", "status web2 [203.0.113.2] failed"},
			"203.0.113.1:80/tcp", "203.0.113.2:80/tcp")
		fk.mu.Lock()
		fk.failStatus = false
		fk.mu.Unlock()
		time.Sleep(time.Minute)
		synctest.Wait()
		if got, want := fk.take(), []string{"status web2 [203.0.113.2]"}; !slices.Equal(got, want) {
			t.Errorf("retry: ops %q, want %q", got, want)
		}
	})
}
