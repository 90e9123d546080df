package bgp

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"portico.dev/appliance/test/topo"
)

// bfdPeer returns nodePeer(n) with a BFD session of interval × 3.
func bfdPeer(n int, interval time.Duration, accept ...netip.Prefix) Peer {
	p := nodePeer(n, false, 64512, accept...)
	p.BFD = BFD{Interval: interval, Multiplier: 3}
	return p
}

// establishes counts the times the speaker logged that the named peer's session came up.
func (s *speaker) establishes(peer string) int {
	return countLines(s.proc.Output(), `msg="session established"`, "peer="+peer+"\n")
}

// bfdUp reports whether the named peer's session is established and protected by BFD.
func (st speakerState) bfdUp(name string) bool {
	n, ok := st.neighbor(name)
	return ok && n.State == "established" && n.BFD == "up" && !n.Unprotected
}

// birdBFD returns the state of BIRD's BFD session with the appliance ("Up", "Down",
// ...), or "" if it has none.
func (b *bird) birdBFD(appliance netip.Addr) string {
	out, _ := b.birdc("show", "bfd", "sessions")
	for line := range strings.Lines(out) {
		if f := strings.Fields(line); len(f) >= 3 && f[0] == appliance.String() {
			return f[2]
		}
	}
	return ""
}

// TestBFDRestartOnce restarts BIRD's BGP protocol, which gives its next session a new
// BFD session too. Without the Speaker's handling of BFD, gobgp's BFD session, bound to
// the old one, expires while BGP is down, and the reset it queues kills every next
// session (gobgp#3561). Here the session comes back exactly once, BFD comes up with it,
// and both stay up for a minute.
func TestBFDRestartOnce(t *testing.T) {
	t.Parallel()
	lab := topo.UpT(t, labFile)
	sp := startSpeaker(t, lab)
	vip, accept := netip.MustParsePrefix("203.0.113.10/32"), netip.MustParsePrefix("203.0.113.0/24")
	appliance, _ := nodeAddrs(1, false)
	conf := nodeConf(1, false, 64512, statics("static1 "+vip.String()))
	conf.BFD = 100 * time.Millisecond
	b := startBird(t, lab, "node1", conf)
	sp.mustSet(Config{Global: applianceGlobal, Peers: []Peer{bfdPeer(1, 100*time.Millisecond, accept)}})
	sp.waitFor("session and BFD up", func(st speakerState) bool { return st.bfdUp("node1") && len(st.Routes) == 1 })
	b.waitFor("BIRD's BFD up", func(string) bool { return b.birdBFD(appliance) == "Up" }, "show", "bfd", "sessions")

	b.mustBirdc("restart", "appliance")
	sp.waitFor("session and BFD up again", func(st speakerState) bool {
		return sp.establishes("node1") == 2 && st.bfdUp("node1") && len(st.Routes) == 1
	})
	session := b.session()

	const stable = 60 * time.Second
	t.Logf("session back: %s; watching it for %s", session, stable)
	for end := time.Now().Add(stable); time.Now().Before(end); time.Sleep(time.Second) {
		if st := sp.state(); !st.bfdUp("node1") || len(st.Routes) != 1 {
			n, _ := st.neighbor("node1")
			t.Fatalf("after the restart: %+v, routes %s\nspeaker log:\n%s", n, routesString(st.Routes), sp.proc.Output())
		}
	}
	if n := sp.establishes("node1"); n != 2 {
		t.Errorf("the session was established %d times, want 2 (once, and once after the restart)\nspeaker log:\n%s", n, sp.proc.Output())
	}
	if now := b.session(); !oneSession(now, session) {
		t.Errorf("BIRD's session changed while watched: %q, then %q", session, now)
	}
	if st := b.birdBFD(appliance); st != "Up" {
		t.Errorf("BIRD's BFD session: %q, want Up", st)
	}
}

// silence drops node's BGP and BFD packets, both ways, inside its namespace, as if it
// had died without a word, and returns when that is in place.
func silence(t *testing.T, lab *topo.Lab, node string) {
	t.Helper()
	rules := `table inet silence {
	chain in { type filter hook input priority 0; tcp dport 179 drop; tcp sport 179 drop; udp dport 3784 drop; }
	chain out { type filter hook output priority 0; tcp dport 179 drop; tcp sport 179 drop; udp dport 3784 drop; }
}`
	if out, err := lab.Exec(context.Background(), node, "sh", "-c", "echo '"+rules+"' | nft -f -"); err != nil {
		t.Fatalf("silence %s: %v\n%s", node, err, out)
	}
}

