package kube

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// Conn is a connection to one cluster's apiserver: a clientset whose requests also tell the
// Conn whether the apiserver answers. A Watcher, a StatusWriter and a Recorder of one
// cluster share it.
type Conn struct {
	name   string
	client kubernetes.Interface
	log    *slog.Logger

	mu    sync.Mutex
	state ConnState
}

// ConnState is what the Conn last saw of the apiserver, for logs and status.
type ConnState struct {
	// Connected is true while the apiserver answers; false before the first answer and
	// after a request failed to reach it.
	Connected bool
	// Since is when Connected last changed (zero before the first request).
	Since time.Time
	// LastError is the last failure to reach the apiserver, empty if none.
	LastError string
}

// Open reads the kubeconfig file at path and returns a Conn to its current context's
// apiserver. It sends no request. name is the cluster's name in the configuration, used in
// logs.
func Open(name, path string, log *slog.Logger) (*Conn, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		return nil, fmt.Errorf("kubernetes: cluster %s: kubeconfig %s: %w", name, path, err)
	}
	return OpenConfig(name, cfg, log)
}

// OpenConfig is Open with a client configuration instead of a kubeconfig file. cfg is
// copied, not changed.
func OpenConfig(name string, cfg *rest.Config, log *slog.Logger) (*Conn, error) {
	c := &Conn{name: name, log: log.With("component", "kube", "cluster", name)}
	cfg = rest.CopyConfig(cfg)
	cfg.UserAgent = "portico-appliance"
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper { return &observer{rt: rt, c: c} })
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes: cluster %s: client: %w", name, err)
	}
	c.client = cs
	return c, nil
}

// Name returns the cluster's name.
func (c *Conn) Name() string { return c.name }

// Client returns the clientset.
func (c *Conn) Client() kubernetes.Interface { return c.client }

// State returns what the Conn last saw of the apiserver.
func (c *Conn) State() ConnState {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state
}

// saw records the outcome of one request: err nil means the apiserver answered.
func (c *Conn) saw(err error) {
	c.mu.Lock()
	was := c.state
	up := err == nil
	if up != was.Connected || was.Since.IsZero() {
		c.state.Connected = up
		c.state.Since = time.Now()
	}
	if err != nil {
		c.state.LastError = err.Error()
	}
	now := c.state
	c.mu.Unlock()
	switch {
	case up && (!was.Connected || was.Since.IsZero()):
		c.log.Info("apiserver connected")
	case !up && (was.Connected || was.Since.IsZero()):
		c.log.Warn("apiserver unreachable; client-go retries with backoff", "err", now.LastError)
	}
}

// observer reports each request's outcome to its Conn. A request the caller cancelled says
// nothing about the apiserver; an answer of 5xx says it is there but failing.
type observer struct {
	rt http.RoundTripper
	c  *Conn
}

func (o *observer) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := o.rt.RoundTrip(req)
	switch {
	case err != nil && (errors.Is(err, context.Canceled) || req.Context().Err() != nil):
	case err != nil:
		o.c.saw(err)
	case resp.StatusCode >= 500:
		o.c.saw(fmt.Errorf("%s %s: %s", req.Method, req.URL.Path, resp.Status))
	default:
		o.c.saw(nil)
	}
	return resp, err
}
