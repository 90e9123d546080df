package kube

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"reflect"
	"slices"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"
)

// Options configure a Watcher.
type Options struct {
	// Selector chooses the Services the appliance serves.
	Selector Selector
	// OnChange is called after each change of what the next Snapshot returns, from an
	// informer's goroutine. It must never block (like control.Daemon.RoutesChanged): it
	// should only note that work is due. Nil for none.
	OnChange func()
	// Events, if not nil, records Warning Events on Services about their bad input.
	Events EventRecorder
	// Log is the component's logger; slog.Default() if nil.
	Log *slog.Logger
}

// Watcher watches Services, EndpointSlices and Nodes of one cluster with client-go shared
// informers and keeps what a Snapshot needs. Make one with NewWatcher and start it with Run.
type Watcher struct {
	conn    *Conn
	opt     Options
	log     *slog.Logger
	factory informers.SharedInformerFactory
	synced  []cache.InformerSynced

	mu       sync.Mutex
	services map[ServiceKey]Service          // selected Services, without endpoints
	slices   map[ServiceKey]map[string]slice // by the Service they name, then slice name
	sliceOf  map[string]ServiceKey           // "namespace/name" of a slice -> its Service
	bad      map[string]string               // "kind namespace/name" -> problem last logged
	nodes    map[string]Node                 // by name
	ready    bool                            // every informer has synced
	gen      uint64                          // bumped on every change
	snap     *Snapshot                       // built at snapGen
	snapGen  uint64
}

// NewWatcher returns a Watcher of conn's cluster. It sends no request before Run.
func NewWatcher(conn *Conn, opt Options) (*Watcher, error) {
	if opt.Log == nil {
		opt.Log = slog.Default()
	}
	w := &Watcher{
		conn:     conn,
		opt:      opt,
		log:      opt.Log.With("component", "kube", "cluster", conn.Name()),
		services: map[ServiceKey]Service{},
		slices:   map[ServiceKey]map[string]slice{},
		sliceOf:  map[string]ServiceKey{},
		bad:      map[string]string{},
		nodes:    map[string]Node{},
	}
	// No periodic resync: the state is rebuilt from the caches, which a resync would not
	// change. managedFields are dropped: nothing here reads them and they are often half
	// an object's size.
	w.factory = informers.NewSharedInformerFactoryWithOptions(conn.Client(), 0,
		informers.WithTransform(dropManagedFields))
	for _, k := range []struct {
		kind string
		inf  cache.SharedIndexInformer
		h    cache.ResourceEventHandler
	}{
		{"Service", w.factory.Core().V1().Services().Informer(), cache.ResourceEventHandlerFuncs{
			AddFunc: func(obj any) { w.service(obj) }, UpdateFunc: w.update(w.service), DeleteFunc: w.deleteService,
		}},
		{"EndpointSlice", w.factory.Discovery().V1().EndpointSlices().Informer(), cache.ResourceEventHandlerFuncs{
			AddFunc: func(obj any) { w.slice(obj) }, UpdateFunc: w.update(w.slice), DeleteFunc: w.deleteSlice,
		}},
		{"Node", w.factory.Core().V1().Nodes().Informer(), cache.ResourceEventHandlerFuncs{
			AddFunc: func(obj any) { w.node(obj) }, UpdateFunc: w.update(w.node), DeleteFunc: w.deleteNode,
		}},
	} {
		if _, err := k.inf.AddEventHandler(k.h); err != nil {
			return nil, fmt.Errorf("kubernetes: cluster %s: %s informer: %w", conn.Name(), k.kind, err)
		}
		kind := k.kind
		if err := k.inf.SetWatchErrorHandler(func(_ *cache.Reflector, err error) {
			// The reflector lists and watches again with backoff after this returns.
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				w.log.Debug("watch closed; watching again", "kind", kind, "err", err)
				return
			}
			w.log.Warn("list or watch failed; retrying with backoff", "kind", kind, "err", err)
		}); err != nil {
			return nil, fmt.Errorf("kubernetes: cluster %s: %s informer: %w", conn.Name(), k.kind, err)
		}
		w.synced = append(w.synced, k.inf.HasSynced)
	}
	return w, nil
}

