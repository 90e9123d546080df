package bgp

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

func validConfig() Config {
	return Config{
		Global: Global{ASN: 65000, RouterID: netip.MustParseAddr("10.0.0.1")},
		Peers: []Peer{
			{Name: "node1", Address: netip.MustParseAddr("10.0.1.2"), ASN: 64512, Role: Node,
				HoldTime: 9 * time.Second, Keepalive: 3 * time.Second,
				Accept: []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")}, MaxPrefixes: 100},
			{Name: "up", Address: netip.MustParseAddr("fd00:4::2"), ASN: 65100, Role: Upstream,
				Communities: []string{"65000:100", "4200000000:1:2"}},
		},
		Advertisements: []Advertisement{{netip.MustParsePrefix("192.0.2.0/24")}, {netip.MustParsePrefix("2001:db8::/64")}},
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(*Config)
		want []string // substrings of the error; none for a valid config
	}{
		{"valid", func(*Config) {}, nil},
		{"BGP off", func(c *Config) { *c = Config{} }, nil},
		{"peers without an ASN", func(c *Config) { c.Global.ASN = 0 }, []string{"global asn: required when there are peers"}},
		{"router-id IPv6", func(c *Config) { c.Global.RouterID = netip.MustParseAddr("::1") }, []string{"global router-id"}},
		{"router-id missing", func(c *Config) { c.Global.RouterID = netip.Addr{} }, []string{"global router-id"}},
		{"listen port", func(c *Config) { c.Global.ListenPort = 70000 }, []string{"global listen-port: must be -1..65535, not 70000"}},
		{"no listening", func(c *Config) { c.Global.ListenPort = -1 }, nil},
		{"duplicate name", func(c *Config) { c.Peers[1].Name = "node1" }, []string{`peer "node1": name: used by another peer`}},
		{"no name", func(c *Config) { c.Peers[1].Name = "" }, []string{"peer #1: name: required"}},
		{"duplicate address", func(c *Config) { c.Peers[1].Address = c.Peers[0].Address; c.Peers[1].Communities = nil },
			[]string{`peer "up": address: 10.0.1.2 is the address of peer "node1" too`}},
		{"no address", func(c *Config) { c.Peers[0].Address = netip.Addr{} }, []string{`peer "node1": address: required`}},
		{"link-local address", func(c *Config) { c.Peers[1].Address = netip.MustParseAddr("fe80::1") }, []string{`peer "up": address: fe80::1 is link-local`}},
		{"multicast address", func(c *Config) { c.Peers[0].Address = netip.MustParseAddr("224.0.0.5") }, []string{`peer "node1": address: 224.0.0.5 cannot be a peer`}},
		{"v4-mapped address", func(c *Config) { c.Peers[0].Address = netip.MustParseAddr("::ffff:10.0.1.2") }, []string{"cannot be a peer"}},
		{"no ASN", func(c *Config) { c.Peers[0].ASN = 0 }, []string{`peer "node1": asn: required`}},
		{"no role", func(c *Config) { c.Peers[0].Role = 0 }, []string{`peer "node1": role: must be node or upstream, not Role(0)`}},
		{"long password", func(c *Config) { c.Peers[0].Password = strings.Repeat("x", 81) }, []string{"password: at most 80 bytes"}},
		{"multihop", func(c *Config) { c.Peers[0].Multihop = 256 }, []string{"multihop: must be 0..255, not 256"}},
		{"hold time fraction", func(c *Config) { c.Peers[0].HoldTime = 9500 * time.Millisecond }, []string{"hold-time: must be a whole number of seconds, not 9.5s"}},
		{"hold time too short", func(c *Config) { c.Peers[0].HoldTime = 2 * time.Second }, []string{"hold-time: must be 3..65535 seconds, not 2s"}},
		{"keepalive too long", func(c *Config) { c.Peers[0].Keepalive = 4 * time.Second }, []string{"keepalive: must be at most a third of the hold time 9s, not 4s"}},
		{"max-prefixes", func(c *Config) { c.Peers[0].MaxPrefixes = -1 }, []string{"max-prefixes: must be 0 (no limit) or more, not -1"}},
		{"accept host bits", func(c *Config) { c.Peers[0].Accept = []netip.Prefix{netip.MustParsePrefix("203.0.113.1/24")} },
			[]string{`peer "node1": accept: 203.0.113.1/24 is not a network prefix`}},
		{"accept on upstream", func(c *Config) { c.Peers[1].Accept = c.Peers[0].Accept }, []string{`peer "up": accept: only for role node`}},
		{"communities on node", func(c *Config) { c.Peers[0].Communities = []string{"65000:1"} }, []string{`peer "node1": communities: only for role upstream`}},
		{"bad community", func(c *Config) { c.Peers[1].Communities = []string{"65000:70000", "1:2:3:4"} },
			[]string{`communities: "65000:70000" is neither`, `communities: "1:2:3:4" is neither`}},
		{"advertisement host bits", func(c *Config) { c.Advertisements[0].Prefix = netip.MustParsePrefix("192.0.2.1/24") },
			[]string{"advertisement 192.0.2.1/24: not a network prefix"}},
		{"advertisement twice", func(c *Config) { c.Advertisements[1] = c.Advertisements[0] }, []string{"advertisement 192.0.2.0/24: listed twice"}},
		{"BFD", func(c *Config) { c.Peers[0].BFD = BFD{Interval: 300 * time.Millisecond, Multiplier: 3} }, nil},
		{"BFD too fast", func(c *Config) { c.Peers[0].BFD = BFD{Interval: 5 * time.Millisecond, Multiplier: 3} },
			[]string{`peer "node1": bfd interval: must be 10ms..1h11m34.967295s, not 5ms`}},
		{"BFD nanoseconds", func(c *Config) { c.Peers[0].BFD = BFD{Interval: 300*time.Millisecond + 1, Multiplier: 3} },
			[]string{"bfd interval: must be a whole number of microseconds, not 300.000001ms"}},
		{"BFD without interval", func(c *Config) { c.Peers[0].BFD = BFD{Multiplier: 3} }, []string{"bfd interval: must be 10ms.."}},
		{"BFD multiplier", func(c *Config) { c.Peers[0].BFD = BFD{Interval: time.Second, Multiplier: 256} },
			[]string{"bfd multiplier: must be 1..255, not 256"}},
		{"BFD without multiplier", func(c *Config) { c.Peers[0].BFD = BFD{Interval: time.Second} }, []string{"bfd multiplier: must be 1..255, not 0"}},
		{"graceful restart", func(c *Config) {
			c.Global.GracefulRestart = GracefulRestart{Enabled: true, RestartTime: 120 * time.Second}
		}, nil},
		{"restart time too long", func(c *Config) {
			c.Global.GracefulRestart = GracefulRestart{Enabled: true, RestartTime: 4096 * time.Second}
		},
			[]string{"global: graceful-restart restart-time: must be 1..4095 seconds, not 1h8m16s"}},
		{"restart time missing", func(c *Config) { c.Global.GracefulRestart = GracefulRestart{Enabled: true} },
			[]string{"graceful-restart restart-time: must be 1..4095 seconds, not 0s"}},
		{"restart time without graceful restart", func(c *Config) { c.Global.GracefulRestart = GracefulRestart{RestartTime: time.Minute} },
			[]string{"graceful-restart restart-time: set, but graceful restart is off"}},
		{"several at once", func(c *Config) { c.Peers[0].ASN = 0; c.Peers[1].Multihop = -1 }, []string{`peer "node1": asn`, `peer "up": multihop`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := validConfig()
			tc.edit(&c)
			err := validate(c)
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("validate: %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("validate: nil, want an error with %q", tc.want)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("validate: %v\nwant it to contain %q", err, w)
				}
			}
		})
	}
}
