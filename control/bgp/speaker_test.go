package bgp

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"portico.dev/appliance/test/topo"
)

// nodePeer returns the appliance's peer for node n (1..3) of the lab.
func nodePeer(n int, v6 bool, asn uint32, accept ...netip.Prefix) Peer {
	_, addr := nodeAddrs(n, v6)
	return Peer{
		Name: fmt.Sprintf("node%d", n), Address: addr, ASN: asn, Role: Node,
		HoldTime: 9 * time.Second, Keepalive: 3 * time.Second, Accept: accept,
	}
}

func statics(routes ...string) map[string][]netip.Prefix {
	m := map[string][]netip.Prefix{}
	for _, r := range routes {
		name, pfx, _ := strings.Cut(r, " ")
		m[name] = append(m[name], netip.MustParsePrefix(pfx))
	}
	return m
}

// TestECMP has three nodes announce one VIP, then takes them away one by one: by
// stopping BIRD (the session goes down) and by withdrawing the route.
func TestECMP(t *testing.T) {
	for _, tc := range []struct {
		name string
		v6   bool
		asns [3]uint32
	}{
		// MetalLB and Calico usually give every node one ASN; some give each its own,
		// which makes the AS paths differ.
		{"ipv4 same ASN", false, [3]uint32{64512, 64512, 64512}},
		{"ipv4 different ASNs", false, [3]uint32{64601, 64602, 64603}},
		{"ipv6 same ASN", true, [3]uint32{64512, 64512, 64512}},
		{"ipv6 different ASNs", true, [3]uint32{64601, 64602, 64603}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			vip, accept := netip.MustParsePrefix("203.0.113.10/32"), netip.MustParsePrefix("203.0.113.0/24")
			if tc.v6 {
				vip, accept = netip.MustParsePrefix("2001:db8::10/128"), netip.MustParsePrefix("2001:db8::/64")
			}
			lab := topo.UpT(t, labFile)
			sp := startSpeaker(t, lab)
			cfg := Config{Global: applianceGlobal}
			var birds []*bird
			var hops []netip.Addr
			for i, asn := range tc.asns {
				n := i + 1
				cfg.Peers = append(cfg.Peers, nodePeer(n, tc.v6, asn, accept))
				birds = append(birds, startBird(t, lab, fmt.Sprintf("node%d", n), nodeConf(n, tc.v6, asn, statics("static1 "+vip.String()))))
				_, hop := nodeAddrs(n, tc.v6)
				hops = append(hops, hop)
			}
			sp.mustSet(cfg)

			via := func(hops ...netip.Addr) string { return routesString([]Learned{{Prefix: vip, NextHops: hops}}) }
			sp.waitFor("three next hops", func(st speakerState) bool {
				return routesString(st.Routes) == via(hops...) && st.established("node1", "node2", "node3")
			})

			birds[2].stop()
			st := sp.waitFor("node3 gone with its session", func(st speakerState) bool {
				return routesString(st.Routes) == via(hops[0], hops[1]) && !st.established("node3")
			})
			if n, _ := st.neighbor("node3"); n.Received != 0 || n.LastError == "" {
				t.Errorf("node3 after BIRD stopped: %+v, want nothing received and why the session ended", n)
			}

			birds[1].mustBirdc("disable", "static1")
			sp.waitFor("node2's withdrawn path gone", func(st speakerState) bool {
				return routesString(st.Routes) == via(hops[0]) && st.established("node1", "node2")
			})

			birds[0].mustBirdc("disable", "static1")
			sp.waitFor("the VIP gone with its last path", func(st speakerState) bool {
				return len(st.Routes) == 0 && st.established("node1", "node2")
			})

			birds[1].mustBirdc("enable", "static1")
			sp.waitFor("node2's path back", func(st speakerState) bool {
				return routesString(st.Routes) == via(hops[1])
			})
		})
	}
}

