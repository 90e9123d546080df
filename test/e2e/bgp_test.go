package e2e

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// The BGP tests run the appliance in test/topo/bgp.clab.yml: BIRD 2 on the
// cluster nodes announcing routes to it, FRR on the upstream router
// learning its VIPs, real packets from clients on either side.

const bgpLab = "../topo/bgp.clab.yml"

// bgpHead starts the appliance's bgp section; peers follow.
const bgpHead = "bgp:\n  asn: 65000\n  router-id: 10.0.0.1\n  peers:\n"

// nodePeer is the appliance's configuration of node n as a peer (IPv6 if
// v6) from asn, with more keys in extra.
func nodePeer(n int, v6 bool, asn uint32, extra string) string {
	return fmt.Sprintf("    - {name: node%d, address: %q, asn: %d, role: node, %s}\n", n, nodeAddr(n, v6), asn, extra)
}

// TestBGPECMP: three BIRD nodes announce one VIP with themselves as next
// hop; the appliance installs one kernel route with three next hops, and
// new connections from the client reach all three nodes. A node that
// withdraws the route, then one whose session goes down, each take just
// their own next hop out of it; when the last one goes, the route goes.
func TestBGPECMP(t *testing.T) { testECMP(t, false) }

// TestBGPECMPIPv6 is TestBGPECMP over IPv6: IPv6 sessions, a /128 VIP.
func TestBGPECMPIPv6(t *testing.T) { testECMP(t, true) }

func testECMP(t *testing.T, v6 bool) {
	l := upLab(t, bgpLab)
	vip, accept := netip.MustParsePrefix("203.0.113.10/32"), "203.0.113.0/24"
	if v6 {
		vip, accept = netip.MustParsePrefix("2001:db8::10/128"), "2001:db8::/64"
	}
	var peers string
	for n := 1; n <= 3; n++ {
		l.serveVIP(fmt.Sprintf("node%d", n), vip)
		peers += nodePeer(n, v6, uint32(65000+n), "accept: ["+accept+"]")
	}
	l.writeConfig(bgpHead + peers)
	l.startAppliance()

	var birds []*bird
	var hops []netip.Addr
	start := time.Now()
	for n := 1; n <= 3; n++ {
		birds = append(birds, l.startBird(birdConf{N: n, ASN: uint32(65000 + n), V6: v6,
			Statics: []static{{Name: "vip", Routes: []string{vip.String()}}}}))
		hops = append(hops, nodeAddr(n, v6))
	}
	l.waitRoute(vip, hops...)
	t.Logf("%s via %v in the kernel %s after the BIRDs started", vip, hops, time.Since(start).Round(time.Millisecond))
	target := net.JoinHostPort(vip.Addr().String(), "8080")
	l.wantReach(target, "node1", "node2", "node3")

	for _, s := range []struct {
		what  string
		bird  *bird
		birdc []string
		left  []netip.Addr
		reach []string
	}{
		{"node1 withdraws the route", birds[0], []string{"disable", "vip"}, hops[1:], []string{"node2", "node3"}},
		{"node2's session goes down", birds[1], []string{"disable", "appliance"}, hops[2:], []string{"node3"}},
		{"node3, the last, goes down", birds[2], []string{"disable", "appliance"}, nil, nil},
	} {
		start := time.Now()
		s.bird.mustBirdc(s.birdc...)
		l.waitRoute(vip, s.left...)
		t.Logf("%s: the kernel route follows in %s", s.what, time.Since(start).Round(time.Millisecond))
		if len(s.reach) > 0 {
			l.wantReach(target, s.reach...)
		} else if name, _, err := l.ask(target); err == nil {
			t.Fatalf("no route left, but %s answered on %s", name, target)
		}
	}
}

// serveVIP puts vip on node's lo and starts the backend there, so that
// connections to vip routed to node are answered by node.
func (l *lab) serveVIP(node string, vip netip.Prefix) {
	l.t.Helper()
	if _, err := l.Exec(context.Background(), node, "ip", "addr", "add", vip.String(), "dev", "lo"); err != nil {
		l.t.Fatal(err)
	}
	l.startBackend(node)
}