// TestFailover silences one node that has BFD and one that has none: each one's next
// hop leaves the route, the first within BFD's detection time, the second when the
// hold timer (3 s) expires. The test prints how long each took.
func TestFailover(t *testing.T) {
	t.Parallel()
	lab := topo.UpT(t, labFile)
	sp := startSpeaker(t, lab)
	vip, accept := netip.MustParsePrefix("203.0.113.10/32"), netip.MustParsePrefix("203.0.113.0/24")
	const interval = 300 * time.Millisecond
	hops := make([]netip.Addr, 3)
	for i := range hops {
		_, hops[i] = nodeAddrs(i+1, false)
	}
	peers := []Peer{bfdPeer(1, interval, accept), nodePeer(2, false, 64512, accept), nodePeer(3, false, 64512, accept)}
	peers[1].HoldTime, peers[1].Keepalive = 3*time.Second, time.Second
	conf1 := nodeConf(1, false, 64512, statics("static1 "+vip.String()))
	conf1.BFD = interval
	conf2 := nodeConf(2, false, 64512, statics("static1 "+vip.String()))
	conf2.HoldTime, conf2.Keepalive = 3, 1
	startBird(t, lab, "node1", conf1)
	startBird(t, lab, "node2", conf2)
	startBird(t, lab, "node3", nodeConf(3, false, 64512, statics("static1 "+vip.String())))
	sp.mustSet(Config{Global: applianceGlobal, Peers: peers})

	via := func(hops ...netip.Addr) string { return routesString([]Learned{{Prefix: vip, NextHops: hops}}) }
	sp.waitFor("three next hops, node1 protected by BFD", func(st speakerState) bool {
		return routesString(st.Routes) == via(hops...) && st.bfdUp("node1") && st.established("node2", "node3")
	})
	if n, _ := sp.state().neighbor("node2"); n.BFD != "disabled" || n.Unprotected {
		t.Errorf("node2 without BFD: %+v, want BFD disabled and not unprotected", n)
	}

	for _, step := range []struct {
		node string
		what string
		want string // routes once the node's next hop is gone
		why  string // in its last error
	}{
		{"node1", "BFD", via(hops[1], hops[2]), "BFD"},
		{"node2", "hold timer", via(hops[2]), "hold-timer-expired"},
	} {
		silence(t, lab, step.node)
		start := time.Now()
		for {
			st := sp.state()
			if routesString(st.Routes) == step.want {
				break
			}
			if time.Since(start) > waitTimeout {
				t.Fatalf("%s silenced: routes %s after %s, want %s", step.node, routesString(st.Routes), waitTimeout, step.want)
			}
			time.Sleep(10 * time.Millisecond)
		}
		took := time.Since(start)
		st := sp.waitFor(step.node+"'s session down", func(st speakerState) bool {
			n, _ := st.neighbor(step.node)
			return n.State != "established" && n.LastError != ""
		})
		n, _ := st.neighbor(step.node)
		t.Logf("%s silenced: its next hop left the route after %s (%s); last error %q",
			step.node, took.Round(time.Millisecond), step.what, n.LastError)
		if !strings.Contains(n.LastError, step.why) {
			t.Errorf("%s's last error %q, want it to name %s", step.node, n.LastError, step.why)
		}
	}
}

// bfdd is FRR's BFD daemon on a node of a lab, with a peer session to the appliance.
// BIRD cannot set a BFD session AdminDown (it stops sending instead), FRR can.
type bfdd struct {
	t    *testing.T
	lab  *topo.Lab
	node string
	dir  string
	peer string // "peer ADDR local-address ADDR", as bfdd's configuration names the session
}

// startBfdd starts bfdd on node n (1..3) with a session to the appliance of interval ×
// 3, and stops it when the test ends. bfdd runs as the frr user, as FRR's daemons do.
func startBfdd(t *testing.T, lab *topo.Lab, n int, interval time.Duration) *bfdd {
	t.Helper()
	frr, err := user.Lookup("frr")
	if err != nil {
		t.Fatalf("FRR's user: %v (apt install frr)", err)
	}
	uid, _ := strconv.Atoi(frr.Uid)
	gid, _ := strconv.Atoi(frr.Gid)
	appliance, node := nodeAddrs(n, false)
	// Not t.TempDir: the frr user could not reach into it.
	dir, err := os.MkdirTemp("", "bfdd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	d := &bfdd{t: t, lab: lab, node: fmt.Sprintf("node%d", n), dir: dir,
		peer: fmt.Sprintf("peer %s local-address %s", appliance, node)}
	if err := os.Chown(d.dir, uid, gid); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(d.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	ms := interval.Milliseconds()
	conf := fmt.Sprintf("bfd\n %s\n  receive-interval %d\n  transmit-interval %d\n !\n!\n", d.peer, ms, ms)
	path := filepath.Join(d.dir, "bfdd.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	proc, err := lab.Start(context.Background(), d.node, "/usr/lib/frr/bfdd", "-f", path, "-i", filepath.Join(d.dir, "bfdd.pid"),
		"--vty_socket", d.dir, "--bfdctl", filepath.Join(d.dir, "bfdd.sock"), "-z", filepath.Join(d.dir, "zserv.api"),
		"-P", "0", "-u", "frr", "-g", "frr", "--log", "stdout")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := proc.Stop(10 * time.Second); err != nil {
			t.Error(err)
		}
	})
	deadline := time.Now().Add(waitTimeout)
	for {
		if _, err := d.vtysh("show bfd peers"); err == nil {
			return d
		}
		select {
		case <-proc.Done():
			t.Fatalf("bfdd on %s exited: %v\n%s", d.node, proc.Wait(), proc.Output())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("bfdd on %s does not answer:\n%s", d.node, proc.Output())
		}
	}
}