// TestAcceptAndMaxPrefixes has node1 announce a prefix outside its accept list, node2 more
// prefixes than max-prefixes allows, and node3 exactly as many.
func TestAcceptAndMaxPrefixes(t *testing.T) {
	t.Parallel()
	lab := topo.UpT(t, labFile)
	sp := startSpeaker(t, lab)
	accept := netip.MustParsePrefix("203.0.113.0/24")
	node1 := nodePeer(1, false, 64512, accept)
	node2 := nodePeer(2, false, 64512, accept)
	node2.MaxPrefixes = 2
	node3 := nodePeer(3, false, 64512, accept)
	node3.MaxPrefixes = 2
	sp.mustSet(Config{Global: applianceGlobal, Peers: []Peer{node1, node2, node3}})
	b1 := startBird(t, lab, "node1", nodeConf(1, false, 64512, statics("static1 203.0.113.10/32", "static2 198.51.100.0/24")))
	startBird(t, lab, "node2", nodeConf(2, false, 64512, statics("static1 203.0.113.20/32", "static1 203.0.113.21/32", "static1 203.0.113.22/32")))
	startBird(t, lab, "node3", nodeConf(3, false, 64512, statics("static1 203.0.113.30/32", "static1 203.0.113.31/32")))

	want := "203.0.113.10/32 via 10.0.1.2; 203.0.113.30/32 via 10.0.3.2; 203.0.113.31/32 via 10.0.3.2"
	st := sp.waitFor("node1's and node3's accepted routes, node2 shut down", func(st speakerState) bool {
		n1, _ := st.neighbor("node1")
		n2, _ := st.neighbor("node2")
		return routesString(st.Routes) == want && st.established("node1", "node3") &&
			n1.Received == 2 && n2.State != "established" && n2.LastError != ""
	})
	if n, _ := st.neighbor("node1"); n.Accepted != 1 || n.Rejected != 1 {
		t.Errorf("node1: %+v, want 1 accepted and 1 rejected", n)
	}
	if n, _ := st.neighbor("node2"); !strings.Contains(n.LastError, "max-prefixes 2") {
		t.Errorf("node2: last error %q, want it to name max-prefixes 2", n.LastError)
	}

	// node1 sends the refused prefix again, and again: it is logged once.
	for range 2 {
		b1.mustBirdc("disable", "static2")
		sp.waitFor("node1's refused prefix withdrawn", func(st speakerState) bool {
			n, _ := st.neighbor("node1")
			return n.Received == 1 && n.Rejected == 0
		})
		b1.mustBirdc("enable", "static2")
		sp.waitFor("node1's refused prefix sent again", func(st speakerState) bool {
			n, _ := st.neighbor("node1")
			return n.Received == 2 && n.Rejected == 1
		})
	}
	logs := sp.proc.Output()
	if n := countLines(logs, `msg="route refused"`, "peer=node1", "prefix=198.51.100.0/24", `reason="outside accept"`); n != 1 {
		t.Errorf("the refused prefix is logged %d times, want once:\n%s", n, logs)
	}
	if n := countLines(logs, "max-prefixes", "peer=node2", "max-prefixes=2", "level=ERROR"); n != 1 {
		t.Errorf("node2's shutdown is logged %d times, want once:\n%s", n, logs)
	}
	if routesString(sp.state().Routes) != want {
		t.Errorf("routes: %s, want %s", routesString(sp.state().Routes), want)
	}

	// A higher limit brings node2 back.
	node2.MaxPrefixes = 3
	sp.mustSet(Config{Global: applianceGlobal, Peers: []Peer{node1, node2, node3}})
	sp.waitFor("node2 back with its routes", func(st speakerState) bool {
		return st.established("node1", "node2", "node3") && strings.Count(routesString(st.Routes), "10.0.2.2") == 3
	})
}

// countLines counts the lines of text that contain every one of subs.
func countLines(text string, subs ...string) int {
	n := 0
	for line := range strings.Lines(text) {
		if !slices.ContainsFunc(subs, func(s string) bool { return !strings.Contains(line, s) }) {
			n++
		}
	}
	return n
}

