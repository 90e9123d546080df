package control

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"portico.dev/appliance/control/ipam"
	"portico.dev/appliance/control/kube"
)

// Reasons of the Events the daemon records on Services.
const (
	// ReasonRefused: the Service gets no address (IPAM's reason).
	ReasonRefused = "AddressRefused"
	// ReasonNotServed: the Service has addresses, but something of it is
	// not served (a port, a family, its backends); the message says what.
	ReasonNotServed = "NotServed"
)

// statusTimeout bounds one status write; statusRetry is how long after a
// failed write the status writer tries again when nothing wakes it before.
const (
	statusTimeout = 10 * time.Second
	statusRetry   = 5 * time.Second
)

// LeaseStore keeps the address leases (the store's leases bucket in
// production).
type LeaseStore interface {
	// LoadLeases returns every stored lease; none is an empty slice, not an
	// error.
	LoadLeases() ([]ipam.Lease, error)
	// SaveLeases makes the stored leases exactly leases, in one
	// transaction: on nil the change is on disk, on error nothing changed.
	SaveLeases(leases []ipam.Lease) error
}

// StatusSink writes what the daemon decided back to the clusters.
type StatusSink interface {
	// SetIngress makes status.loadBalancer.ingress of the Service key (of
	// UID uid) exactly ips, in order; no ips clears it. It may wait on the
	// network until ctx ends; after an error the status is as before or
	// written, and a later call with the same arguments finishes the work.
	// The daemon calls it from one goroutine of its own, never from Run's.
	SetIngress(ctx context.Context, key ipam.Key, uid types.UID, ips []netip.Addr) error
	// Event records a Warning Event with reason and message on the Service
	// key of UID uid. It never blocks.
	Event(key ipam.Key, uid types.UID, reason, message string)
}

// KubeInputs connect the daemon to Kubernetes clusters.
type KubeInputs struct {
	// Snapshots returns the current Snapshot of every configured cluster,
	// synced or not. It must not block.
	Snapshots func() []*kube.Snapshot
	// Pools are the address pools IPAM assigns from.
	Pools  []ipam.Pool
	Leases LeaseStore
	Status StatusSink
}

// KubernetesChanged tells Run that a cluster's Snapshot changed. It never
// blocks.
func (d *Daemon) KubernetesChanged() {
	d.mu.Lock()
	d.kubeChanged = true
	d.mu.Unlock()
	select {
	case d.wakeChan() <- struct{}{}:
	default:
	}
}

// kubeState is what Run keeps of the clusters between applies.
type kubeState struct {
	in  *KubeInputs
	log *slog.Logger
	// leases are the stored leases, once every cluster has synced and
	// Reconcile merged them with the Services' statuses (reconciled).
	leases     []ipam.Lease
	reconciled bool
	// snaps and result are those of the last step, for statuses and
	// Events after the apply.
	snaps  []*kube.Snapshot
	result ipam.Result
	status *statusWriter
	// evented are the Service warnings of the last applied compile: each
	// is recorded as an Event when it first appears, not again while it
	// holds.
	evented map[Warning]bool
}

// step returns the Kubernetes inputs of the next compile. Until every
// cluster has synced once it returns none and leaves the leases alone: a
// cluster not listed yet would look as if its Services were gone. On the
// first sync it reconciles the stored leases with the statuses found; then
// it allocates, and saves changed leases before any status can name them.
func (k *kubeState) step() (Kubernetes, error) {
	snaps := k.in.Snapshots()
	for _, s := range snaps {
		if !s.Synced {
			return Kubernetes{}, nil
		}
	}
	if !k.reconciled {
		stored, err := k.in.Leases.LoadLeases()
		if err != nil {
			return Kubernetes{}, err
		}
		var observed []ipam.Observed
		complete := map[string]bool{}
		for _, s := range snaps {
			complete[s.Cluster] = true
		}
		for _, svc := range IPAMServices(snaps) {
			observed = append(observed, ipam.Observed{Service: svc, Ingress: k.ingress(snaps, svc.Key)})
		}
		r := ipam.Reconcile(k.in.Pools, stored, observed, complete)
		for _, rep := range r.Reports {
			k.log.Warn("lease reconciled", "service", rep.Service.String(), "address", rep.Address, "reason", rep.Reason)
		}
		if err := k.save(stored, r.Leases); err != nil {
			return Kubernetes{}, err
		}
		k.leases, k.reconciled = r.Leases, true
	}
	res := ipam.Allocate(k.in.Pools, k.leases, IPAMServices(snaps))
	if err := k.save(k.leases, res.Leases); err != nil {
		return Kubernetes{}, err
	}
	k.leases, k.snaps, k.result = res.Leases, snaps, res
	return Kubernetes{Clusters: snaps, Addresses: res}, nil
}

