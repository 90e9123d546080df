package config_test

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"portico.dev/appliance/control/config"
)

// node and upstream are valid peers; cases append keys (or change one with
// set) and close the brace.
const (
	node     = "{name: n1, address: 10.0.1.11, asn: 65001, role: node"
	upstream = "{name: up1, address: 192.0.2.1, asn: 64512, role: upstream"
)

// set replaces the value of one of the keys of a node or upstream peer.
func set(peer, key, value string) string {
	start := strings.Index(peer, key+": ") + len(key) + 2
	end := strings.IndexByte(peer[start:]+",", ',') + start
	return peer[:start] + value + peer[end:]
}

// bgp wraps peers in a bgp section with a valid asn and router-id.
func bgp(peers ...string) string {
	return "bgp: {asn: 65000, router-id: 10.0.0.1, peers: [" + strings.Join(peers, ", ") + "]}"
}

func TestParseBGP(t *testing.T) {
	tests := []struct {
		name string
		in   string
		env  []string
		want []string // nil: accepted
	}{
		// BGP is off without peers: nothing is required.
		{name: "empty bgp", in: "bgp: {}"},
		{name: "no peers, no asn, no router-id", in: "bgp: {listen-port: 1179, peers: []}"},
		{name: "a node and an upstream", in: bgp(node+"}", upstream+"}")},

		// asn
		{name: "asn missing with peers", in: "bgp: {router-id: 10.0.0.1, peers: [" + node + "}]}",
			want: []string{"bgp.asn: required when peers are configured"}},
		{name: "asn 0 with peers", in: "bgp: {asn: 0, router-id: 10.0.0.1, peers: [" + node + "}]}",
			want: []string{"bgp.asn: required when peers are configured"}},
		{name: "asn 0 from the environment", in: bgp(node + "}"), env: []string{"APPLIANCE_BGP_ASN=0"},
			want: []string{"bgp.asn: required when peers are configured"}},
		{name: "asn 0 without peers", in: "bgp: {asn: 0}"},
		{name: "asn 4294967295", in: "bgp: {asn: 4294967295, router-id: 10.0.0.1, peers: [" + set(node, "asn", "4294967295") + "}]}"},
		{name: "asn -1", in: "bgp: {asn: -1}", want: []string{"bgp.asn: -1 is out of range for uint32"}},
		{name: "asn 4294967296", in: "bgp: {asn: 4294967296}", want: []string{"bgp.asn: 4294967296 is out of range for uint32"}},
		{name: "peer asn missing", in: bgp("{name: n1, address: 10.0.1.11, role: node}"), want: []string{"bgp.peers[0].asn: required"}},
		{name: "peer asn 0", in: bgp(set(node, "asn", "0") + "}"), want: []string{"bgp.peers[0].asn: required"}},
		{name: "peer asn negative", in: bgp(set(node, "asn", "-65001") + "}"), want: []string{"bgp.peers[0].asn: -65001 is out of range for uint32"}},
		{name: "peer asn 4294967296", in: bgp(node+"}", set(upstream, "asn", "4294967296")+"}"),
			want: []string{"bgp.peers[1].asn: 4294967296 is out of range for uint32"}},
		{name: "ibgp peer", in: bgp(set(node, "asn", "65000") + "}")},

		// router-id
		{name: "router-id missing with peers", in: "bgp: {asn: 65000, peers: [" + node + "}]}",
			want: []string{"bgp.router-id: required when peers are configured"}},
		{name: "router-id ipv6", in: "bgp: {asn: 65000, router-id: '2001:db8::1', peers: [" + node + "}]}",
			want: []string{`bgp.router-id: not an IPv4 address: "2001:db8::1"`}},
		{name: "router-id v4-mapped", in: "bgp: {asn: 65000, router-id: '::ffff:10.0.0.1', peers: [" + node + "}]}",
			want: []string{`bgp.router-id: not an IPv4 address: "::ffff:10.0.0.1"`}},
		{name: "router-id a prefix", in: "bgp: {asn: 65000, router-id: 10.0.0.1/32, peers: [" + node + "}]}",
			want: []string{`bgp.router-id: not an IPv4 address: "10.0.0.1/32"`}},
		{name: "router-id a host name", in: "bgp: {router-id: edge1}", want: []string{`bgp.router-id: not an IPv4 address: "edge1"`}},
		{name: "router-id a number", in: "bgp: {router-id: 167772161}", want: []string{`bgp.router-id: not an IPv4 address: "167772161"`}},
		{name: "router-id 0.0.0.0", in: "bgp: {router-id: 0.0.0.0}", want: []string{"bgp.router-id: must not be 0.0.0.0"}},
		{name: "router-id from the environment", in: bgp(node + "}"), env: []string{"APPLIANCE_BGP_ROUTER_ID=2001:db8::1"},
			want: []string{`bgp.router-id: not an IPv4 address: "2001:db8::1"`}},
		{name: "router-id without peers", in: "bgp: {router-id: 192.0.2.254}"},

		// listen-port
		{name: "listen-port negative", in: "bgp: {listen-port: -1}", want: []string{"bgp.listen-port: must be 0..65535, not -1"}},
		{name: "listen-port 65536", in: "bgp: {listen-port: 65536}", want: []string{"bgp.listen-port: must be 0..65535, not 65536"}},
		{name: "listen-port 0", in: "bgp: {listen-port: 0}"},
		{name: "listen-port 65535", in: "bgp: {listen-port: 65535}"},

		// peers: name and address
		{name: "peer name missing", in: bgp("{address: 10.0.1.11, asn: 65001, role: node}"), want: []string{"bgp.peers[0].name: required"}},
		{name: "duplicate peer name", in: bgp(node+"}", set(upstream, "name", "n1")+"}"),
			want: []string{`bgp.peers[1].name: "n1" is already the name of bgp.peers[0]`}},
		{name: "duplicate peer address", in: bgp(node+"}", set(upstream, "address", "10.0.1.11")+"}"),
			want: []string{"bgp.peers[1].address: 10.0.1.11 is already the address of bgp.peers[0]"}},
		{name: "duplicate peer address, v6 spelt differently", in: bgp(set(node, "address", "'2001:db8::11'")+"}", set(upstream, "address", "'2001:0db8:0::0011'")+"}"),
			want: []string{"bgp.peers[1].address: 2001:db8::11 is already the address of bgp.peers[0]"}},
		{name: "duplicate name and address", in: bgp(node+"}", node+"}"),
			want: []string{`bgp.peers[1].name: "n1" is already the name of bgp.peers[0]`,
				"bgp.peers[1].address: 10.0.1.11 is already the address of bgp.peers[0]"}},
		{name: "peer address missing", in: bgp("{name: n1, asn: 65001, role: node}"), want: []string{`bgp.peers[0].address: not an IP address: ""`}},
		{name: "peer address a host name", in: bgp(set(node, "address", "node1.example.com") + "}"),
			want: []string{`bgp.peers[0].address: not an IP address: "node1.example.com"`}},
		{name: "peer address with a port", in: bgp(set(node, "address", "'10.0.1.11:179'") + "}"),
			want: []string{`bgp.peers[0].address: not an IP address: "10.0.1.11:179"`}},
		{name: "peer address a prefix", in: bgp(set(node, "address", "10.0.1.0/24") + "}"),
			want: []string{`bgp.peers[0].address: not an IP address: "10.0.1.0/24"`}},
		{name: "peer address zoned", in: bgp(set(node, "address", "'fe80::11%eth1'") + "}"),
			want: []string{"bgp.peers[0].address: fe80::11%eth1 has a zone, which is not supported yet; use a global or unique-local address"}},
		{name: "peer address link-local without zone", in: bgp(set(node, "address", "'fe80::11'") + "}"),
			want: []string{"bgp.peers[0].address: fe80::11 is link-local and would need a zone, which is not supported yet; use a global or unique-local address"}},
		{name: "peer address unspecified", in: bgp(set(node, "address", "'::'") + "}"),
			want: []string{"bgp.peers[0].address: :: cannot be a peer (unspecified, multicast, broadcast or v4-mapped)"}},
		{name: "peer address multicast", in: bgp(set(node, "address", "224.0.0.5") + "}"),
			want: []string{"bgp.peers[0].address: 224.0.0.5 cannot be a peer (unspecified, multicast, broadcast or v4-mapped)"}},
		{name: "peer address broadcast", in: bgp(set(node, "address", "255.255.255.255") + "}"),
			want: []string{"bgp.peers[0].address: 255.255.255.255 cannot be a peer (unspecified, multicast, broadcast or v4-mapped)"}},
		{name: "peer address v4-mapped", in: bgp(set(node, "address", "'::ffff:10.0.1.11'") + "}"),
			want: []string{"bgp.peers[0].address: ::ffff:10.0.1.11 cannot be a peer (unspecified, multicast, broadcast or v4-mapped)"}},
		{name: "peer address ipv6", in: bgp(set(node, "address", "'2001:db8:1::11'") + "}")},
		{name: "peer address ipv4 link-local", in: bgp(set(node, "address", "169.254.0.11") + "}")},
		{name: "peer address loopback", in: bgp(set(node, "address", "127.0.0.2") + "}")},

		// role
		{name: "role missing", in: bgp("{name: n1, address: 10.0.1.11, asn: 65001}"), want: []string{"bgp.peers[0].role: required (node or upstream)"}},
		{name: "role unknown", in: bgp(set(node, "role", "peer") + "}"), want: []string{`bgp.peers[0].role: must be node or upstream, not "peer"`}},
		{name: "role is lower case", in: bgp(set(node, "role", "Node") + "}"), want: []string{`bgp.peers[0].role: must be node or upstream, not "Node"`}},

		// password
		{name: "password 80 bytes", in: bgp(node + ", password: " + strings.Repeat("k", 80) + "}")},
		{name: "password 81 bytes", in: bgp(node + ", password: " + strings.Repeat("k", 81) + "}"),
			want: []string{"bgp.peers[0].password: must be at most 80 bytes (the TCP MD5 key limit), not 81"}},
		{name: "password counted in bytes", in: bgp(node + ", password: " + strings.Repeat("é", 41) + "}"),
			want: []string{"bgp.peers[0].password: must be at most 80 bytes (the TCP MD5 key limit), not 82"}},

		// multihop
		{name: "multihop negative", in: bgp(node + ", multihop: -1}"), want: []string{"bgp.peers[0].multihop: must be 0..255, not -1"}},
		{name: "multihop 256", in: bgp(node + ", multihop: 256}"), want: []string{"bgp.peers[0].multihop: must be 0..255, not 256"}},
		{name: "multihop 255", in: bgp(node + ", multihop: 255}")},

		// hold-time and keepalive
		{name: "hold-time 2s", in: bgp(node + ", hold-time: 2s}"), want: []string{"bgp.peers[0].hold-time: must be 3s..65535s, not 2s"}},
		{name: "hold-time negative", in: bgp(node + ", hold-time: -9s}"), want: []string{"bgp.peers[0].hold-time: must be 3s..65535s, not -9s"}},
		{name: "hold-time 65536s", in: bgp(node + ", hold-time: 65536s}"), want: []string{"bgp.peers[0].hold-time: must be 3s..65535s, not 65536s"}},
		{name: "hold-time a fraction", in: bgp(node + ", hold-time: 9500ms}"),
			want: []string{"bgp.peers[0].hold-time: must be a whole number of seconds, not 9.5s"}},
		{name: "hold-time without a unit", in: bgp(node + ", hold-time: 9}"),
			want: []string{"bgp.peers[0].hold-time: must be a whole number of seconds, not 9ns"}},
		{name: "hold-time 3s", in: bgp(node + ", hold-time: 3s}")},
		{name: "hold-time 65535s", in: bgp(node + ", hold-time: 65535s, keepalive: 21845s}")},
		{name: "keepalive above a third of the default hold-time", in: bgp(node + ", keepalive: 4s}"),
			want: []string{"bgp.peers[0].keepalive: must be at most a third of hold-time 9s, not 4s"}},
		{name: "keepalive above a third of hold-time", in: bgp(node + ", hold-time: 10s, keepalive: 4s}"),
			want: []string{"bgp.peers[0].keepalive: must be at most a third of hold-time 10s, not 4s"}},
		{name: "keepalive a third of hold-time", in: bgp(node + ", hold-time: 90s, keepalive: 30s}")},
		{name: "keepalive less than a third", in: bgp(node + ", hold-time: 10s, keepalive: 3s}")},
		{name: "keepalive negative", in: bgp(node + ", keepalive: -1s}"), want: []string{"bgp.peers[0].keepalive: must be 1s..65535s, not -1s"}},
		{name: "keepalive a fraction", in: bgp(node + ", keepalive: 1500ms}"),
			want: []string{"bgp.peers[0].keepalive: must be a whole number of seconds, not 1.5s"}},
		{name: "bad hold-time hides the ratio", in: bgp(node + ", hold-time: 2s, keepalive: 10s}"),
			want: []string{"bgp.peers[0].hold-time: must be 3s..65535s, not 2s"}},
		{name: "bad hold-time with defaulted keepalive", in: bgp(node + ", hold-time: 1s}"),
			want: []string{"bgp.peers[0].hold-time: must be 3s..65535s, not 1s"}},

		// bfd
		{name: "bfd interval 49ms", in: bgp(node + ", bfd: {enabled: true, interval: 49ms}}"),
			want: []string{"bgp.peers[0].bfd.interval: must be at least 50ms, not 49ms"}},
		{name: "bfd interval negative", in: bgp(node + ", bfd: {enabled: true, interval: -300ms}}"),
			want: []string{"bgp.peers[0].bfd.interval: must be at least 50ms, not -300ms"}},
		{name: "bfd interval without a unit", in: bgp(node + ", bfd: {enabled: true, interval: 300}}"),
			want: []string{"bgp.peers[0].bfd.interval: must be at least 50ms, not 300ns"}},
		{name: "bfd interval 50ms", in: bgp(node + ", bfd: {enabled: true, interval: 50ms}}")},
		{name: "bfd interval fraction of a microsecond", in: bgp(node + ", bfd: {enabled: true, interval: 50000001ns}}"),
			want: []string{"bgp.peers[0].bfd.interval: must be a whole number of microseconds, not 50.000001ms"}},
		{name: "bfd interval over 32 bits of microseconds", in: bgp(node + ", bfd: {enabled: true, interval: 4295s}}"),
			want: []string{"bgp.peers[0].bfd.interval: must be at most 1h11m34.967295s, not 1h11m35s"}},
		{name: "bfd multiplier 256", in: bgp(node + ", bfd: {enabled: true, multiplier: 256}}"),
			want: []string{"bgp.peers[0].bfd.multiplier: must be 1..255, not 256"}},
		{name: "bfd multiplier negative", in: bgp(node + ", bfd: {enabled: true, multiplier: -1}}"),
			want: []string{"bgp.peers[0].bfd.multiplier: must be 1..255, not -1"}},
		{name: "bfd multiplier 1 and 255", in: bgp(node+", bfd: {enabled: true, multiplier: 1}}", upstream+", bfd: {enabled: true, multiplier: 255}}")},
		{name: "bfd disabled is not checked", in: bgp(node + ", bfd: {enabled: false, interval: 10ms, multiplier: 300}}")},

		// accept and max-prefixes
		{name: "accept with host bits", in: bgp(node + ", accept: [203.0.113.0/24, 203.0.113.1/24]}"),
			want: []string{`bgp.peers[0].accept[1]: not a network prefix (address bits past the length must be zero): "203.0.113.1/24"`}},
		{name: "accept without a length", in: bgp(node + ", accept: [203.0.113.10]}"),
			want: []string{`bgp.peers[0].accept[0]: not a network prefix (address bits past the length must be zero): "203.0.113.10"`}},
		{name: "accept not a prefix", in: bgp(node + ", accept: [everything]}"),
			want: []string{`bgp.peers[0].accept[0]: not a network prefix (address bits past the length must be zero): "everything"`}},
		{name: "accept length too long", in: bgp(node + ", accept: [203.0.113.0/33]}"),
			want: []string{`bgp.peers[0].accept[0]: not a network prefix (address bits past the length must be zero): "203.0.113.0/33"`}},
		{name: "accept v4 and v6", in: bgp(node + ", accept: [203.0.113.0/24, '2001:db8::/32', 0.0.0.0/0]}")},
		{name: "accept on an upstream", in: bgp(upstream + ", accept: [203.0.113.0/24]}"),
			want: []string{"bgp.peers[0].accept: only for role node"}},
		{name: "empty accept on an upstream", in: bgp(upstream + ", accept: []}")},
		{name: "max-prefixes negative", in: bgp(node + ", max-prefixes: -1}"),
			want: []string{"bgp.peers[0].max-prefixes: must be 0 (no limit) or more, not -1"}},
		{name: "max-prefixes on an upstream", in: bgp(upstream + ", max-prefixes: 100}"),
			want: []string{"bgp.peers[0].max-prefixes: only for role node"}},
		{name: "max-prefixes negative on an upstream", in: bgp(upstream + ", max-prefixes: -1}"),
			want: []string{"bgp.peers[0].max-prefixes: must be 0 (no limit) or more, not -1"}},
		{name: "max-prefixes 0 on an upstream", in: bgp(upstream + ", max-prefixes: 0}")},

		// communities
		{name: "communities", in: bgp(upstream + ", communities: ['65000:100', 0:0, '65535:65535', '4294967295:4294967295:0', '65000:1:2']}")},
		{name: "community values above 65535", in: bgp(upstream + ", communities: ['65536:1', '1:65536']}"),
			want: []string{
				`bgp.peers[0].communities[0]: not a community (ASN:VALUE, each 0..65535) or large community (A:B:C, each 0..4294967295): "65536:1"`,
				`bgp.peers[0].communities[1]: not a community (ASN:VALUE, each 0..65535) or large community (A:B:C, each 0..4294967295): "1:65536"`}},
		{name: "large community value above 4294967295", in: bgp(upstream + ", communities: ['1:2:4294967296']}"),
			want: []string{`bgp.peers[0].communities[0]: not a community (ASN:VALUE, each 0..65535) or large community (A:B:C, each 0..4294967295): "1:2:4294967296"`}},
		{name: "malformed communities", in: bgp(upstream + ", communities: ['65000', '65000:', ':100', '65000:-1', '+1:2', '65000: 100', 'no-export', '1:2:3:4', '']}"),
			want: []string{
				`bgp.peers[0].communities[0]: not a community (ASN:VALUE, each 0..65535) or large community (A:B:C, each 0..4294967295): "65000"`,
				`bgp.peers[0].communities[1]: not a community (ASN:VALUE, each 0..65535) or large community (A:B:C, each 0..4294967295): "65000:"`,
				`bgp.peers[0].communities[2]: not a community (ASN:VALUE, each 0..65535) or large community (A:B:C, each 0..4294967295): ":100"`,
				`bgp.peers[0].communities[3]: not a community (ASN:VALUE, each 0..65535) or large community (A:B:C, each 0..4294967295): "65000:-1"`,
				`bgp.peers[0].communities[4]: not a community (ASN:VALUE, each 0..65535) or large community (A:B:C, each 0..4294967295): "+1:2"`,
				`bgp.peers[0].communities[5]: not a community (ASN:VALUE, each 0..65535) or large community (A:B:C, each 0..4294967295): "65000: 100"`,
				`bgp.peers[0].communities[6]: not a community (ASN:VALUE, each 0..65535) or large community (A:B:C, each 0..4294967295): "no-export"`,
				`bgp.peers[0].communities[7]: not a community (ASN:VALUE, each 0..65535) or large community (A:B:C, each 0..4294967295): "1:2:3:4"`,
				`bgp.peers[0].communities[8]: not a community (ASN:VALUE, each 0..65535) or large community (A:B:C, each 0..4294967295): ""`,
			}},
		{name: "communities on a node", in: bgp(node + ", communities: ['65000:100']}"),
			want: []string{"bgp.peers[0].communities: only for role upstream"}},
		{name: "empty communities on a node", in: bgp(node + ", communities: []}")},

		// graceful-restart
		{name: "restart-time 4096s", in: "bgp: {graceful-restart: {enabled: true, restart-time: 4096s}}",
			want: []string{"bgp.graceful-restart.restart-time: must be 1s..4095s, not 4096s"}},
		{name: "restart-time negative", in: "bgp: {graceful-restart: {enabled: true, restart-time: -1s}}",
			want: []string{"bgp.graceful-restart.restart-time: must be 1s..4095s, not -1s"}},
		{name: "restart-time a fraction", in: "bgp: {graceful-restart: {enabled: true, restart-time: 500ms}}",
			want: []string{"bgp.graceful-restart.restart-time: must be a whole number of seconds, not 500ms"}},
		{name: "restart-time from the environment", in: "bgp: {graceful-restart: {enabled: true}}", env: []string{"APPLIANCE_BGP_GRACEFUL_RESTART_RESTART_TIME=2h"},
			want: []string{"bgp.graceful-restart.restart-time: must be 1s..4095s, not 7200s"}},
		{name: "restart-time 1s and 4095s", in: "bgp: {graceful-restart: {enabled: true, restart-time: 1s}}"},
		{name: "restart-time 4095s", in: "bgp: {graceful-restart: {enabled: true, restart-time: 4095s}}"},
		{name: "restart-time not checked when disabled", in: "bgp: {graceful-restart: {enabled: false, restart-time: 5000s}}"},

		// Role-specific keys are judged only once the role is valid.
		{name: "bad role with node and upstream keys", in: bgp("{name: n1, address: 10.0.1.11, asn: 65001, accept: [203.0.113.0/24], max-prefixes: 10, communities: ['65000:1', 'x']}"),
			want: []string{"bgp.peers[0].role: required (node or upstream)",
				`bgp.peers[0].communities[1]: not a community (ASN:VALUE, each 0..65535) or large community (A:B:C, each 0..4294967295): "x"`}},

		// Every problem, in a fixed order: bgp after pools and before
		// management, peers in list order, keys in the order of the docs.
		{name: "all bgp problems at once", in: `
pools: [{name: ""}]
bgp:
  asn: 0
  router-id: 10.0.0.256
  listen-port: 70000
  graceful-restart: {enabled: true, restart-time: 1h30m}
  peers:
    - {name: n1, address: 10.0.1.11, role: node, multihop: 300, hold-time: 2s, bfd: {enabled: true, interval: 10ms, multiplier: 0}, accept: [10.0.0.1/8], communities: ['1:1']}
    - {name: n1, address: 10.0.1.11, asn: 65002, role: upstream, password: ` + strings.Repeat("x", 81) + `, keepalive: 5s, accept: [10.0.0.0/8], max-prefixes: 5, communities: ['1:2:3:4']}
management: {metrics: ':1'}
`, want: []string{
			"pools[0].name: required",
			"pools[0].cidrs: at least one prefix required",
			"bgp.asn: required when peers are configured",
			`bgp.router-id: not an IPv4 address: "10.0.0.256"`,
			"bgp.listen-port: must be 0..65535, not 70000",
			"bgp.graceful-restart.restart-time: must be 1s..4095s, not 5400s",
			"bgp.peers[0].asn: required",
			"bgp.peers[0].multihop: must be 0..255, not 300",
			"bgp.peers[0].hold-time: must be 3s..65535s, not 2s",
			"bgp.peers[0].bfd.interval: must be at least 50ms, not 10ms",
			`bgp.peers[0].accept[0]: not a network prefix (address bits past the length must be zero): "10.0.0.1/8"`,
			"bgp.peers[0].communities: only for role upstream",
			`bgp.peers[1].name: "n1" is already the name of bgp.peers[0]`,
			"bgp.peers[1].address: 10.0.1.11 is already the address of bgp.peers[0]",
			"bgp.peers[1].password: must be at most 80 bytes (the TCP MD5 key limit), not 81",
			"bgp.peers[1].keepalive: must be at most a third of hold-time 9s, not 5s",
			"bgp.peers[1].accept: only for role node",
			"bgp.peers[1].max-prefixes: only for role node",
			`bgp.peers[1].communities[0]: not a community (ASN:VALUE, each 0..65535) or large community (A:B:C, each 0..4294967295): "1:2:3:4"`,
			`management.metrics: not address:port: ":1"`,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := config.Parse([]byte(tt.in), tt.env)
			got := lines(t, err)
			if !match(got, tt.want) {
				t.Fatalf("Parse(%q) errors:\n%s\nwant:\n%s", tt.in, strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
			if (c == nil) != (tt.want != nil) {
				t.Errorf("Parse returned config %v with errors %v", c, got)
			}
		})
	}
}

// TestParseBGPDefaults: a full, valid bgp section parses cleanly, and the
// keys it leaves out (or sets to 0) take their documented defaults.
func TestParseBGPDefaults(t *testing.T) {
	c, err := config.Parse([]byte(`
bgp:
  asn: 65000
  router-id: 10.0.0.1
  graceful-restart: {enabled: true}
  peers:
    - name: node1
      address: 10.0.1.11
      asn: 65001
      role: node
      bfd: {enabled: true}
      accept: [203.0.113.0/24, "2001:db8:100::/48"]
      max-prefixes: 1000
    - name: node2
      address: "2001:db8:1::12"
      asn: 65001
      role: node
      hold-time: 10s
      bfd: {enabled: true, interval: 100ms, multiplier: 0}
    - name: upstream1
      address: 192.0.2.1
      asn: 4200000000
      role: upstream
      password: s3cret
      multihop: 2
      hold-time: 90s
      keepalive: 20s
      bfd: {enabled: false}
      communities: ["65000:100", "4200000000:1:2"]
`), nil)
	if err != nil {
		t.Fatal(err)
	}
	want := config.BGP{
		ASN: 65000, RouterID: "10.0.0.1", ListenPort: 179,
		GracefulRestart: config.GracefulRestart{Enabled: true, RestartTime: 120 * time.Second},
		Peers: []config.Peer{
			{
				Name: "node1", Address: "10.0.1.11", ASN: 65001, Role: "node",
				HoldTime: 9 * time.Second, Keepalive: 3 * time.Second,
				BFD:    config.BFD{Enabled: true, Interval: 300 * time.Millisecond, Multiplier: 3},
				Accept: []string{"203.0.113.0/24", "2001:db8:100::/48"}, MaxPrefixes: 1000,
			},
			{
				// keepalive follows hold-time: a third, in whole seconds.
				Name: "node2", Address: "2001:db8:1::12", ASN: 65001, Role: "node",
				HoldTime: 10 * time.Second, Keepalive: 3 * time.Second,
				BFD: config.BFD{Enabled: true, Interval: 100 * time.Millisecond, Multiplier: 3},
			},
			{
				// BFD off keeps its zero values.
				Name: "upstream1", Address: "192.0.2.1", ASN: 4200000000, Role: "upstream", Password: "s3cret",
				Multihop: 2, HoldTime: 90 * time.Second, Keepalive: 20 * time.Second,
				Communities: []string{"65000:100", "4200000000:1:2"},
			},
		},
	}
	if !reflect.DeepEqual(c.BGP, want) {
		t.Errorf("bgp parsed as\n%+v\nwant\n%+v", c.BGP, want)
	}
}

// TestParseBGPDefaultsOff: the defaults of graceful restart and BFD apply
// only when they are enabled; listen-port 0 means 179 either way.
func TestParseBGPDefaultsOff(t *testing.T) {
	c, err := config.Parse([]byte("bgp: {listen-port: 0, graceful-restart: {enabled: false}}"), nil)
	if err != nil {
		t.Fatal(err)
	}
	want := config.BGP{ListenPort: 179}
	if !reflect.DeepEqual(c.BGP, want) {
		t.Errorf("bgp parsed as %+v, want %+v", c.BGP, want)
	}
}
