package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"

	"k8s.io/apimachinery/pkg/types"
	"portico.dev/appliance/control"
	"portico.dev/appliance/control/config"
	"portico.dev/appliance/control/ipam"
	"portico.dev/appliance/control/kube"
	"portico.dev/appliance/store"
)

// clusters are the connections to the configured Kubernetes clusters.
type clusters struct {
	watchers  []*kube.Watcher
	status    map[string]*kube.StatusWriter
	recorders map[string]*kube.Recorder
}

// openClusters opens a Conn, Watcher, StatusWriter and Recorder per
// configured cluster; changed is each Watcher's OnChange. It sends no
// request: run starts the watchers.
func openClusters(c config.Kubernetes, log *slog.Logger, changed func()) (*clusters, error) {
	cs := &clusters{status: map[string]*kube.StatusWriter{}, recorders: map[string]*kube.Recorder{}}
	sel := kube.Selector{Class: c.LoadBalancerClass, DefaultClass: c.DefaultClass}
	for i, cl := range c.Clusters {
		conn, err := kube.Open(cl.Name, cl.Kubeconfig, log)
		if err != nil {
			return nil, fmt.Errorf("kubernetes.clusters[%d] (%s): %w", i, cl.Name, err)
		}
		rec := kube.NewRecorder(conn, "portico-appliance", log)
		w, err := kube.NewWatcher(conn, kube.Options{Selector: sel, OnChange: changed, Events: rec, Log: log})
		if err != nil {
			rec.Shutdown()
			cs.close()
			return nil, err
		}
		cs.watchers = append(cs.watchers, w)
		cs.status[cl.Name] = kube.NewStatusWriter(conn, log)
		cs.recorders[cl.Name] = rec
	}
	return cs, nil
}

// run runs every Watcher until ctx ends, and returns when all have ended.
func (cs *clusters) run(ctx context.Context, log *slog.Logger) {
	var wg sync.WaitGroup
	for _, w := range cs.watchers {
		wg.Go(func() {
			if err := w.Run(ctx); err != nil {
				log.Warn("kubernetes watcher ended", "cluster", w.Conn().Name(), "err", err)
			}
		})
	}
	wg.Wait()
}

func (cs *clusters) close() {
	for _, r := range cs.recorders {
		r.Shutdown()
	}
}

// Snapshots returns each cluster's current Snapshot.
func (cs *clusters) Snapshots() []*kube.Snapshot {
	out := make([]*kube.Snapshot, len(cs.watchers))
	for i, w := range cs.watchers {
		out[i] = w.Snapshot()
	}
	return out
}

// SetIngress implements control.StatusSink.
func (cs *clusters) SetIngress(ctx context.Context, key ipam.Key, uid types.UID, ips []netip.Addr) error {
	w, ok := cs.status[key.Cluster]
	if !ok {
		return fmt.Errorf("kubernetes: no cluster %q", key.Cluster)
	}
	_, err := w.SetIngress(ctx, kube.ServiceKey{Namespace: key.Namespace, Name: key.Name}, uid, ips)
	return err
}

// Event implements control.StatusSink.
func (cs *clusters) Event(key ipam.Key, uid types.UID, reason, message string) {
	if r, ok := cs.recorders[key.Cluster]; ok {
		r.Event(kube.ServiceKey{Namespace: key.Namespace, Name: key.Name}, uid, kube.EventWarning, reason, message)
	}
}

// leaseStore is control.LeaseStore on the store's leases bucket.
type leaseStore struct{ st *store.Store }

func (l leaseStore) LoadLeases() ([]ipam.Lease, error) {
	stored, err := l.st.LoadLeases()
	if err != nil {
		return nil, err
	}
	return ipam.DecodeLeases(stored)
}

// SaveLeases reads the stored set to compute the change, then writes it in
// one transaction; only the daemon's goroutine writes leases, so nothing
// changes between the two.
func (l leaseStore) SaveLeases(leases []ipam.Lease) error {
	old, err := l.st.LoadLeases()
	if err != nil {
		return err
	}
	put, del := ipam.EncodeLeases(old, leases)
	return l.st.SaveLeases(put, del)
}

// kubeInputs returns the daemon's Kubernetes inputs.
func kubeInputs(cfg *config.Config, cs *clusters, st *store.Store) (*control.KubeInputs, error) {
	pools, err := ipam.PoolsFromConfig(cfg.Pools)
	if err != nil {
		return nil, err
	}
	return &control.KubeInputs{Snapshots: cs.Snapshots, Pools: pools, Leases: leaseStore{st}, Status: cs}, nil
}