func (k *kubeState) save(old, leases []ipam.Lease) error {
	if slices.Equal(old, leases) {
		return nil
	}
	if err := k.in.Leases.SaveLeases(leases); err != nil {
		return fmt.Errorf("kubernetes: save leases: %w", err)
	}
	return nil
}

// ingress returns the status addresses of the Service key in snaps.
func (k *kubeState) ingress(snaps []*kube.Snapshot, key ipam.Key) []netip.Addr {
	svc, ok := service(snaps, key)
	if !ok {
		return nil
	}
	return svc.Ingress
}

func service(snaps []*kube.Snapshot, key ipam.Key) (kube.Service, bool) {
	for _, s := range snaps {
		if s.Cluster == key.Cluster {
			return s.Service(kube.ServiceKey{Namespace: key.Namespace, Name: key.Name})
		}
	}
	return kube.Service{}, false
}

// applied is called after a successful apply of the last step's result
// with the compile's warnings: every Service whose status differs from its
// addresses (none for a refused one) gets a write, and each warning about
// a Service that the last applied compile did not have an Event.
func (k *kubeState) applied(warns []Warning) {
	if k.snaps == nil {
		return
	}
	var writes []statusWrite
	for _, d := range k.result.Decisions {
		svc, ok := service(k.snaps, d.Service)
		if !ok || slices.Equal(svc.Ingress, d.Addresses) {
			continue
		}
		writes = append(writes, statusWrite{key: d.Service, uid: svc.UID, ips: d.Addresses})
	}
	k.status.set(writes)
	now := map[Warning]bool{}
	for _, w := range warns {
		if w.Service == (ipam.Key{}) {
			continue
		}
		now[w] = true
		if k.evented[w] {
			continue
		}
		svc, ok := service(k.snaps, w.Service)
		if !ok {
			continue
		}
		reason := ReasonNotServed
		if d, ok := k.result.Decision(w.Service); ok && d.Refused() {
			reason = ReasonRefused
		}
		k.in.Status.Event(w.Service, svc.UID, reason, w.Message)
	}
	k.evented = now
}

// statusWrite is one status the writer is to make true.
type statusWrite struct {
	key ipam.Key
	uid types.UID
	ips []netip.Addr
}

// statusWriter writes statuses in a goroutine of its own, so that an
// apiserver that is slow or away never holds up Run: it takes the latest
// set of writes (a newer set replaces one not yet done), and after a
// failure tries the failed ones again on the next set or after
// statusRetry.
type statusWriter struct {
	sink StatusSink
	log  *slog.Logger
	mu   sync.Mutex
	next []statusWrite
	have bool
	wake chan struct{}
}

func newStatusWriter(sink StatusSink, log *slog.Logger) *statusWriter {
	return &statusWriter{sink: sink, log: log, wake: make(chan struct{}, 1)}
}

// set replaces the pending writes. It never blocks.
func (s *statusWriter) set(writes []statusWrite) {
	s.mu.Lock()
	s.next, s.have = writes, true
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// run writes until ctx ends.
func (s *statusWriter) run(ctx context.Context) {
	retry := time.NewTimer(statusRetry)
	retry.Stop()
	defer retry.Stop()
	var failed []statusWrite
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.wake:
		case <-retry.C:
		}
		s.mu.Lock()
		todo, fresh := s.next, s.have
		s.next, s.have = nil, false
		s.mu.Unlock()
		if !fresh {
			todo = failed
		}
		failed = nil
		for _, w := range todo {
			wctx, cancel := context.WithTimeout(ctx, statusTimeout)
			err := s.sink.SetIngress(wctx, w.key, w.uid, w.ips)
			cancel()
			if err != nil {
				s.log.Warn("status write failed; will retry", "service", w.key.String(), "err", err)
				failed = append(failed, w)
			}
		}
		if len(failed) > 0 {
			retry.Reset(statusRetry)
		}
	}
}
