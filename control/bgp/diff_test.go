package bgp

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// planString renders p one step a line, such as "add node1" or "announce 192.0.2.0/24".
func planString(p plan) string {
	var b strings.Builder
	for _, step := range []struct {
		verb  string
		peers []Peer
	}{{"remove", p.remove}, {"add", p.add}, {"update", p.update}} {
		for _, peer := range step.peers {
			fmt.Fprintf(&b, "%s %s\n", step.verb, peer.Name)
		}
	}
	for _, pfx := range p.announce {
		fmt.Fprintf(&b, "announce %s\n", pfx)
	}
	for _, pfx := range p.withdraw {
		fmt.Fprintf(&b, "withdraw %s\n", pfx)
	}
	return b.String()
}

func TestDiff(t *testing.T) {
	base := validConfig()
	for _, tc := range []struct {
		name string
		edit func(*Config)
		want string
	}{
		{"nothing changes", func(*Config) {}, ""},
		{"a peer comes", func(c *Config) {
			c.Peers = append(c.Peers, Peer{Name: "node2", Address: netip.MustParseAddr("10.0.2.2"), ASN: 64512, Role: Node})
		}, "add node2\n"},
		{"a peer goes", func(c *Config) { c.Peers = c.Peers[1:] }, "remove node1\n"},
		{"new accept list keeps the session", func(c *Config) {
			c.Peers[0].Accept = append(c.Peers[0].Accept, netip.MustParsePrefix("198.51.100.0/24"))
		}, "update node1\n"},
		{"new communities keep the session", func(c *Config) { c.Peers[1].Communities = []string{"65000:200"} }, "update up\n"},
		{"new ASN resets the session", func(c *Config) { c.Peers[0].ASN = 64513 }, "remove node1\nadd node1\n"},
		{"new hold time resets the session", func(c *Config) { c.Peers[0].HoldTime = 30 * time.Second }, "remove node1\nadd node1\n"},
		{"new max-prefixes resets the session", func(c *Config) { c.Peers[0].MaxPrefixes = 200 }, "remove node1\nadd node1\n"},
		{"BFD resets the session", func(c *Config) { c.Peers[0].BFD = BFD{Interval: time.Second, Multiplier: 3} }, "remove node1\nadd node1\n"},
		{"new role resets the session", func(c *Config) { c.Peers[1].Role = Node; c.Peers[1].Communities = nil }, "remove up\nadd up\n"},
		{"a renamed peer is another peer", func(c *Config) { c.Peers[0].Name = "node9" }, "remove node1\nadd node9\n"},
		{"peers in another order", func(c *Config) { c.Peers[0], c.Peers[1] = c.Peers[1], c.Peers[0] }, ""},
		{"advertisements change", func(c *Config) {
			c.Advertisements = []Advertisement{{netip.MustParsePrefix("2001:db8::/64")}, {netip.MustParsePrefix("198.51.100.0/24")}}
		}, "announce 198.51.100.0/24\nwithdraw 192.0.2.0/24\n"},
		{"everything goes", func(c *Config) { *c = Config{Global: c.Global} }, "remove node1\nremove up\nwithdraw 192.0.2.0/24\nwithdraw 2001:db8::/64\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			next := validConfig()
			tc.edit(&next)
			if got := planString(diff(base, next)); got != tc.want {
				t.Errorf("diff:\n%swant:\n%s", got, tc.want)
			}
		})
	}
}

func TestDiffFromNothing(t *testing.T) {
	want := "add node1\nadd up\nannounce 192.0.2.0/24\nannounce 2001:db8::/64\n"
	if got := planString(diff(Config{}, validConfig())); got != want {
		t.Errorf("diff:\n%swant:\n%s", got, want)
	}
}

func TestGlobalEqual(t *testing.T) {
	g := Global{ASN: 65000, RouterID: netip.MustParseAddr("10.0.0.1"), ListenAddrs: []netip.Addr{netip.MustParseAddr("10.0.0.1")}}
	same := g
	same.ListenAddrs = []netip.Addr{netip.MustParseAddr("10.0.0.1")}
	if !g.equal(same) {
		t.Error("equal Globals differ")
	}
	for _, edit := range []func(*Global){
		func(g *Global) { g.ASN++ },
		func(g *Global) { g.RouterID = netip.MustParseAddr("10.0.0.2") },
		func(g *Global) { g.ListenPort = -1 },
		func(g *Global) { g.ListenAddrs = nil },
		func(g *Global) { g.GracefulRestart = GracefulRestart{Enabled: true, RestartTime: time.Minute} },
	} {
		other := same
		edit(&other)
		if g.equal(other) {
			t.Errorf("%+v equals %+v", g, other)
		}
	}
}