// vtysh runs commands in bfdd's vty and returns the output.
func (d *bfdd) vtysh(cmds ...string) (string, error) {
	argv := []string{"vtysh", "--vty_socket", d.dir, "-d", "bfdd"}
	for _, c := range cmds {
		argv = append(argv, "-c", c)
	}
	out, err := d.lab.Exec(context.Background(), d.node, argv...)
	return string(out), err
}

// shutdown sets bfdd's session AdminDown, or back up if !down.
func (d *bfdd) shutdown(down bool) {
	d.t.Helper()
	cmd := "shutdown"
	if !down {
		cmd = "no shutdown"
	}
	if out, err := d.vtysh("configure terminal", "bfd", d.peer, cmd); err != nil {
		d.t.Fatalf("bfdd %s: %v\n%s", cmd, err, out)
	}
}

// status returns bfdd's status of its session: up, down, init or shutdown.
func (d *bfdd) status() string {
	out, _ := d.vtysh("show bfd peers")
	for line := range strings.Lines(out) {
		if s, ok := strings.CutPrefix(strings.TrimSpace(line), "Status: "); ok {
			return s
		}
	}
	return ""
}

// TestBFDAdminDown has FRR's bfdd, beside BIRD's BGP, set its BFD session AdminDown: the
// BGP session stays up (RFC 5882 §3.2) and is reported unprotected, and when bfdd takes
// its session up again, BFD comes back up under the same BGP session.
func TestBFDAdminDown(t *testing.T) {
	t.Parallel()
	lab := topo.UpT(t, labFile)
	sp := startSpeaker(t, lab)
	vip, accept := netip.MustParsePrefix("203.0.113.10/32"), netip.MustParsePrefix("203.0.113.0/24")
	const interval = 100 * time.Millisecond
	b := startBird(t, lab, "node1", nodeConf(1, false, 64512, statics("static1 "+vip.String())))
	d := startBfdd(t, lab, 1, interval)
	sp.mustSet(Config{Global: applianceGlobal, Peers: []Peer{bfdPeer(1, interval, accept)}})
	sp.waitFor("session and BFD up", func(st speakerState) bool { return st.bfdUp("node1") && len(st.Routes) == 1 })
	session := b.session()

	d.shutdown(true)
	sp.waitFor("BFD admin-down, the session up and unprotected", func(st speakerState) bool {
		n, _ := st.neighbor("node1")
		return n.State == "established" && n.BFD == "admin-down" && n.Unprotected
	})
	// Many detection times (300 ms) later, the session is the same.
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
		if st := sp.state(); !st.established("node1") || len(st.Routes) != 1 {
			t.Fatalf("after bfdd's AdminDown: %+v, routes %s\nspeaker log:\n%s", st.Neighbors, routesString(st.Routes), sp.proc.Output())
		}
	}
	if s := d.status(); s != "shutdown" {
		t.Errorf("bfdd's session: %q, want shutdown", s)
	}
	logs := sp.proc.Output()
	if n := countLines(logs, "level=WARN", "AdminDown", "peer=node1"); n != 1 {
		t.Errorf("the AdminDown is logged %d times, want once:\n%s", n, logs)
	}

	d.shutdown(false)
	sp.waitFor("BFD up again", func(st speakerState) bool { return st.bfdUp("node1") })
	if n := sp.establishes("node1"); n != 1 {
		t.Errorf("the session was established %d times, want once\nspeaker log:\n%s", n, sp.proc.Output())
	}
	if now := b.session(); !oneSession(now, session) {
		t.Errorf("BIRD's session changed: %q, then %q", session, now)
	}
	if s := d.status(); s != "up" {
		t.Errorf("bfdd's session: %q, want up", s)
	}
}

// TestBFDUnprotected has BFD configured for a node that runs none: the session comes
// up all the same, as gobgp lets it, and is reported and logged as unprotected.
func TestBFDUnprotected(t *testing.T) {
	t.Parallel()
	lab := topo.UpT(t, labFile)
	sp := startSpeaker(t, lab)
	vip, accept := netip.MustParsePrefix("203.0.113.10/32"), netip.MustParsePrefix("203.0.113.0/24")
	startBird(t, lab, "node1", nodeConf(1, false, 64512, statics("static1 "+vip.String())))
	sp.mustSet(Config{Global: applianceGlobal, Peers: []Peer{bfdPeer(1, 100*time.Millisecond, accept)}})
	st := sp.waitFor("the session up, unprotected", func(st speakerState) bool {
		n, _ := st.neighbor("node1")
		return n.State == "established" && n.Unprotected && len(st.Routes) == 1
	})
	if n, _ := st.neighbor("node1"); n.BFD != "down" {
		t.Errorf("node1: BFD %q, want down", n.BFD)
	}
	sp.waitFor("the warning", func(speakerState) bool {
		return countLines(sp.proc.Output(), "level=WARN", "BFD is not up", "peer=node1") == 1
	})
}
