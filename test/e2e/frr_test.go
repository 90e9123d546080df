package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"time"

	"portico.dev/appliance/test/topo"
)

// frrConf is the upstream router's FRR configuration: it peers over IPv4
// with the appliance, accepts what the appliance announces (no policy),
// installs it in its kernel through zebra, and keeps the appliance's
// routes through a graceful restart (RFC 4724) when the appliance
// negotiates one.
const frrConf = `frr defaults traditional
hostname upstream
log stdout informational
!
router bgp 64512
 bgp router-id 10.0.4.2
 no bgp ebgp-requires-policy
 bgp graceful-restart
 neighbor 10.0.4.1 remote-as 65000
 neighbor 10.0.4.1 timers 3 9
 neighbor 10.0.4.1 timers connect 2
!
`

// frr is FRR (zebra and bgpd) on a node of the lab.
type frr struct {
	l           *lab
	node        string
	dir         string // configuration, pid files and sockets
	zebra, bgpd *topo.Proc
}

// startFRR runs zebra and bgpd on node with conf, as the frr user, with
// sockets and pid files in a directory of their own, and waits until
// bgpd answers vtysh. Both are stopped before the test's other cleanups.
func (l *lab) startFRR(node, conf string) *frr {
	l.t.Helper()
	u, err := user.Lookup("frr")
	if err != nil {
		l.t.Fatalf("FRR is needed (apt-get install frr): %v", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	// Not t.TempDir: the frr user must reach the directory, and a test's
	// temporary directories sit in one that only root may enter.
	dir, err := os.MkdirTemp("", "portico-frr-")
	if err != nil {
		l.t.Fatal(err)
	}
	l.t.Cleanup(func() { os.RemoveAll(dir) })
	if err := errors.Join(os.Chmod(dir, 0o755), os.Chown(dir, uid, gid)); err != nil {
		l.t.Fatal(err)
	}
	confPath := filepath.Join(dir, "frr.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		l.t.Fatal(err)
	}
	f := &frr{l: l, node: node, dir: dir}
	l.t.Cleanup(f.stop)
	zserv := filepath.Join(dir, "zserv.api")
	common := []string{"-u", "frr", "-g", "frr", "-z", zserv, "--vty_socket", dir, "-P", "0", "--log", "stdout"}
	f.zebra, err = l.Start(context.Background(), node, append([]string{"/usr/lib/frr/zebra",
		"-i", filepath.Join(dir, "zebra.pid"), "-f", "/dev/null"}, common...)...)
	if err != nil {
		l.t.Fatal(err)
	}
	f.waitFor("zebra's socket", func() bool {
		_, err := os.Stat(zserv)
		return err == nil
	})
	f.bgpd, err = l.Start(context.Background(), node, append([]string{"/usr/lib/frr/bgpd",
		"-i", filepath.Join(dir, "bgpd.pid"), "-f", confPath}, common...)...)
	if err != nil {
		l.t.Fatal(err)
	}
	f.waitFor("bgpd to answer vtysh", func() bool {
		_, err := f.vtysh("show bgp summary json")
		return err == nil
	})
	return f
}

// stop stops bgpd, then zebra.
func (f *frr) stop() {
	for _, p := range []*topo.Proc{f.bgpd, f.zebra} {
		if p == nil {
			continue
		}
		if err := p.Stop(10 * time.Second); err != nil {
			f.l.t.Error(err)
		}
	}
}

// vtysh runs one vtysh command against this FRR.
func (f *frr) vtysh(cmd string) ([]byte, error) {
	return f.l.Exec(context.Background(), f.node, "vtysh", "--vty_socket", f.dir, "-c", cmd)
}

// waitFor polls ok until it holds, or fails the test showing FRR's output.
func (f *frr) waitFor(what string, ok func() bool) {
	f.l.t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !ok() {
		for _, p := range []*topo.Proc{f.zebra, f.bgpd} {
			if p == nil {
				continue
			}
			select {
			case <-p.Done():
				f.l.t.Fatalf("FRR on %s: %v\n%s", f.node, p.Wait(), p.Output())
			default:
			}
		}
		if time.Now().After(deadline) {
			f.l.t.Fatalf("FRR on %s: %s: not within %s\n%s", f.node, what, waitTimeout, f.output())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// output is what zebra and bgpd logged, and the appliance's log.
func (f *frr) output() string {
	var s string
	for _, p := range []*topo.Proc{f.zebra, f.bgpd} {
		if p != nil {
			s += p.Output()
		}
	}
	if f.l.app != nil {
		s += "appliance:\n" + f.l.app.Output()
	}
	return s
}

// frrPath is one path of a prefix in FRR's BGP table, as vtysh's JSON
// shows it.
type frrPath struct {
	Valid     bool `json:"valid"`
	Stale     bool `json:"stale"`
	Community struct {
		List []string `json:"list"`
	} `json:"community"`
	Nexthops []struct {
		IP string `json:"ip"`
	} `json:"nexthops"`
}

// paths returns FRR's paths for prefix p; none if it has no route.
func (f *frr) paths(p netip.Prefix) []frrPath {
	f.l.t.Helper()
	out, err := f.vtysh("show bgp ipv4 unicast " + p.String() + " json")
	if err != nil {
		f.l.t.Fatal(err)
	}
	var r struct {
		Paths []frrPath `json:"paths"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		f.l.t.Fatalf("vtysh: %v\n%s", err, out)
	}
	return r.Paths
}

// waitPaths waits until FRR has n paths for p and returns them and how
// long that took.
func (f *frr) waitPaths(p netip.Prefix, n int) ([]frrPath, time.Duration) {
	f.l.t.Helper()
	start := time.Now()
	var got []frrPath
	f.waitFor(fmt.Sprintf("%d paths for %s", n, p), func() bool {
		got = f.paths(p)
		return len(got) == n
	})
	return got, time.Since(start)
}

// frrGR is what FRR says of graceful restart with one neighbor.
type frrGR struct {
	RemoteGrMode string `json:"remoteGrMode"`
	Timers       struct {
		ReceivedRestartTimer int `json:"receivedRestartTimer"`
	} `json:"timers"`
}

// gracefulRestart returns FRR's view of graceful restart with neighbor.
func (f *frr) gracefulRestart(neighbor string) frrGR {
	f.l.t.Helper()
	out, err := f.vtysh("show bgp neighbors " + neighbor + " json")
	if err != nil {
		f.l.t.Fatal(err)
	}
	var r map[string]struct {
		GR frrGR `json:"gracefulRestartInfo"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		f.l.t.Fatalf("vtysh: %v\n%s", err, out)
	}
	return r[neighbor].GR
}