// TestUpstream has the appliance announce two prefixes to an upstream router, one of them
// also announced by a node: the upstream gets them from the appliance, with its
// communities, and never the node's route; the node gets nothing.
func TestUpstream(t *testing.T) {
	t.Parallel()
	lab := topo.UpT(t, labFile)
	sp := startSpeaker(t, lab)
	vip, pool := netip.MustParsePrefix("203.0.113.10/32"), netip.MustParsePrefix("192.0.2.0/24")
	_, upAddr := nodeAddrs(4, false)
	upstream := Peer{Name: "upstream", Address: upAddr, ASN: 65100, Role: Upstream, HoldTime: 9 * time.Second, Keepalive: 3 * time.Second,
		Communities: []string{"65000:100", "65000:7:8"}}
	cfg := Config{
		Global:         applianceGlobal,
		Peers:          []Peer{nodePeer(1, false, 64512, netip.MustParsePrefix("203.0.113.0/24")), upstream},
		Advertisements: []Advertisement{{pool}, {vip}},
	}
	sp.mustSet(cfg)
	node := startBird(t, lab, "node1", nodeConf(1, false, 64512, statics("static1 "+vip.String())))
	up := startBird(t, lab, "upstream", nodeConf(4, false, 65100, nil))

	st := sp.waitFor("both sessions up, the node's route learned, two prefixes advertised upstream", func(st speakerState) bool {
		n, _ := st.neighbor("upstream")
		return st.established("node1", "upstream") && n.Advertised == 2 && routesString(st.Routes) == vip.String()+" via 10.0.1.2"
	})
	if n, _ := st.neighbor("node1"); n.Advertised != 0 {
		t.Errorf("node1: %+v, want nothing advertised to it", n)
	}
	for _, pfx := range []netip.Prefix{pool, vip} {
		out := up.waitFor(pfx.String()+" from the appliance", func(out string) bool {
			return strings.Contains(out, "BGP.next_hop: 10.0.4.1") && strings.Contains(out, "BGP.as_path: 65000\n")
		}, "show", "route", "all", "for", pfx.String())
		for _, want := range []string{"BGP.community: (65000,100)", "BGP.large_community: (65000, 7, 8)"} {
			if !strings.Contains(out, want) {
				t.Errorf("upstream's route to %s lacks %q:\n%s", pfx, want, out)
			}
		}
		if strings.Contains(out, "10.0.1.2") || strings.Contains(out, "64512") {
			t.Errorf("upstream got node1's route to %s:\n%s", pfx, out)
		}
	}
	if out := node.mustBirdc("show", "route", "protocol", "appliance"); strings.Contains(out, "/") {
		t.Errorf("node1 got routes from the appliance:\n%s", out)
	}

	session := up.session()
	cfg.Advertisements = []Advertisement{{vip}}
	cfg.Peers[1].Communities = []string{"65000:200"}
	sp.mustSet(cfg)
	up.waitFor(pool.String()+" withdrawn", func(out string) bool { return strings.Contains(out, "Network not found") },
		"show", "route", "for", pool.String())
	out := up.waitFor(vip.String()+" with the new community", func(out string) bool {
		return strings.Contains(out, "BGP.community: (65000,200)")
	}, "show", "route", "all", "for", vip.String())
	if strings.Contains(out, "large_community") || strings.Contains(out, "(65000,100)") {
		t.Errorf("upstream's route to %s keeps the old communities:\n%s", vip, out)
	}
	if now := up.session(); !oneSession(now, session) {
		t.Errorf("upstream's session was reset by changing its communities: %q, then %q", session, now)
	}
}