// Run starts the informers, marks the Watcher synced once each has listed its kind (and
// calls OnChange then), and returns nil when ctx ends, after the informers' goroutines have
// ended. It returns an error only if ctx ends before the first sync. Call it once.
func (w *Watcher) Run(ctx context.Context) error {
	w.factory.Start(ctx.Done())
	defer w.factory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), w.synced...) {
		return fmt.Errorf("kubernetes: cluster %s: informers not synced: %w", w.conn.Name(), ctx.Err())
	}
	w.mu.Lock()
	w.ready = true
	w.gen++
	n := len(w.services)
	w.mu.Unlock()
	w.log.Info("informers synced", "services", n)
	w.changed()
	<-ctx.Done()
	return nil
}

// HasSynced reports whether every informer has listed its kind once. It stays true when
// the apiserver goes away.
func (w *Watcher) HasSynced() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.ready
}

// Conn returns the Watcher's connection, for its state.
func (w *Watcher) Conn() *Conn { return w.conn }

// Snapshot returns the current state. It is built anew after a change and shared until the
// next one; callers must not modify it.
func (w *Watcher) Snapshot() *Snapshot {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.snap != nil && w.snapGen == w.gen {
		return w.snap
	}
	s := &Snapshot{Cluster: w.conn.Name(), Synced: w.ready}
	for _, svc := range w.services {
		bySlice := w.slices[svc.Key]
		names := make([]string, 0, len(bySlice))
		for name := range bySlice {
			names = append(names, name)
		}
		slices.Sort(names)
		svc.Endpoints = nil
		for _, name := range names {
			svc.Endpoints = append(svc.Endpoints, bySlice[name].endpoints...)
		}
		s.Services = append(s.Services, svc)
	}
	slices.SortFunc(s.Services, func(a, b Service) int { return strings.Compare(a.Key.String(), b.Key.String()) })
	for _, n := range w.nodes {
		s.Nodes = append(s.Nodes, n)
	}
	slices.SortFunc(s.Nodes, func(a, b Node) int { return strings.Compare(a.Name, b.Name) })
	w.snap, w.snapGen = s, w.gen
	return s
}

func (w *Watcher) changed() {
	if w.opt.OnChange != nil {
		w.opt.OnChange()
	}
}

// update adapts an add handler to updates, ignoring resyncs of an unchanged object.
func (w *Watcher) update(add func(any)) func(old, obj any) {
	return func(old, obj any) {
		o, err1 := meta.Accessor(old)
		n, err2 := meta.Accessor(obj)
		if err1 == nil && err2 == nil && o.GetResourceVersion() == n.GetResourceVersion() {
			return
		}
		add(obj)
	}
}

// set stores v under k in m and reports whether that changed m. Callers hold w.mu.
func set[K comparable, V any](m map[K]V, k K, v V) bool {
	if old, ok := m[k]; ok && reflect.DeepEqual(old, v) {
		return false
	}
	m[k] = v
	return true
}

// del deletes k from m and reports whether it was there. Callers hold w.mu.
func del[K comparable, V any](m map[K]V, k K) bool {
	_, ok := m[k]
	delete(m, k)
	return ok
}

// commit ends a handler: if it changed something the Snapshot is due again and OnChange
// is called, outside w.mu.
func (w *Watcher) commit(changed bool) {
	if changed {
		w.gen++
	}
	w.mu.Unlock()
	if changed {
		w.changed()
	}
}

