package bgp

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"portico.dev/appliance/test/topo"
)

var grGlobal = func() Global {
	g := applianceGlobal
	g.GracefulRestart = GracefulRestart{Enabled: true, RestartTime: 30 * time.Second}
	return g
}()

// TestNodeGracefulRestart has two nodes announce a VIP, node1 with graceful restart
// (restart time 6 s), node2 without, and kills both BIRDs: node2's next hop goes at
// once, node1's stays, stale, until node1 comes back and sends End-of-RIB, and all
// along. Killed again and left down, node1's next hop goes when its restart time ends.
func TestNodeGracefulRestart(t *testing.T) {
	t.Parallel()
	lab := topo.UpT(t, labFile)
	sp := startSpeaker(t, lab)
	vip, accept := netip.MustParsePrefix("203.0.113.10/32"), netip.MustParsePrefix("203.0.113.0/24")
	_, hop1 := nodeAddrs(1, false)
	_, hop2 := nodeAddrs(2, false)
	via := func(hops ...netip.Addr) string { return routesString([]Learned{{Prefix: vip, NextHops: hops}}) }
	conf1 := nodeConf(1, false, 64512, statics("static1 "+vip.String()))
	conf1.RestartTime = 6
	b1 := startBird(t, lab, "node1", conf1)
	b2 := startBird(t, lab, "node2", nodeConf(2, false, 64512, statics("static1 "+vip.String())))
	sp.mustSet(Config{Global: grGlobal, Peers: []Peer{nodePeer(1, false, 64512, accept), nodePeer(2, false, 64512, accept)}})
	st := sp.waitFor("both next hops", func(st speakerState) bool {
		return routesString(st.Routes) == via(hop1, hop2) && st.established("node1", "node2")
	})
	if n, _ := st.neighbor("node1"); !n.GracefulRestart || n.Restarting || n.Stale != 0 {
		t.Errorf("node1: %+v, want graceful restart negotiated, nothing stale", n)
	}
	// node2's BIRD is only graceful-restart aware, its default: it advertises the
	// capability for no address family, so it cannot restart gracefully.

	b1.kill()
	b2.kill()
	st = sp.waitFor("node1 restarting, its route stale; node2 gone", func(st speakerState) bool {
		n, _ := st.neighbor("node1")
		return n.State != "established" && n.Restarting && n.Stale == 1 && routesString(st.Routes) == via(hop1)
	})
	if n, _ := st.neighbor("node2"); n.Restarting || n.Stale != 0 || n.Received != 0 {
		t.Errorf("node2, only aware of graceful restart, after BIRD was killed: %+v, want nothing kept", n)
	}
	b1.start()
	down := time.Now()
	for {
		st = sp.state()
		if got := routesString(st.Routes); got != via(hop1) {
			t.Fatalf("routes while node1 restarts: %s, want %s\nspeaker log:\n%s", got, via(hop1), sp.proc.Output())
		}
		if n, _ := st.neighbor("node1"); n.State == "established" && !n.Restarting && n.Stale == 0 {
			break
		}
		if time.Since(down) > waitTimeout {
			t.Fatalf("node1 not back within %s: %+v", waitTimeout, st.Neighbors)
		}
		time.Sleep(50 * time.Millisecond)
	}

	b1.kill()
	killed := time.Now()
	st = sp.waitFor("node1 restarting again", func(st speakerState) bool {
		n, _ := st.neighbor("node1")
		return n.Restarting
	})
	if got := routesString(st.Routes); got != via(hop1) {
		t.Errorf("routes while node1 restarts again: %s, want %s", got, via(hop1))
	}
	st = sp.waitFor("node1's stale route gone when its restart time ends", func(st speakerState) bool { return len(st.Routes) == 0 })
	t.Logf("node1's stale route stayed %s after it was killed (restart time %ds)", time.Since(killed).Round(100*time.Millisecond), conf1.RestartTime)
	if n, _ := st.neighbor("node1"); n.Restarting || n.Stale != 0 {
		t.Errorf("node1 after its restart time: %+v, want neither restarting nor stale routes", n)
	}
}

// TestApplianceGracefulRestart stops the speaker with graceful restart on: the upstream
// router keeps the appliance's routes, stale, all through the restart, and a new
// speaker's End-of-RIB refreshes them. Without graceful restart, stopping the speaker
// withdraws them at once.
func TestApplianceGracefulRestart(t *testing.T) {
	t.Parallel()
	lab := topo.UpT(t, labFile)
	vip := netip.MustParsePrefix("203.0.113.10/32")
	_, upAddr := nodeAddrs(4, false)
	upstream := Peer{Name: "upstream", Address: upAddr, ASN: 65100, Role: Upstream, HoldTime: 9 * time.Second, Keepalive: 3 * time.Second}
	up := startBird(t, lab, "upstream", nodeConf(4, false, 65100, nil))
	routed := func(out string) bool {
		return strings.Contains(out, vip.String()) && strings.Contains(out, "BGP.next_hop: 10.0.4.1")
	}
	show := []string{"show", "route", "all", "for", vip.String()}

	sp := startSpeaker(t, lab)
	sp.mustSet(Config{Global: grGlobal, Peers: []Peer{upstream}, Advertisements: []Advertisement{{vip}}})
	up.waitFor("the VIP from the appliance", routed, show...)
	if n, _ := sp.state().neighbor("upstream"); !n.GracefulRestart {
		t.Errorf("upstream: %+v, want graceful restart negotiated", n)
	}

	sp.stop()
	up.waitFor("BIRD in graceful restart for the appliance", func(out string) bool {
		return strings.Contains(out, "Neighbor graceful restart active")
	}, "show", "protocols", "all", "appliance")
	if out := up.mustBirdc(show...); !routed(out) {
		t.Fatalf("the upstream dropped the VIP when the appliance stopped gracefully:\n%s", out)
	}
	// Down for a while, as a restarting appliance is, with the route kept all along.
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
		if out := up.mustBirdc(show...); !routed(out) {
			t.Fatalf("the upstream dropped the VIP during the restart:\n%s", out)
		}
	}

	sp = startSpeaker(t, lab)
	sp.mustSet(Config{Global: grGlobal, Peers: []Peer{upstream}, Advertisements: []Advertisement{{vip}}})
	for start := time.Now(); ; time.Sleep(50 * time.Millisecond) {
		out, _ := up.birdc(show...)
		if !routed(out) {
			t.Fatalf("the upstream dropped the VIP when the appliance came back:\n%s\nspeaker log:\n%s", out, sp.proc.Output())
		}
		proto, _ := up.birdc("show", "protocols", "all", "appliance")
		if strings.Contains(proto, "Established") && !strings.Contains(proto, "graceful restart active") {
			break
		}
		if time.Since(start) > waitTimeout {
			t.Fatalf("the upstream's graceful restart does not end:\n%s\nspeaker log:\n%s", proto, sp.proc.Output())
		}
	}

	// Without graceful restart, a stop withdraws.
	sp.mustSet(Config{Global: applianceGlobal, Peers: []Peer{upstream}, Advertisements: []Advertisement{{vip}}})
	up.waitFor("the VIP from the appliance without graceful restart", routed, show...)
	sp.stop()
	up.waitFor("the VIP withdrawn", func(out string) bool { return !routed(out) }, show...)
}