// TestSetKeepsSessions changes the peers at run time: the sessions of the peers that stay
// are not reset. Then a new Global restarts every session, and stopping the speaker
// closes them.
func TestSetKeepsSessions(t *testing.T) {
	t.Parallel()
	lab := topo.UpT(t, labFile)
	sp := startSpeaker(t, lab)
	vip, accept := netip.MustParsePrefix("203.0.113.10/32"), netip.MustParsePrefix("203.0.113.0/24")
	cfg := Config{Global: applianceGlobal}
	var birds []*bird
	for n := 1; n <= 3; n++ {
		cfg.Peers = append(cfg.Peers, nodePeer(n, false, 64512, accept))
		birds = append(birds, startBird(t, lab, fmt.Sprintf("node%d", n), nodeConf(n, false, 64512, statics("static1 "+vip.String(), "static2 198.51.100.0/24"))))
	}
	sp.mustSet(cfg)
	sp.mustSet(cfg) // the same again changes nothing
	sp.waitFor("three sessions and next hops", func(st speakerState) bool {
		return st.established("node1", "node2", "node3") && routesString(st.Routes) == vip.String()+" via 10.0.1.2,10.0.2.2,10.0.3.2"
	})
	sessions := []string{birds[0].session(), birds[1].session()}
	time.Sleep(1500 * time.Millisecond) // so that a reset would show in BIRD's since, to the millisecond, and in Uptime
	before, _ := sp.state().neighbor("node1")

	// Remove node3, add an upstream, let node1 announce one more prefix.
	_, upAddr := nodeAddrs(4, false)
	cfg.Peers = append(cfg.Peers[:2], Peer{Name: "upstream", Address: upAddr, ASN: 65100, Role: Upstream})
	cfg.Peers[0].Accept = []netip.Prefix{accept, netip.MustParsePrefix("198.51.100.0/24")}
	up := startBird(t, lab, "upstream", nodeConf(4, false, 65100, nil))
	changed := time.Now()
	sp.mustSet(cfg)
	st := sp.waitFor("node3 gone, upstream up, node1's new prefix", func(st speakerState) bool {
		_, node3 := st.neighbor("node3")
		return !node3 && st.established("node1", "node2", "upstream") &&
			routesString(st.Routes) == "198.51.100.0/24 via 10.0.1.2; "+vip.String()+" via 10.0.1.2,10.0.2.2"
	})
	for i, b := range birds[:2] {
		if now := b.session(); !oneSession(now, sessions[i]) {
			t.Errorf("%s's session was reset: %q, then %q", b.node, sessions[i], now)
		}
	}
	if after, _ := st.neighbor("node1"); after.Uptime < before.Uptime+time.Since(changed)-time.Second {
		t.Errorf("node1's uptime went from %s to %s in %s", before.Uptime, after.Uptime, time.Since(changed))
	}
	birds[2].waitFor("node3's session closed", func(out string) bool { return !strings.Contains(out, "Established") },
		"show", "protocols", "appliance")

	// A new router ID restarts the server: every session is established again.
	cfg.Global.RouterID = netip.MustParseAddr("10.0.0.2")
	sp.mustSet(cfg)
	sp.waitFor("the sessions back", func(st speakerState) bool { return st.established("node1", "node2", "upstream") })
	for i, b := range birds[:2] {
		b.waitFor("a new session", func(out string) bool {
			return strings.Contains(out, "Established") && !strings.Contains(out, strings.Fields(sessions[i])[4])
		}, "show", "protocols", "appliance")
	}

	sp.stop()
	for _, b := range []*bird{birds[0], birds[1], up} {
		b.waitFor("session closed by the stopping speaker", func(out string) bool { return !strings.Contains(out, "Established") },
			"show", "protocols", "appliance")
	}
}

// TestCountsAfterBurst: an upstream router announces routes right after its session
// comes up, which the speaker refuses but gobgp counts. Route updates alone list
// gobgp's peers at most every listEvery, so the count must still arrive once the
// burst is over, with no event after it.
func TestCountsAfterBurst(t *testing.T) {
	t.Parallel()
	lab := topo.UpT(t, labFile)
	sp := startSpeaker(t, lab)
	_, upAddr := nodeAddrs(4, false)
	sp.mustSet(Config{
		Global: applianceGlobal,
		Peers:  []Peer{{Name: "upstream", Address: upAddr, ASN: 65100, Role: Upstream, HoldTime: 9 * time.Second, Keepalive: 3 * time.Second}},
	})
	startBird(t, lab, "upstream", nodeConf(4, false, 65100, statics("static1 198.51.100.0/24", "static1 198.51.100.128/25", "static1 198.51.100.192/26")))
	sp.waitFor("the upstream's three routes counted", func(st speakerState) bool {
		n, _ := st.neighbor("upstream")
		return st.established("upstream") && n.Received == 3
	})
}