// problem logs a problem of an object once, until it changes or goes away (msg ""). It
// reports whether msg is new. Callers hold w.mu.
func (w *Watcher) problem(id, msg string) bool {
	if w.bad[id] == msg {
		return false
	}
	if msg == "" {
		delete(w.bad, id)
		return false
	}
	w.bad[id] = msg
	w.log.Warn("skipped bad input", "object", id, "err", msg)
	return true
}

func (w *Watcher) service(obj any) {
	svc, ok := obj.(*corev1.Service)
	if !ok {
		return
	}
	key := ServiceKey{svc.Namespace, svc.Name}
	w.mu.Lock()
	if !w.opt.Selector.Selects(svc) {
		w.commit(del(w.services, key))
		return
	}
	w.commit(set(w.services, key, serviceFrom(svc)))
}

func (w *Watcher) deleteService(obj any) {
	ns, name, ok := keyOf(obj)
	if !ok {
		return
	}
	w.mu.Lock()
	w.commit(del(w.services, ServiceKey{ns, name}))
}

func (w *Watcher) slice(obj any) {
	es, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return
	}
	id := es.Namespace + "/" + es.Name
	s, problems, err := sliceFrom(es)
	w.mu.Lock()
	oldKey, had := w.sliceOf[id]
	old := w.slices[oldKey][es.Name]
	if err != nil {
		w.problem("EndpointSlice "+id, err.Error())
		w.commit(w.dropSlice(id, es.Name))
		return
	}
	if w.problem("EndpointSlice "+id, strings.Join(problems, "; ")) {
		if svc, ok := w.services[s.service]; ok && w.opt.Events != nil {
			for _, p := range problems {
				w.opt.Events.Event(svc.Key, svc.UID, EventWarning, ReasonBadEndpoint, p)
			}
		}
	}
	if had && oldKey == s.service && reflect.DeepEqual(old, s) {
		w.commit(false)
		return
	}
	w.dropSlice(id, es.Name)
	if w.slices[s.service] == nil {
		w.slices[s.service] = map[string]slice{}
	}
	w.slices[s.service][es.Name] = s
	w.sliceOf[id] = s.service
	w.commit(true)
}

// dropSlice removes the slice id of name from the Service it was under and reports
// whether there was one. Callers hold w.mu.
func (w *Watcher) dropSlice(id, name string) bool {
	key, ok := w.sliceOf[id]
	if !ok {
		return false
	}
	delete(w.sliceOf, id)
	delete(w.slices[key], name)
	if len(w.slices[key]) == 0 {
		delete(w.slices, key)
	}
	return true
}

func (w *Watcher) deleteSlice(obj any) {
	ns, name, ok := keyOf(obj)
	if !ok {
		return
	}
	id := ns + "/" + name
	w.mu.Lock()
	w.problem("EndpointSlice "+id, "")
	w.commit(w.dropSlice(id, name))
}

func (w *Watcher) node(obj any) {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return
	}
	node, err := nodeFrom(n)
	w.mu.Lock()
	if err != nil {
		w.problem("Node "+n.Name, err.Error())
		w.commit(del(w.nodes, n.Name))
		return
	}
	w.problem("Node "+n.Name, "")
	w.commit(set(w.nodes, n.Name, node))
}

func (w *Watcher) deleteNode(obj any) {
	_, name, ok := keyOf(obj)
	if !ok {
		return
	}
	w.mu.Lock()
	w.problem("Node "+name, "")
	w.commit(del(w.nodes, name))
}

// keyOf returns the namespace and name of a deleted object, which may be a
// cache.DeletedFinalStateUnknown when the informer missed the deletion and learned of it
// by listing again.
func keyOf(obj any) (ns, name string, ok bool) {
	key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj)
	if err != nil {
		return "", "", false
	}
	ns, name, err = cache.SplitMetaNamespaceKey(key)
	return ns, name, err == nil
}

// dropManagedFields is the informers' transform.
func dropManagedFields(obj any) (any, error) {
	if m, err := meta.Accessor(obj); err == nil {
		m.SetManagedFields(nil)
	}
	return obj, nil
}