// wantReach opens new connections from the client to target (an HTTP
// server on the nodes), each from another source port, and fails the test
// unless together they reach exactly the nodes named.
func (l *lab) wantReach(target string, nodes ...string) {
	l.t.Helper()
	const n = 60 // misses one of three nodes with a chance of 3·(2/3)^60 ≈ 10^-10
	hits := map[string]int{}
	for range n {
		name, _, err := l.ask(target)
		if err != nil {
			l.t.Fatalf("connection to %s: %v", target, err)
		}
		hits[name]++
	}
	if got := slices.Sorted(maps.Keys(hits)); !slices.Equal(got, nodes) {
		l.t.Fatalf("%d connections to %s reached %v, want %v", n, target, hits, nodes)
	}
	l.t.Logf("%d connections to %s: %v", n, target, hits)
}

// nextHops returns the next hops of the appliance's route for p in its
// main table, sorted; none if there is no such route. It fails the test if
// the route is not the daemon's (protocol bgp).
func (l *lab) nextHops(p netip.Prefix) []netip.Addr {
	l.t.Helper()
	ns, err := netns.GetFromName(l.Namespace("appliance"))
	if err != nil {
		l.t.Fatal(err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		l.t.Fatal(err)
	}
	defer h.Close()
	family := netlink.FAMILY_V4
	if p.Addr().Is6() {
		family = netlink.FAMILY_V6
	}
	dst := &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
	routes, err := h.RouteListFiltered(family, &netlink.Route{Dst: dst, Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_DST|netlink.RT_FILTER_TABLE)
	if err != nil {
		l.t.Fatal(err)
	}
	var hops []netip.Addr
	for _, r := range routes {
		if r.Protocol != unix.RTPROT_BGP {
			l.t.Fatalf("route %s has protocol %d, not the daemon's (bgp)", r, r.Protocol)
		}
		gws := []net.IP{r.Gw}
		if len(r.MultiPath) > 0 {
			gws = nil
			for _, nh := range r.MultiPath {
				gws = append(gws, nh.Gw)
			}
		}
		for _, gw := range gws {
			a, ok := netip.AddrFromSlice(gw)
			if !ok {
				l.t.Fatalf("route %s: a next hop without a gateway", r)
			}
			hops = append(hops, a.Unmap())
		}
	}
	slices.SortFunc(hops, netip.Addr.Compare)
	return hops
}

// waitRoute waits until the appliance's route for p has exactly the next
// hops want (none: no route).
func (l *lab) waitRoute(p netip.Prefix, want ...netip.Addr) {
	l.t.Helper()
	want = slices.Clone(want)
	slices.SortFunc(want, netip.Addr.Compare)
	deadline := time.Now().Add(waitTimeout)
	for {
		got := l.nextHops(p)
		if slices.Equal(got, want) {
			return
		}
		select {
		case <-l.app.Done():
			l.t.Fatalf("appliance exited: %v\n%s", l.app.Wait(), l.app.Output())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			l.t.Fatalf("route %s: next hops %v, want %v within %s\n%s", p, got, want, waitTimeout, l.app.Output())
		}
	}
}

// steady fails the test unless the sessions of the peers named have been
// established once and never gone down, as the appliance's log tells.
func (l *lab) steady(peers ...string) {
	l.t.Helper()
	log := l.app.Output()
	for _, p := range peers {
		up := strings.Count(log, `msg="session established" component=bgp peer=`+p+"\n")
		down := strings.Count(log, `msg="session down" component=bgp peer=`+p+" ")
		if up != 1 || down != 0 {
			l.t.Errorf("peer %s: session established %d times and down %d times, want once and never", p, up, down)
		}
	}
}

// alive fails the test if the appliance has exited.
func (l *lab) alive() {
	l.t.Helper()
	select {
	case <-l.app.Done():
		l.t.Fatalf("appliance exited: %v\n%s", l.app.Wait(), l.app.Output())
	default:
	}
}

// TestBGPRefused: a node announcing a prefix outside its accept list has
// that prefix refused (not in the kernel, logged once however often the
// node sends it again) and the rest accepted; a node announcing more
// prefixes than its max-prefixes loses its session, with a log naming the
// limit, and none of its routes is installed. The daemon and the other
// sessions stay up.
func TestBGPRefused(t *testing.T) {
	l := upLab(t, bgpLab)
	accept := "accept: [203.0.113.0/24]"
	l.writeConfig(bgpHead +
		nodePeer(1, false, 65001, accept) +
		nodePeer(2, false, 65002, accept+", max-prefixes: 3") +
		nodePeer(3, false, 65003, accept))
	l.startAppliance()

	vip := netip.MustParsePrefix("203.0.113.10/32")
	outside := netip.MustParsePrefix("198.18.0.0/24")
	more := netip.MustParsePrefix("203.0.113.14/32")
	b1 := l.startBird(birdConf{N: 1, ASN: 65001, Statics: []static{
		{Name: "vip", Routes: []string{vip.String(), outside.String()}},
		{Name: "more", Routes: []string{more.String()}, Disabled: true},
	}})
	b2 := l.startBird(birdConf{N: 2, ASN: 65002, Statics: []static{
		{Name: "vip", Routes: []string{vip.String(), "203.0.113.11/32", "203.0.113.12/32", "203.0.113.13/32"}},
	}})
	b3 := l.startBird(birdConf{N: 3, ASN: 65003, Statics: []static{{Name: "vip", Routes: []string{vip.String()}}}})

	l.waitRoute(vip, nodeAddr(1, false), nodeAddr(3, false))
	refused := fmt.Sprintf(`msg="route refused" component=bgp peer=node1 prefix=%s `, outside)
	l.waitLog(refused, 1)
	limit := `peer=node2 max-prefixes=3`
	l.waitLog(limit, 1)
	b1.waitEstablished()
	b3.waitEstablished()
	// From BIRD's log: "show protocols" says it only until BIRD tries
	// again, a second later, and the appliance refuses the connection.
	notified := "Received: Maximum number of prefixes reached"
	deadline := time.Now().Add(waitTimeout)
	for !strings.Contains(b2.proc.Output(), notified) {
		if time.Now().After(deadline) {
			t.Fatalf("bird on node2 logged no %q within %s:\n%s", notified, waitTimeout, b2.proc.Output())
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, p := range []string{outside.String(), "203.0.113.11/32", "203.0.113.12/32", "203.0.113.13/32"} {
		if hops := l.nextHops(netip.MustParsePrefix(p)); len(hops) > 0 {
			t.Errorf("refused prefix %s is in the kernel via %v", p, hops)
		}
	}

	// node1 sends another update: its whole table is read again, the
	// outside prefix with it, and refused again without another log line.
	b1.mustBirdc("enable", "more")
	l.waitRoute(more, nodeAddr(1, false))
	if n := strings.Count(l.app.Output(), refused); n != 1 {
		t.Errorf("the refusal of %s is logged %d times, want once:\n%s", outside, n, l.app.Output())
	}
	if hops := l.nextHops(outside); len(hops) > 0 {
		t.Errorf("refused prefix %s is in the kernel via %v", outside, hops)
	}
	if n := strings.Count(l.app.Output(), limit); n != 1 {
		t.Errorf("the max-prefixes shutdown is logged %d times, want once:\n%s", n, l.app.Output())
	}
	l.alive()
	l.steady("node1", "node3")
	l.waitRoute(vip, nodeAddr(1, false), nodeAddr(3, false))
}

// TestBGPMalformedUpdate: a configured node peer (a hand-made speaker on
// node3) opens a session and announces a route, then sends malformed
// UPDATEs, handled as RFC 7606 says. One whose ORIGIN attribute has a bad
// length is treated as a withdrawal of its route: node3's next hop leaves
// the kernel route, and the session stays. One whose Total Path Attribute
// Length runs past the end of the message gets a NOTIFICATION (UPDATE
// Message Error, Malformed Attribute List) and the session is closed,
// which takes node3's next hop out again. Through both, the daemon stays
// up and the BIRD sessions of node1 and node2 are untouched; node3 can
// then open a new session that works.
func TestBGPMalformedUpdate(t *testing.T) {
	l := upLab(t, bgpLab)
	accept := "accept: [203.0.113.0/24]"
	l.writeConfig(bgpHead +
		nodePeer(1, false, 65001, accept) +
		nodePeer(2, false, 65002, accept) +
		nodePeer(3, false, 65003, accept))
	l.startAppliance()
	vip := netip.MustParsePrefix("203.0.113.10/32")
	for n := 1; n <= 2; n++ {
		l.startBird(birdConf{N: n, ASN: uint32(65000 + n), Statics: []static{{Name: "vip", Routes: []string{vip.String()}}}})
	}
	n1, n2, n3 := nodeAddr(1, false), nodeAddr(2, false), nodeAddr(3, false)
	l.waitRoute(vip, n1, n2)

	server := net.JoinHostPort(applianceAddr(3, false).String(), "179")
	good := bgpUpdate(append(slices.Clone(bgpOrigin), bgpPath(65003, n3)...), vip)
	c := l.rawSession("node3", server)
	send := func(what string, msg []byte) {
		t.Helper()
		if _, err := c.Write(msg); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	send("announce", good)
	l.waitRoute(vip, n1, n2, n3)

	badOrigin := []byte{0x40, 1, 2, 0, 0} // ORIGIN is one octet long
	send("bad ORIGIN length", bgpUpdate(append(badOrigin, bgpPath(65003, n3)...), vip))
	l.waitRoute(vip, n1, n2)
	l.waitLog("treated as withdraw", 1)
	send("announce again", good)
	l.waitRoute(vip, n1, n2, n3)
	l.steady("node3")

	overrun := slices.Clone(good)
	binary.BigEndian.PutUint16(overrun[21:], uint16(len(good))) // Total Path Attribute Length, past the end
	send("Total Path Attribute Length past the end", overrun)
	_ = c.SetReadDeadline(time.Now().Add(waitTimeout))
	typ, body, err := readBGP(c)
	if err != nil || typ != bgpNotificationMsg || len(body) < 2 {
		t.Fatalf("after a malformed UPDATE: message type %d %x, %v; want a NOTIFICATION\n%s", typ, body, err, l.app.Output())
	}
	if body[0] != 3 || body[1] != 1 {
		t.Errorf("NOTIFICATION code %d subcode %d, want code 3 (UPDATE Message Error) subcode 1 (Malformed Attribute List)", body[0], body[1])
	}
	if _, _, err := readBGP(c); err == nil {
		t.Error("the session stays open after the NOTIFICATION")
	}
	c.Close()
	l.waitRoute(vip, n1, n2)
	l.waitLog(`msg="session down" component=bgp peer=node3 `, 1)
	l.alive()
	l.steady("node1", "node2")

	start := time.Now()
	c = l.rawSession("node3", server)
	t.Logf("node3 has a new session %s after the reset", time.Since(start).Round(time.Millisecond))
	send("announce on the new session", good)
	l.waitRoute(vip, n1, n2, n3)
	l.steady("node1", "node2")
}

// rawSession connects from node to the appliance's BGP server and opens a
// session as that node (its AS is 65000 + its number), trying again until
// the appliance takes it; the connection is closed when the test ends.
func (l *lab) rawSession(node, server string) net.Conn {
	l.t.Helper()
	var n int
	if _, err := fmt.Sscanf(node, "node%d", &n); err != nil {
		l.t.Fatal(err)
	}
	deadline := time.Now().Add(waitTimeout)
	for {
		c, err := l.dialFrom(node, "tcp", server)
		if err == nil {
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			if err = bgpEstablish(c, uint16(65000+n), nodeAddr(n, false)); err == nil {
				_ = c.SetDeadline(time.Time{})
				l.t.Cleanup(func() { c.Close() })
				return c
			}
			c.Close()
		}
		if time.Now().After(deadline) {
			l.t.Fatalf("no BGP session from %s to %s within %s: %v\n%s", node, server, waitTimeout, err, l.app.Output())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// upstreamVIPs are static VIPs served by the nodes' backends: web and dns
// share 203.0.113.20 on node1 and node2, api is 203.0.113.21 on node3.
const upstreamVIPs = `vips:
  - name: web
    address: 203.0.113.20
    port: 80
    health: {type: tcp, interval: 200ms, timeout: 150ms, rise: 2, fall: 2}
    backends:
      - {address: 10.0.1.2:8080}
      - {address: 10.0.2.2:8080}
  - name: dns
    address: 203.0.113.20
    port: 53
    protocol: udp
    backends:
      - {address: 10.0.1.2:5353}
      - {address: 10.0.2.2:5353}
  - name: api
    address: 203.0.113.21
    port: 80
    health: {type: tcp, interval: 200ms, timeout: 150ms, rise: 2, fall: 2}
    backends:
      - {address: 10.0.3.2:8080}
`

// upstreamPeer is the appliance's configuration of the FRR router.
const upstreamPeer = `    - {name: upstream, address: 10.0.4.2, asn: 64512, role: upstream, communities: ["65000:100"]}
`

// TestBGPUpstream: FRR as the upstream router learns the appliance's VIPs
// (next hop the appliance, with the configured community) and forwards
// the outside client's traffic to them: outside -> FRR -> appliance ->
// backend and back. When every backend of one VIP fails its health
// checks, FRR loses that VIP and only that one: a UDP flow to the other
// VIP loses no packet meanwhile. When the backend returns, so does the
// route, and traffic.
func TestBGPUpstream(t *testing.T) {
	l := upLab(t, bgpLab)
	for _, node := range []string{"node1", "node2", "node3"} {
		l.startBackend(node)
	}
	l.writeConfig(upstreamVIPs + bgpHead + upstreamPeer)
	l.startAppliance()
	start := time.Now()
	f := l.startFRR("upstream", frrConf)
	web, api := netip.MustParsePrefix("203.0.113.20/32"), netip.MustParsePrefix("203.0.113.21/32")
	for _, p := range []netip.Prefix{web, api} {
		paths, _ := f.waitPaths(p, 1)
		got := paths[0]
		if len(got.Nexthops) != 1 || got.Nexthops[0].IP != "10.0.4.1" || !slices.Equal(got.Community.List, []string{"65000:100"}) || !got.Valid {
			t.Errorf("FRR's path for %s: %+v, want a valid one via 10.0.4.1 with community 65000:100", p, got)
		}
	}
	t.Logf("FRR has both VIPs %s after it started", time.Since(start).Round(time.Millisecond))
	l.waitAnswer("outside", "203.0.113.20:80", "node1", "node2")
	l.waitAnswer("outside", "203.0.113.21:80", "node3")

	probe := l.startProbe("outside", "203.0.113.20:53")
	start = time.Now()
	if err := l.backends["node3"].Stop(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	f.waitPaths(api, 0)
	t.Logf("api's only backend stopped: FRR withdrew %s %s later", api, time.Since(start).Round(time.Millisecond))
	l.waitLog(`backend=api/10.0.3.2:8080 up=false`, 1)
	if paths := f.paths(web); len(paths) != 1 {
		t.Errorf("FRR has %d paths for %s while only api is down, want 1", len(paths), web)
	}
	l.waitNoAnswer("outside", "203.0.113.21:80")
	l.waitAnswer("outside", "203.0.113.20:80", "node1", "node2")

	start = time.Now()
	l.startBackend("node3")
	f.waitPaths(api, 1)
	t.Logf("api's backend back: FRR has %s again %s later", api, time.Since(start).Round(time.Millisecond))
	l.waitAnswer("outside", "203.0.113.21:80", "node3")
	sent, lost := probe.stop()
	if sent == 0 || lost != 0 {
		t.Errorf("UDP to 203.0.113.20:53 while api went and came back: %d of %d datagrams lost", lost, sent)
	}
	t.Logf("UDP to 203.0.113.20:53 meanwhile: %d datagrams, %d lost", sent, lost)
}

// waitAnswer waits until a new connection from node to the HTTP VIP addr
// is answered, and fails the test unless the answer comes from one of the
// backends named and shows node's own address as the client's.
func (l *lab) waitAnswer(node, addr string, backends ...string) {
	l.t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		name, from, err := l.askFrom(node, addr)
		if err == nil {
			host, _, _ := net.SplitHostPort(from)
			if !slices.Contains(backends, name) || host != "198.51.100.2" {
				l.t.Fatalf("%s from %s: %s answered, seeing the client as %s; want one of %v seeing 198.51.100.2", addr, node, name, from, backends)
			}
			return
		}
		if time.Now().After(deadline) {
			l.t.Fatalf("%s from %s: no answer within %s: %v\n%s", addr, node, waitTimeout, err, l.app.Output())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitNoAnswer waits until a new connection from node to addr fails.
func (l *lab) waitNoAnswer(node, addr string) {
	l.t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		name, _, err := l.askFrom(node, addr)
		if err != nil {
			return
		}
		if time.Now().After(deadline) {
			l.t.Fatalf("%s from %s: %s still answers after %s", addr, node, name, waitTimeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// probe is one UDP flow that sends a datagram every probeEvery and counts
// the answers.
type probe struct {
	c        net.Conn
	sent     atomic.Int64
	answered atomic.Int64
	quit     chan struct{}
	once     sync.Once
	wg       sync.WaitGroup
}

const probeEvery = 10 * time.Millisecond

// startProbe starts a probe from node to the UDP server addr (the backend
// answers every datagram).
func (l *lab) startProbe(node, addr string) *probe {
	l.t.Helper()
	c, err := l.dialFrom(node, "udp", addr)
	if err != nil {
		l.t.Fatal(err)
	}
	p := &probe{c: c, quit: make(chan struct{})}
	p.wg.Go(func() {
		tick := time.NewTicker(probeEvery)
		defer tick.Stop()
		for {
			select {
			case <-p.quit:
				return
			case <-tick.C:
			}
			if _, err := c.Write([]byte("probe")); err == nil {
				p.sent.Add(1)
			}
		}
	})
	p.wg.Go(func() {
		buf := make([]byte, 512)
		for {
			if _, err := c.Read(buf); err == nil {
				p.answered.Add(1)
			} else if errors.Is(err, net.ErrClosed) {
				return
			}
			// Other errors (an ICMP error) count as no answer.
		}
	})
	l.t.Cleanup(p.close)
	return p
}

// stop stops sending, waits a while for the last answers, and returns how
// many datagrams were sent and how many got no answer.
func (p *probe) stop() (sent, lost int64) {
	p.once.Do(func() { close(p.quit) })
	deadline := time.Now().Add(5 * time.Second)
	for p.answered.Load() < p.sent.Load() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	p.close()
	return p.sent.Load(), p.sent.Load() - p.answered.Load()
}

// close ends the probe; it may be called more than once.
func (p *probe) close() {
	p.once.Do(func() { close(p.quit) })
	p.c.Close()
	p.wg.Wait()
}

// TestBGPGracefulRestart: with graceful restart on, the appliance tells FRR
// it can restart keeping its forwarding state; when it restarts, FRR keeps
// the VIPs (stale) instead of withdrawing them, the kernel keeps
// forwarding, and the new run refreshes them: a UDP flow from the outside
// client through FRR to a VIP loses no datagram across the restart.
func TestBGPGracefulRestart(t *testing.T) {
	l := upLab(t, bgpLab)
	for _, node := range []string{"node1", "node2", "node3"} {
		l.startBackend(node)
	}
	gr := strings.Replace(bgpHead, "  peers:\n", "  graceful-restart: {enabled: true, restart-time: 120s}\n  peers:\n", 1)
	l.writeConfig(upstreamVIPs + gr + upstreamPeer)
	l.startAppliance()
	f := l.startFRR("upstream", frrConf)
	web := netip.MustParsePrefix("203.0.113.20/32")
	f.waitPaths(web, 1)
	if got := f.gracefulRestart("10.0.4.1"); got.RemoteGrMode != "Restart" || got.Timers.ReceivedRestartTimer != 120 {
		t.Errorf("FRR sees graceful restart from the appliance as %+v, want mode Restart with a 120 s restart time", got)
	}
	l.waitAnswer("outside", "203.0.113.20:80", "node1", "node2")

	probe := l.startProbe("outside", "203.0.113.20:53")
	start := time.Now()
	if err := l.app.Stop(10 * time.Second); err != nil {
		t.Fatalf("stop: %v", err)
	}
	f.waitFor("the VIP's path marked stale", func() bool {
		paths := f.paths(web)
		if len(paths) != 1 {
			t.Fatalf("FRR has %d paths for %s while the appliance restarts, want its one path kept", len(paths), web)
		}
		return paths[0].Stale
	})
	l.startAppliance()
	f.waitFor("the VIP's path fresh again", func() bool {
		paths := f.paths(web)
		return len(paths) == 1 && !paths[0].Stale
	})
	t.Logf("appliance restarted: FRR's path fresh again %s after the stop", time.Since(start).Round(time.Millisecond))
	l.waitAnswer("outside", "203.0.113.20:80", "node1", "node2")
	sent, lost := probe.stop()
	if sent == 0 || lost != 0 {
		t.Errorf("UDP to 203.0.113.20:53 across the restart: %d of %d datagrams lost", lost, sent)
	}
	t.Logf("UDP to 203.0.113.20:53 across the restart: %d datagrams, %d lost", sent, lost)
}

// silence drops every packet to and from a node's link in its namespace,
// BGP and BFD alike, as if the node had hung (this kernel has no netem).
const silence = `table inet silence {
	chain in { type filter hook input priority -300; policy accept; iifname "eth0" drop; }
	chain out { type filter hook output priority -300; policy accept; oifname "eth0" drop; }
}
`

// TestBGPBFDFailover: three BIRD nodes announce one VIP; node1 and node2
// protect their sessions with BFD (100 ms × 3), node3 does not. node3 and
// node2 hang at once (nftables drops everything on their links): BFD takes
// node2's next hop out of the kernel route while node3's stays until its
// hold time (9 s) ends. Traffic keeps reaching node1. The times are
// printed, not asserted.
func TestBGPBFDFailover(t *testing.T) {
	l := upLab(t, bgpLab)
	vip := netip.MustParsePrefix("203.0.113.10/32")
	bfd := map[int]bool{1: true, 2: true}
	var peers string
	for n := 1; n <= 3; n++ {
		l.serveVIP(fmt.Sprintf("node%d", n), vip)
		extra := "accept: [203.0.113.0/24], hold-time: 9s, keepalive: 3s"
		if bfd[n] {
			extra += ", bfd: {enabled: true, interval: 100ms, multiplier: 3}"
		}
		peers += nodePeer(n, false, uint32(65000+n), extra)
	}
	rules := filepath.Join(l.dir, "silence.nft")
	if err := os.WriteFile(rules, []byte(silence), 0o644); err != nil {
		t.Fatal(err)
	}
	l.writeConfig(bgpHead + peers)
	l.startAppliance()
	var birds []*bird
	var hops []netip.Addr
	for n := 1; n <= 3; n++ {
		birds = append(birds, l.startBird(birdConf{N: n, ASN: uint32(65000 + n), BFD: bfd[n],
			Statics: []static{{Name: "vip", Routes: []string{vip.String()}}}}))
		hops = append(hops, nodeAddr(n, false))
	}
	l.waitRoute(vip, hops...)
	for n := 1; n <= 2; n++ {
		birds[n-1].waitFor("BFD session with the appliance up", func(out string) bool {
			for line := range strings.Lines(out) {
				if f := strings.Fields(line); len(f) > 2 && f[0] == applianceAddr(n, false).String() {
					return f[2] == "Up"
				}
			}
			return false
		}, "show", "bfd", "sessions")
	}
	target := net.JoinHostPort(vip.Addr().String(), "8080")
	l.wantReach(target, "node1", "node2", "node3")

	// Both hang at once, node3 first: only BFD can take node2's next hop
	// out while node3's is still there, waiting for its hold time.
	start := time.Now()
	for _, node := range []string{"node3", "node2"} {
		if _, err := l.Exec(context.Background(), node, "nft", "-f", rules); err != nil {
			t.Fatal(err)
		}
	}
	l.waitRoute(vip, hops[0], hops[2])
	l.waitLog(`msg="session down" component=bgp peer=node2 reason="BFD session down`, 1)
	t.Logf("node2 hangs (BFD 100 ms × 3): its next hop left the kernel route %s later", time.Since(start).Round(time.Millisecond))
	l.waitRoute(vip, hops[0])
	t.Logf("node3 hangs (no BFD, hold time 9 s): its next hop left the kernel route %s later", time.Since(start).Round(time.Millisecond))
	l.wantReach(target, "node1")
}
