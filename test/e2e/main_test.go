// Package e2e runs the appliance binary end to end: a lab topology in
// network namespaces (test/topo), real backends, real clients, real
// packets through the kernel's nftables. It needs root; with CI=true it
// fails instead of skipping without it.
package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"portico.dev/appliance/test/topo"
)

var binDir string

// waitTimeout bounds every wait for something that takes a second or
// two on an idle machine: generous, for a loaded one with two cores.
const waitTimeout = 30 * time.Second

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "portico-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	for _, b := range []struct{ name, pkg string }{
		{"appliance", "portico.dev/appliance/cmd/appliance"},
		{"backend", "portico.dev/appliance/test/backend"},
	} {
		out, err := exec.Command("go", "build", "-o", filepath.Join(dir, b.name), b.pkg).CombinedOutput()
		if err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n%s", b.pkg, err, out)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// lab is one running lab: topology, backends, and the appliance.
type lab struct {
	t *testing.T
	*topo.Lab
	dir      string
	app      *topo.Proc
	backends map[string]*topo.Proc
}

// newLab brings up test/topo/l4.clab.yml with the backend binary on every
// backend (HTTP :8080, TCP echo :9000, UDP :5353), and no appliance yet.
func newLab(t *testing.T) *lab {
	l := upLab(t, "../topo/l4.clab.yml")
	for _, be := range []string{"be1", "be2", "be3"} {
		l.startBackend(be)
	}
	return l
}

// upLab brings up the topology file at path with nothing running in it.
func upLab(t *testing.T, path string) *lab {
	return &lab{t: t, Lab: topo.UpT(t, path), dir: t.TempDir(), backends: map[string]*topo.Proc{}}
}

// startBackend runs the backend binary on node be, named be, with HTTP on
// :8080, TCP echo on :9000 and UDP on :5353 (every address of the node).
func (l *lab) startBackend(be string) *topo.Proc {
	p, err := l.Start(context.Background(), be, filepath.Join(binDir, "backend"),
		"-name", be, "-http", ":8080", "-tcp", ":9000", "-udp", ":5353")
	if err != nil {
		l.t.Fatal(err)
	}
	l.backends[be] = p
	return p
}

// writeConfig writes the appliance's configuration file; store and log
// settings are added here, and a gNMI socket of the lab's own unless vips
// has a management section: the default path is one per machine, and
// another appliance may serve on it.
func (l *lab) writeConfig(vips string) string {
	path := filepath.Join(l.dir, "appliance.yaml")
	doc := fmt.Sprintf("name: e2e\nstore: %s\nlog: {level: debug}\n%s", filepath.Join(l.dir, "state.db"), vips)
	if !strings.Contains(vips, "management:") {
		doc += fmt.Sprintf("\nmanagement: {gnmi: {socket: %s}}\n", filepath.Join(l.dir, "gnmi.sock"))
	}
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		l.t.Fatal(err)
	}
	return path
}

// startAppliance runs the daemon in the appliance node and waits until it
// has applied a configuration.
func (l *lab) startAppliance(args ...string) {
	l.t.Helper()
	argv := append([]string{filepath.Join(binDir, "appliance"), "run", "--config", filepath.Join(l.dir, "appliance.yaml")}, args...)
	p, err := l.Start(context.Background(), "appliance", argv...)
	if err != nil {
		l.t.Fatal(err)
	}
	l.app = p
	l.waitLog("msg=applied", 1)
}

// waitLog waits until the appliance's log holds at least n lines with s.
func (l *lab) waitLog(s string, n int) {
	l.t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for time.Now().Before(deadline) {
		if strings.Count(l.app.Output(), s) >= n {
			return
		}
		select {
		case <-l.app.Done():
			l.t.Fatalf("appliance exited: %v\n%s", l.app.Wait(), l.app.Output())
		case <-time.After(50 * time.Millisecond):
		}
	}
	l.t.Fatalf("appliance log has fewer than %d %q within %s:\n%s", n, s, waitTimeout, l.app.Output())
}

// reload rewrites the configuration, sends SIGHUP and waits for the
// daemon's answer (accepted and applied, or refused).
func (l *lab) reload(vips string, want string) {
	l.t.Helper()
	n := strings.Count(l.app.Output(), want)
	l.writeConfig(vips)
	if err := l.app.Signal(syscall.SIGHUP); err != nil {
		l.t.Fatal(err)
	}
	l.waitLog(want, n+1)
}

// inNode runs fn on an OS thread inside the node's network namespace.
// Sockets created by fn stay in that namespace after it returns.
func (l *lab) inNode(node string, fn func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return err
	}
	defer orig.Close()
	ns, err := netns.GetFromName(l.Namespace(node))
	if err != nil {
		return err
	}
	defer ns.Close()
	if err := netns.Set(ns); err != nil {
		return err
	}
	defer netns.Set(orig)
	return fn()
}

// dial opens a connection from the client node.
func (l *lab) dial(network, addr string) (net.Conn, error) {
	return l.dialFrom("client", network, addr)
}

// dialFrom opens a connection from node.
func (l *lab) dialFrom(node, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := l.inNode(node, func() error {
		var err error
		c, err = net.DialTimeout(network, addr, 3*time.Second)
		return err
	})
	return c, err
}

// ask opens a new connection from the client node to an HTTP VIP and
// returns the backend's answer fields: name and the client address it saw.
func (l *lab) ask(addr string) (string, string, error) {
	return l.askFrom("client", addr)
}

// askFrom is ask from node.
func (l *lab) askFrom(node, addr string) (string, string, error) {
	c, err := l.dialFrom(node, "tcp", addr)
	if err != nil {
		return "", "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	host, _, _ := net.SplitHostPort(addr)
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", host)
	r := bufio.NewReader(c)
	var last string
	for {
		line, err := r.ReadString('\n')
		if line != "" {
			last = line
		}
		if err != nil {
			break
		}
	}
	f := strings.Fields(last)
	if len(f) != 2 {
		return "", "", fmt.Errorf("answer %q", last)
	}
	return f[0], f[1], nil
}
