package topo_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"portico.dev/appliance/test/topo"
)

func TestLine(t *testing.T) {
	t.Parallel()
	lab := topo.UpT(t, "testdata/line.clab.yml")
	ctx := t.Context()

	t.Run("exec", func(t *testing.T) {
		for node, want := range map[string]string{"r1": "1", "h1": "0"} {
			out, err := lab.Exec(ctx, node, "sysctl", "-n", "net.ipv4.ip_forward")
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.TrimSpace(string(out)); got != want {
				t.Errorf("node %s: ip_forward = %s, want %s", node, got, want)
			}
		}
		_, err := lab.Exec(ctx, "h1", "ip", "link", "show", "nosuch")
		if err == nil || !strings.Contains(err.Error(), "ip link show nosuch") || !strings.Contains(err.Error(), "does not exist") {
			t.Errorf("Exec of a failing command: error %v, want one with the command and its output", err)
		}
		if _, err := lab.Exec(ctx, "nosuch", "true"); err == nil {
			t.Error("Exec on a missing node succeeded")
		}
	})

	t.Run("tcp", func(t *testing.T) {
		var ln net.Listener
		err := inNamespace(lab, "h2", func() (err error) {
			ln, err = net.Listen("tcp", "10.0.2.2:0")
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			_, _ = io.Copy(c, c)
		}()
		err = inNamespace(lab, "h1", func() error {
			c, err := net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
			if err != nil {
				return err
			}
			defer c.Close()
			if err := c.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
				return err
			}
			if _, err := c.Write([]byte("hello")); err != nil {
				return err
			}
			got := make([]byte, 5)
			if _, err := io.ReadFull(c, got); err != nil {
				return err
			}
			if !bytes.Equal(got, []byte("hello")) {
				return fmt.Errorf("echo = %q, want hello", got)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("h1 to h2 through r1: %v", err)
		}
	})

	t.Run("ping", func(t *testing.T) {
		if _, err := exec.LookPath("ping"); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatal("ping is not installed (Debian package iputils-ping; .ci/run installs it)")
			}
			t.Skip("ping is not installed (Debian package iputils-ping)")
		}
		if _, err := lab.Exec(ctx, "h1", "ping", "-c", "1", "-W", "5", "10.0.2.2"); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("start-stop", func(t *testing.T) {
		p, err := lab.Start(ctx, "h1", "sh", "-c", "echo ready; exec sleep 1000")
		if err != nil {
			t.Fatal(err)
		}
		waitOutput(t, p, "ready")
		out, err := exec.Command("ip", "netns", "identify", strconv.Itoa(p.PID())).Output()
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.TrimSpace(string(out)); got != lab.Namespace("h1") {
			t.Errorf("process runs in namespace %q, want %q", got, lab.Namespace("h1"))
		}
		if err := p.Stop(5 * time.Second); err != nil {
			t.Fatal(err)
		}
		select {
		case <-p.Done():
		default:
			t.Error("Done is open after Stop")
		}
		var wg sync.WaitGroup
		for range 3 {
			wg.Go(func() {
				if err := p.Wait(); err == nil || !strings.Contains(err.Error(), "terminated") {
					t.Errorf("Wait = %v, want the process terminated by a signal", err)
				}
			})
		}
		wg.Wait()
		requireReaped(t, p.PID())
		if err := p.Signal(os.Interrupt); !errors.Is(err, os.ErrProcessDone) {
			t.Errorf("Signal after exit = %v, want os.ErrProcessDone", err)
		}
	})

	t.Run("stop-kills", func(t *testing.T) {
		// An ignored signal stays ignored across exec, so sleep ignores SIGTERM.
		p, err := lab.Start(ctx, "h2", "sh", "-c", "trap '' TERM; echo ready; exec sleep 1000")
		if err != nil {
			t.Fatal(err)
		}
		waitOutput(t, p, "ready")
		if err := p.Stop(100 * time.Millisecond); err != nil {
			t.Fatal(err)
		}
		if err := p.Wait(); err == nil || !strings.Contains(err.Error(), "killed") {
			t.Errorf("Wait = %v, want the process killed", err)
		}
		requireReaped(t, p.PID())
	})
}

func TestDown(t *testing.T) {
	t.Parallel()
	lab := topo.UpT(t, "testdata/line.clab.yml")
	p, err := lab.Start(t.Context(), "r1", "sleep", "1000")
	if err != nil {
		t.Fatal(err)
	}
	if err := lab.Down(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.Done():
	default:
		t.Error("process still running after Down")
	}
	requireReaped(t, p.PID())
	requireNoNamespaces(t, strings.TrimSuffix(lab.Namespace("h1"), "h1"))
	if err := lab.Down(); err != nil {
		t.Errorf("second Down = %v, want nil", err)
	}
	if _, err := lab.Start(t.Context(), "r1", "true"); err == nil {
		t.Error("Start after Down succeeded")
	}
}

func TestUpFails(t *testing.T) {
	topo.RequireRoot(t)
	t.Parallel()
	tp, err := topo.Parse([]byte(`
name: fails
topology:
  nodes:
    a: {kind: linux, exec: ["ip link set eth1 up", "ip link set nosuch up"]}
    b: {kind: linux}
  links:
    - endpoints: [a:eth1, b:eth1]
`))
	if err != nil {
		t.Fatal(err)
	}
	t.Run("exec", func(t *testing.T) {
		opt := topo.Options{Prefix: uniquePrefix()}
		_, err := topo.Up(t.Context(), tp, opt)
		if err == nil || !strings.Contains(err.Error(), "exec on node a") || !strings.Contains(err.Error(), "nosuch") {
			t.Fatalf("Up = %v, want an error naming the node and the command", err)
		}
		requireNoNamespaces(t, opt.Prefix)
	})
	t.Run("exists", func(t *testing.T) {
		ok := *tp
		ok.Nodes = map[string]*topo.Node{"a": {Kind: "linux"}, "b": {Kind: "linux"}}
		opt := topo.Options{Prefix: uniquePrefix()}
		lab, err := topo.Up(t.Context(), &ok, opt)
		if err != nil {
			t.Fatal(err)
		}
		defer func() {
			if err := lab.Down(); err != nil {
				t.Error(err)
			}
		}()
		_, err = topo.Up(t.Context(), &ok, opt)
		if err == nil || !strings.Contains(err.Error(), "exists already") {
			t.Fatalf("second Up = %v, want an error saying the namespace exists", err)
		}
		if _, err := lab.Exec(t.Context(), "a", "ip", "link", "show", "eth1"); err != nil {
			t.Errorf("the failed Up broke the lab that was there: %v", err)
		}
	})
}

func uniquePrefix() string { return fmt.Sprintf("t%06x-", rand.N(1<<24)) }

// inNamespace runs fn in the network namespace of node, so that the sockets it opens belong
// to that namespace and stay there after it returns.
func inNamespace(lab *topo.Lab, node string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the thread ends with the goroutine instead of carrying the
		// namespace over to other goroutines.
		runtime.LockOSThread()
		h, err := netns.GetFromName(lab.Namespace(node))
		if err != nil {
			errc <- err
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			errc <- err
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// waitOutput waits until the output of p contains want.
func waitOutput(t *testing.T, p *topo.Proc, want string) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !strings.Contains(p.Output(), want); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("output = %q, want %q in it", p.Output(), want)
		}
	}
}

// requireReaped fails t if the process pid still exists, as a zombie or not.
func requireReaped(t *testing.T, pid int) {
	t.Helper()
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("process %d was not reaped: stat /proc/%d: %v", pid, pid, err)
	}
}

// requireNoNamespaces fails t if ip netns lists a namespace whose name starts with prefix.
func requireNoNamespaces(t *testing.T, prefix string) {
	t.Helper()
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, prefix) {
			t.Errorf("namespace %s is left", line)
		}
	}
}
