package topo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

const (
	// netnsDir is where iproute2 keeps the names of network namespaces.
	netnsDir = "/var/run/netns"
	// waitDelay bounds how long a command that has exited is waited for while a process it
	// left behind still holds its output.
	waitDelay = time.Second
	// stopTimeout is how long Down lets a process handle SIGTERM before SIGKILL.
	stopTimeout = 5 * time.Second
)

// Options tune Up and Attach.
type Options struct {
	// Prefix is put before each node name to name the node's namespace; "<topology name>-"
	// if empty. Labs that exist at the same time need different prefixes.
	Prefix string
}

// Lab is a topology realized as network namespaces, one per node. Its methods may be called
// from several goroutines.
type Lab struct {
	topo   *Topology
	prefix string

	mu     sync.Mutex
	owned  []string // namespaces that Down deletes
	procs  []*Proc
	closed bool
}

func newLab(t *Topology, opt Options) *Lab {
	prefix := opt.Prefix
	if prefix == "" {
		prefix = t.Name + "-"
	}
	return &Lab{topo: t, prefix: prefix}
}

// Up realizes t: one namespace per node with lo up, one veth pair per link with each end
// named and up in its node's namespace, then each node's exec commands through sh -c,
// nodes in name order. An exec command must finish and leave no process holding its
// output; start long-running processes with Lab.Start.
//
// Up fails without changing anything if a namespace of the lab exists already. On any
// other failure it deletes what it made, and its error names the step that failed.
func Up(ctx context.Context, t *Topology, opt Options) (*Lab, error) {
	l := newLab(t, opt)
	nodes := slices.Sorted(maps.Keys(t.Nodes))
	for _, n := range nodes {
		if ns := l.Namespace(n); exists(ns) {
			return nil, fmt.Errorf("topo: up %s: namespace %s exists already", t.Name, ns)
		}
	}
	if err := l.up(ctx, nodes); err != nil {
		return nil, errors.Join(fmt.Errorf("topo: up %s: %w", t.Name, err), l.Down())
	}
	return l, nil
}

func (l *Lab) up(ctx context.Context, nodes []string) error {
	for _, n := range nodes {
		ns := l.Namespace(n)
		if _, err := ip(ctx, "netns", "add", ns); err != nil {
			return fmt.Errorf("add namespace of node %s: %w", n, err)
		}
		l.owned = append(l.owned, ns)
		if _, err := ip(ctx, "-n", ns, "link", "set", "lo", "up"); err != nil {
			return fmt.Errorf("set lo up on node %s: %w", n, err)
		}
	}
	for _, k := range l.topo.Links {
		// Both ends are made right in their namespaces: nothing appears in the root
		// namespace, so names can't collide there and a crash leaves nothing behind in it.
		_, err := ip(ctx, "link", "add", k.A.Iface, "netns", l.Namespace(k.A.Node),
			"type", "veth", "peer", "name", k.B.Iface, "netns", l.Namespace(k.B.Node))
		if err != nil {
			return fmt.Errorf("add link %s %s: %w", k.A, k.B, err)
		}
		for _, e := range []Endpoint{k.A, k.B} {
			if _, err := ip(ctx, "-n", l.Namespace(e.Node), "link", "set", e.Iface, "up"); err != nil {
				return fmt.Errorf("set %s up: %w", e, err)
			}
		}
	}
	for _, n := range nodes {
		for _, c := range l.topo.Nodes[n].Exec {
			if _, err := ip(ctx, "netns", "exec", l.Namespace(n), "sh", "-c", c); err != nil {
				return fmt.Errorf("exec on node %s: %w", n, err)
			}
		}
	}
	return nil
}

// Attach returns the lab of t with the namespaces that Up made under opt, maybe in another
// process: Exec and Start run in them, and Down deletes those of them that exist.
func Attach(t *Topology, opt Options) *Lab {
	l := newLab(t, opt)
	for _, n := range slices.Sorted(maps.Keys(t.Nodes)) {
		l.owned = append(l.owned, l.Namespace(n))
	}
	return l
}

// Namespace returns the name of node's network namespace, as listed by ip netns, or "" if
// the topology has no such node.
func (l *Lab) Namespace(node string) string {
	if _, ok := l.topo.Nodes[node]; !ok {
		return ""
	}
	return l.prefix + node
}

// Exec runs argv in node's namespace to completion and returns its combined output. Its
// error names the command and includes the output.
func (l *Lab) Exec(ctx context.Context, node string, argv ...string) ([]byte, error) {
	ns := l.Namespace(node)
	if ns == "" {
		return nil, fmt.Errorf("topo: exec %q: no node %s", argv, node)
	}
	out, err := ip(ctx, append([]string{"netns", "exec", ns}, argv...)...)
	if err != nil {
		return out, fmt.Errorf("topo: node %s: %w", node, err)
	}
	return out, nil
}

// Start starts argv in node's namespace and returns at once. The process is killed if ctx
// is done before it exits, and Down stops it if it is still running then.
func (l *Lab) Start(ctx context.Context, node string, argv ...string) (*Proc, error) {
	ns := l.Namespace(node)
	if ns == "" || len(argv) == 0 {
		return nil, fmt.Errorf("topo: start %q on node %q: want a node of the lab and a command", argv, node)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, fmt.Errorf("topo: start %q on node %s: lab is down", argv, node)
	}
	p, err := start(ctx, fmt.Sprintf("%q on node %s", argv, node), append([]string{"ip", "netns", "exec", ns}, argv...))
	if err != nil {
		return nil, err
	}
	l.procs = append(l.procs, p)
	return p, nil
}

// Down stops every process started by Start that still runs (SIGTERM, then SIGKILL after
// a few seconds) and waits for each, then deletes the lab's namespaces, which deletes its
// veth pairs. Calling it again does nothing.
func (l *Lab) Down() error {
	l.mu.Lock()
	procs, owned := l.procs, l.owned
	l.procs, l.owned, l.closed = nil, nil, true
	l.mu.Unlock()

	errs := make([]error, len(procs), len(procs)+len(owned))
	var wg sync.WaitGroup
	for i, p := range procs {
		wg.Go(func() { errs[i] = p.Stop(stopTimeout) })
	}
	wg.Wait()
	for _, ns := range owned {
		if !exists(ns) {
			continue
		}
		if _, err := ip(context.Background(), "netns", "del", ns); err != nil {
			errs = append(errs, fmt.Errorf("topo: down %s: %w", l.topo.Name, err))
		}
	}
	return errors.Join(errs...)
}

// exists reports whether the namespace named ns exists.
func exists(ns string) bool {
	_, err := os.Stat(filepath.Join(netnsDir, ns))
	return err == nil
}

// ip runs iproute2's ip with args and returns its combined output. Its error names the
// command and includes the output.
func ip(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "ip", args...)
	cmd.WaitDelay = waitDelay
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("%s: %w: %s", strings.Join(cmd.Args, " "), err, bytes.TrimSpace(out))
	}
	return out, nil
}
