package config_test

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"portico.dev/appliance/configs"
	"portico.dev/appliance/control/config"
)

// lines returns the "path: reason" lines of a Parse error, nil for none.
func lines(t *testing.T, err error) []string {
	t.Helper()
	if err == nil {
		return nil
	}
	var es config.Errors
	if !errors.As(err, &es) {
		t.Fatalf("error is %T, not config.Errors: %v", err, err)
	}
	out := make([]string, len(es))
	for i, e := range es {
		out[i] = e.Error()
	}
	if got := err.Error(); got != strings.Join(out, "\n") {
		t.Errorf("Error() = %q, want the lines joined by newlines", got)
	}
	return out
}

// match compares error lines with wanted ones. A wanted line ending in "…"
// matches any line starting with what comes before it: the reasons of
// type errors come from mapstructure and strconv, not from this package.
func match(got, want []string) bool {
	if len(got) != len(want) {
		return false
	}
	for i, w := range want {
		if p, ok := strings.CutSuffix(w, "…"); ok {
			if !strings.HasPrefix(got[i], p) || len(got[i]) == len(p) {
				return false
			}
		} else if got[i] != w {
			return false
		}
	}
	return true
}

// vip is a valid VIP with one backend; cases append or override keys.
const vip = "{name: web, address: 203.0.113.10, port: 80, backends: [{address: 10.0.1.11:8080}]"

func TestParse(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []string // nil: accepted
	}{
		{name: "empty document", in: ""},
		{name: "minimal vip", in: "vips: [" + vip + "}]"},
		{name: "the file's own comments and blank keys", in: "# nothing\nvips:\npools:\n"},

		// Syntax and types.
		{name: "not yaml", in: "vips: [\n\t{", want: []string{"(file): …"}},
		{name: "port not a number", in: "vips: [{name: web, address: 203.0.113.10, port: abc}]",
			want: []string{"vips[0].port: …"}},
		{name: "weight not a number", in: "vips: [{name: web, address: 203.0.113.10, port: 80, backends: [{address: 10.0.1.11:8080, weight: heavy}]}]",
			want: []string{"vips[0].backends[0].weight: …"}},
		{name: "snat not a bool", in: "vips: [" + vip + ", snat: maybe}]",
			want: []string{"vips[0].snat: …"}},
		{name: "interval not a duration", in: "vips: [" + vip + ", health: {type: tcp, interval: often}}]",
			want: []string{"vips[0].health.interval: …"}},
		{name: "asn not a number", in: "bgp: {asn: private}", want: []string{"bgp.asn: …"}},
		{name: "list where a map belongs", in: "log: [info]", want: []string{"log: …"}},
		{name: "scalar where a map belongs", in: "log: info", want: []string{"log: …"}},
		{name: "list where a string belongs", in: "name: [a, b]", want: []string{"name: …"}},

		// Unknown keys, wherever they are.
		{name: "unknown top-level key", in: "colour: red", want: []string{"colour: unknown key"}},
		{name: "unknown key in log", in: "log: {level: info, colour: red}", want: []string{"log.colour: unknown key"}},
		{name: "unknown key in a vip", in: "vips: [" + vip + ", weight: 3}]",
			want: []string{"vips[0].weight: unknown key"}},
		{name: "unknown key in the second vip", in: "vips: [" + vip + "}, {name: dns, address: 203.0.113.10, port: 53, proto: udp}]",
			want: []string{"vips[1].proto: unknown key"}},
		{name: "unknown key in a backend", in: "vips: [{name: web, address: 203.0.113.10, port: 80, backends: [{address: 10.0.1.11:8080}, {address: 10.0.1.12:8080, wieght: 2}]}]",
			want: []string{"vips[0].backends[1].wieght: unknown key"}},
		{name: "unknown key in health", in: "vips: [" + vip + ", health: {type: tcp, retries: 3}}]",
			want: []string{"vips[0].health.retries: unknown key"}},
		{name: "unknown key in a pool", in: "pools: [{name: public, cidr: 203.0.113.0/24}]",
			want: []string{"pools[0].cidr: unknown key", "pools[0].cidrs: at least one prefix required"}},
		{name: "unknown keys deep in bgp", in: "bgp: {asn: 65000, router-id: 10.0.0.1, graceful-restart: {enable: true}, peers: [{name: a, address: 10.0.1.11, asn: 65001, role: node, bfd: {enabled: true, min-rx: 1}}]}",
			want: []string{"bgp.graceful-restart.enable: unknown key", "bgp.peers[0].bfd.min-rx: unknown key"}},
		{name: "unknown key in kubernetes clusters", in: "kubernetes: {clusters: [{name: prod, context: x}]}",
			want: []string{"kubernetes.clusters[0].context: unknown key", "kubernetes.clusters[0].kubeconfig: required"}},
		{name: "unknown key in management", in: "management: {gnmi: {tls: {ca: x}, users: [{name: a, password: x}]}}",
			want: []string{"management.gnmi.tls.ca: unknown key", "management.gnmi.users[0].password: unknown key"}},
		{name: "keys are case-sensitive", in: "Name: edge1", want: []string{"Name: unknown key"}},
		{name: "unknown keys come with the other problems", in: "colour: red\nlog: {level: loud}",
			want: []string{"colour: unknown key", `log.level: must be debug, info, warn or error, not "loud"`}},
		{name: "unknown keys come with type errors", in: "vips: [{name: web, address: 203.0.113.10, port: abc, colour: red}]",
			want: []string{"vips[0].colour: unknown key", "vips[0].port: …"}},

		// log
		{name: "log level", in: "log: {level: loud}", want: []string{`log.level: must be debug, info, warn or error, not "loud"`}},
		{name: "log format", in: "log: {format: xml}", want: []string{`log.format: must be text or json, not "xml"`}},
		{name: "log all good", in: "log: {level: debug, format: json}"},

		// vips: names and addresses
		{name: "name missing", in: "vips: [{address: 203.0.113.10, port: 80}]", want: []string{"vips[0].name: required"}},
		{name: "duplicate name", in: "vips: [" + vip + "}, {name: web, address: 203.0.113.11, port: 80}]",
			want: []string{`vips[1].name: "web" is already the name of vips[0]`}},
		{name: "address missing", in: "vips: [{name: web, port: 80}]", want: []string{`vips[0].address: not an IP address: ""`}},
		{name: "address a host name", in: "vips: [{name: web, address: www.example.com, port: 80}]",
			want: []string{`vips[0].address: not an IP address: "www.example.com"`}},
		{name: "address a prefix", in: "vips: [{name: web, address: 203.0.113.10/32, port: 80}]",
			want: []string{`vips[0].address: not an IP address: "203.0.113.10/32"`}},
		{name: "address unspecified", in: "vips: [{name: web, address: 0.0.0.0, port: 80}]",
			want: []string{"vips[0].address: 0.0.0.0 cannot be a VIP (unspecified, multicast, loopback, zoned or v4-mapped)"}},
		{name: "address loopback", in: "vips: [{name: web, address: '::1', port: 80}]",
			want: []string{"vips[0].address: ::1 cannot be a VIP (unspecified, multicast, loopback, zoned or v4-mapped)"}},
		{name: "address multicast", in: "vips: [{name: web, address: 239.1.1.1, port: 80}]",
			want: []string{"vips[0].address: 239.1.1.1 cannot be a VIP (unspecified, multicast, loopback, zoned or v4-mapped)"}},
		{name: "address v4-mapped", in: "vips: [{name: web, address: '::ffff:203.0.113.10', port: 80}]",
			want: []string{"vips[0].address: ::ffff:203.0.113.10 cannot be a VIP (unspecified, multicast, loopback, zoned or v4-mapped)"}},
		{name: "address zoned", in: "vips: [{name: web, address: 'fe80::1%eth0', port: 80}]",
			want: []string{"vips[0].address: fe80::1%eth0 cannot be a VIP (unspecified, multicast, loopback, zoned or v4-mapped)"}},

		// vips: port, protocol, scheduler
		{name: "port missing", in: "vips: [{name: web, address: 203.0.113.10}]", want: []string{"vips[0].port: must be 1..65535, not 0"}},
		{name: "port 0", in: "vips: [{name: web, address: 203.0.113.10, port: 0}]", want: []string{"vips[0].port: must be 1..65535, not 0"}},
		{name: "port 70000", in: "vips: [{name: web, address: 203.0.113.10, port: 70000}]", want: []string{"vips[0].port: must be 1..65535, not 70000"}},
		{name: "port negative", in: "vips: [{name: web, address: 203.0.113.10, port: -80}]", want: []string{"vips[0].port: must be 1..65535, not -80"}},
		{name: "port 65535", in: "vips: [{name: web, address: 203.0.113.10, port: 65535}]"},
		{name: "unknown protocol", in: "vips: [" + vip + ", protocol: sctp}]", want: []string{`vips[0].protocol: must be tcp or udp, not "sctp"`}},
		{name: "protocol is lower case", in: "vips: [" + vip + ", protocol: TCP}]", want: []string{`vips[0].protocol: must be tcp or udp, not "TCP"`}},
		{name: "udp", in: "vips: [" + vip + ", protocol: udp}]"},
		{name: "unknown scheduler", in: "vips: [" + vip + ", scheduler: least-conn}]",
			want: []string{`vips[0].scheduler: must be maglev or round-robin, not "least-conn"`}},
		{name: "round-robin", in: "vips: [" + vip + ", scheduler: round-robin}]"},

		// vips: one service per address, port and protocol
		{name: "same address port protocol twice", in: "vips: [" + vip + "}, {name: web2, address: 203.0.113.10, port: 80}]",
			want: []string{"vips[1]: 203.0.113.10:80/tcp is already served by vips[0]"}},
		{name: "same service, protocol defaulted on one side", in: "vips: [" + vip + ", protocol: tcp}, {name: web2, address: 203.0.113.10, port: 80}]",
			want: []string{"vips[1]: 203.0.113.10:80/tcp is already served by vips[0]"}},
		{name: "same v6 service spelt differently", in: "vips: [{name: a, address: '2001:db8::10', port: 80, protocol: udp}, {name: b, address: '2001:0db8:0::0010', port: 80, protocol: udp}]",
			want: []string{"vips[1]: [2001:db8::10]:80/udp is already served by vips[0]"}},
		{name: "same address and port, other protocol", in: "vips: [" + vip + "}, {name: dns, address: 203.0.113.10, port: 80, protocol: udp}]"},
		{name: "same address, other port", in: "vips: [" + vip + "}, {name: tls, address: 203.0.113.10, port: 443}]"},

		// backends
		{name: "backend without port", in: "vips: [{name: web, address: 203.0.113.10, port: 80, backends: [{address: 10.0.1.11}]}]",
			want: []string{`vips[0].backends[0].address: not address:port ([v6]:port for IPv6): "10.0.1.11"`}},
		{name: "backend host name", in: "vips: [{name: web, address: 203.0.113.10, port: 80, backends: [{address: 'app1:8080'}]}]",
			want: []string{`vips[0].backends[0].address: not address:port ([v6]:port for IPv6): "app1:8080"`}},
		{name: "v6 backend without brackets", in: "vips: [{name: web, address: '2001:db8::10', port: 80, backends: [{address: '2001:db8:1::11:8080'}]}]",
			want: []string{`vips[0].backends[0].address: not address:port ([v6]:port for IPv6): "2001:db8:1::11:8080"`}},
		{name: "backend missing address", in: "vips: [{name: web, address: 203.0.113.10, port: 80, backends: [{weight: 2}]}]",
			want: []string{`vips[0].backends[0].address: not address:port ([v6]:port for IPv6): ""`}},
		{name: "backend port 0", in: "vips: [{name: web, address: 203.0.113.10, port: 80, backends: [{address: 10.0.1.11:0}]}]",
			want: []string{"vips[0].backends[0].address: port must be 1..65535, not 0"}},
		{name: "backend port 70000", in: "vips: [{name: web, address: 203.0.113.10, port: 80, backends: [{address: 10.0.1.11:70000}]}]",
			want: []string{`vips[0].backends[0].address: not address:port ([v6]:port for IPv6): "10.0.1.11:70000"`}},
		{name: "backend is the vip", in: "vips: [{name: web, address: 203.0.113.10, port: 80, backends: [{address: 203.0.113.10:8080}]}]",
			want: []string{"vips[0].backends[0].address: is the VIP itself"}},
		{name: "backend is the vip, v4-mapped", in: "vips: [{name: web, address: 203.0.113.10, port: 80, backends: [{address: '[::ffff:203.0.113.10]:80'}]}]",
			want: []string{"vips[0].backends[0].address: is the VIP itself"}},
		{name: "v6 backend of a v4 vip", in: "vips: [{name: web, address: 203.0.113.10, port: 80, backends: [{address: '[2001:db8:1::11]:8080'}]}]",
			want: []string{"vips[0].backends[0].address: 2001:db8:1::11 is not of the VIP's address family"}},
		{name: "v4 backend of a v6 vip", in: "vips: [{name: web, address: '2001:db8::10', port: 80, backends: [{address: 10.0.1.11:8080}]}]",
			want: []string{"vips[0].backends[0].address: 10.0.1.11 is not of the VIP's address family"}},
		{name: "v4-mapped backend of a v6 vip", in: "vips: [{name: web, address: '2001:db8::10', port: 80, backends: [{address: '[::ffff:10.0.1.11]:8080'}]}]",
			want: []string{"vips[0].backends[0].address: 10.0.1.11 is not of the VIP's address family"}},
		{name: "v4-mapped backend of a v4 vip", in: "vips: [{name: web, address: 203.0.113.10, port: 80, backends: [{address: '[::ffff:10.0.1.11]:8080'}]}]"},
		{name: "backend unspecified", in: "vips: [{name: web, address: 203.0.113.10, port: 80, backends: [{address: 0.0.0.0:8080}]}]",
			want: []string{"vips[0].backends[0].address: 0.0.0.0 cannot be a backend"}},
		{name: "backend multicast", in: "vips: [{name: web, address: 203.0.113.10, port: 80, backends: [{address: 224.0.0.5:8080}]}]",
			want: []string{"vips[0].backends[0].address: 224.0.0.5 cannot be a backend"}},
		{name: "backend twice", in: "vips: [{name: web, address: 203.0.113.10, port: 80, backends: [{address: 10.0.1.11:8080}, {address: 10.0.1.12:8080}, {address: 10.0.1.11:8080, weight: 2}]}]",
			want: []string{"vips[0].backends[2].address: 10.0.1.11:8080 is already vips[0].backends[0]"}},
		{name: "same backend address, other port", in: "vips: [{name: web, address: 203.0.113.10, port: 80, backends: [{address: 10.0.1.11:8080}, {address: 10.0.1.11:8081}]}]"},
		{name: "same backend in two vips", in: "vips: [" + vip + "}, {name: web2, address: 203.0.113.11, port: 80, backends: [{address: 10.0.1.11:8080}]}]"},
		{name: "ipv6 vip with [v6]:port backends", in: "vips: [{name: web6, address: '2001:db8::10', port: 443, backends: [{address: '[2001:db8:1::11]:8443'}, {address: '[2001:db8:1::12]:8443', weight: 2}]}]"},
		{name: "weight 0", in: "vips: [{name: web, address: 203.0.113.10, port: 80, backends: [{address: 10.0.1.11:8080, weight: 0}]}]",
			want: []string{"vips[0].backends[0].weight: must be 1..1000, not 0"}},
		{name: "weight negative", in: "vips: [{name: web, address: 203.0.113.10, port: 80, backends: [{address: 10.0.1.11:8080, weight: -1}]}]",
			want: []string{"vips[0].backends[0].weight: must be 1..1000, not -1"}},
		{name: "weight 1001", in: "vips: [{name: web, address: 203.0.113.10, port: 80, backends: [{address: 10.0.1.11:8080, weight: 1001}]}]",
			want: []string{"vips[0].backends[0].weight: must be 1..1000, not 1001"}},
		{name: "weight 1000", in: "vips: [{name: web, address: 203.0.113.10, port: 80, backends: [{address: 10.0.1.11:8080, weight: 1000}]}]"},
		{name: "no backends", in: "vips: [{name: web, address: 203.0.113.10, port: 80}]"},

		// health
		{name: "health type missing", in: "vips: [" + vip + ", health: {interval: 1s}}]",
			want: []string{`vips[0].health.type: must be tcp or http, not ""`}},
		{name: "health type unknown", in: "vips: [" + vip + ", health: {type: icmp}}]",
			want: []string{`vips[0].health.type: must be tcp or http, not "icmp"`}},
		{name: "health http path relative", in: "vips: [" + vip + ", health: {type: http, path: healthz}}]",
			want: []string{`vips[0].health.path: must start with /: "healthz"`}},
		{name: "health tcp with a path", in: "vips: [" + vip + ", health: {type: tcp, path: /healthz}}]",
			want: []string{"vips[0].health.path: only for type http"}},
		{name: "health interval too short", in: "vips: [" + vip + ", health: {type: tcp, interval: 5ms}}]",
			want: []string{"vips[0].health.interval: must be at least 10ms, not 5ms"}},
		{name: "health interval negative", in: "vips: [" + vip + ", health: {type: tcp, interval: -1s, timeout: 1s}}]",
			want: []string{"vips[0].health.interval: must be at least 10ms, not -1s",
				"vips[0].health.timeout: must be more than 0 and at most the interval (-1s), not 1s"}},
		{name: "health timeout above interval", in: "vips: [" + vip + ", health: {type: tcp, interval: 1s, timeout: 2s}}]",
			want: []string{"vips[0].health.timeout: must be more than 0 and at most the interval (1s), not 2s"}},
		{name: "health timeout above the default interval", in: "vips: [" + vip + ", health: {type: tcp, timeout: 3s}}]",
			want: []string{"vips[0].health.timeout: must be more than 0 and at most the interval (2s), not 3s"}},
		{name: "health timeout negative", in: "vips: [" + vip + ", health: {type: tcp, timeout: -1s}}]",
			want: []string{"vips[0].health.timeout: must be more than 0 and at most the interval (2s), not -1s"}},
		{name: "health timeout equal to interval", in: "vips: [" + vip + ", health: {type: tcp, interval: 1s, timeout: 1s}}]"},
		{name: "health rise and fall out of range", in: "vips: [" + vip + ", health: {type: tcp, rise: 101, fall: -1}}]",
			want: []string{"vips[0].health.rise: must be 1..100, not 101", "vips[0].health.fall: must be 1..100, not -1"}},
		{name: "health rise and fall 100", in: "vips: [" + vip + ", health: {type: http, rise: 100, fall: 100}}]"},
		{name: "health null", in: "vips: [" + vip + ", health: null}]"},

		// pools
		{name: "pool name missing", in: "pools: [{cidrs: [203.0.113.0/24]}]", want: []string{"pools[0].name: required"}},
		{name: "pool name twice", in: "pools: [{name: public, cidrs: [203.0.113.0/25]}, {name: public, cidrs: [203.0.113.128/25]}]",
			want: []string{`pools[1].name: "public" is already a pool`}},
		{name: "pool without cidrs", in: "pools: [{name: public}, {name: empty, cidrs: []}]",
			want: []string{"pools[0].cidrs: at least one prefix required", "pools[1].cidrs: at least one prefix required"}},
		{name: "pool cidrs overlap within a pool", in: "pools: [{name: public, cidrs: [203.0.113.0/24, 203.0.113.128/25]}]",
			want: []string{`pools[0].cidrs[1]: 203.0.113.128/25 overlaps 203.0.113.0/24 of pool "public" (pools[0].cidrs[0])`}},
		{name: "pool cidr twice", in: "pools: [{name: public, cidrs: [203.0.113.0/24, 203.0.113.0/24]}]",
			want: []string{`pools[0].cidrs[1]: 203.0.113.0/24 overlaps 203.0.113.0/24 of pool "public" (pools[0].cidrs[0])`}},
		{name: "pool cidrs overlap across pools, longer first", in: "pools: [{name: a, cidrs: ['2001:db8::/64']}, {name: b, cidrs: [198.51.100.0/24, '2001:db8::/48']}]",
			want: []string{`pools[1].cidrs[1]: 2001:db8::/48 overlaps 2001:db8::/64 of pool "a" (pools[0].cidrs[0])`}},
		{name: "pool cidrs adjacent", in: "pools: [{name: a, cidrs: [203.0.113.0/25]}, {name: b, cidrs: [203.0.113.128/25, 203.0.114.0/32]}]"},
		{name: "pool v4 and v6 of the same bits", in: "pools: [{name: a, cidrs: [10.0.0.0/8, '::/8']}]"},
		{name: "pool v4-mapped", in: "pools: [{name: a, cidrs: ['::ffff:203.0.113.0/120']}]",
			want: []string{"pools[0].cidrs[0]: ::ffff:203.0.113.0/120 is IPv4-mapped; write the IPv4 prefix instead"}},
		{name: "pool dual-stack", in: "pools: [{name: public, cidrs: [203.0.113.0/24, '2001:db8::/64'], auto-assign: true}, {name: reserved, cidrs: [198.51.100.7/32]}]"},

		// kubernetes
		{name: "kubernetes minimal", in: "kubernetes: {clusters: [{name: prod, kubeconfig: /etc/appliance/prod.kubeconfig}]}"},
		{name: "kubernetes everything", in: "kubernetes: {clusters: [{name: prod, kubeconfig: /k/prod}, {name: stage-2, kubeconfig: /k/stage}], load-balancer-class: example.com/lb, default-class: true, ingress-class: edge-1, forward-to: nodeports}"},
		{name: "cluster name missing", in: "kubernetes: {clusters: [{kubeconfig: /k/prod}]}",
			want: []string{"kubernetes.clusters[0].name: required"}},
		{name: "cluster name twice", in: "kubernetes: {clusters: [{name: prod, kubeconfig: /k/a}, {name: prod, kubeconfig: /k/b}]}",
			want: []string{`kubernetes.clusters[1].name: "prod" is already the name of kubernetes.clusters[0]`}},
		{name: "cluster name not a label", in: "kubernetes: {clusters: [{name: Prod/1, kubeconfig: /k/a}]}",
			want: []string{`kubernetes.clusters[0].name: must be a DNS label (lower case letters, digits and '-', at most 63), not "Prod/1"`}},
		{name: "kubeconfig missing", in: "kubernetes: {clusters: [{name: prod}]}",
			want: []string{"kubernetes.clusters[0].kubeconfig: required"}},
		{name: "kubeconfig relative", in: "kubernetes: {clusters: [{name: prod, kubeconfig: prod.kubeconfig}]}",
			want: []string{`kubernetes.clusters[0].kubeconfig: must be an absolute path, not "prod.kubeconfig"`}},
		{name: "class without domain prefix", in: "kubernetes: {load-balancer-class: appliance}",
			want: []string{`kubernetes.load-balancer-class: must have a domain prefix, like portico.dev/appliance, not "appliance"`}},
		{name: "class with a bad name part", in: "kubernetes: {load-balancer-class: portico.dev/-x}",
			want: []string{`kubernetes.load-balancer-class: must be a qualified name with a domain prefix, like portico.dev/appliance, not "portico.dev/-x": name part …`}},
		{name: "class with a bad prefix", in: "kubernetes: {load-balancer-class: Portico_dev/appliance}",
			want: []string{`kubernetes.load-balancer-class: must be a qualified name with a domain prefix, like portico.dev/appliance, not "Portico_dev/appliance": prefix part …`}},
		{name: "class with two slashes", in: "kubernetes: {load-balancer-class: a.b/c/d}",
			want: []string{`kubernetes.load-balancer-class: must be a qualified name with a domain prefix, like portico.dev/appliance, not "a.b/c/d": …`}},
		{name: "forward-to unknown", in: "kubernetes: {forward-to: nodes}",
			want: []string{`kubernetes.forward-to: must be pods or nodeports, not "nodes"`}},
		{name: "forward-to is lower case", in: "kubernetes: {forward-to: Pods}",
			want: []string{`kubernetes.forward-to: must be pods or nodeports, not "Pods"`}},
		{name: "ingress class not a label", in: "kubernetes: {ingress-class: portico.dev}",
			want: []string{`kubernetes.ingress-class: must be a DNS label (lower case letters, digits and '-', at most 63), not "portico.dev"`}},
		{name: "ingress class too long", in: "kubernetes: {ingress-class: " + strings.Repeat("a", 64) + "}",
			want: []string{`kubernetes.ingress-class: must be a DNS label (lower case letters, digits and '-', at most 63), not "` + strings.Repeat("a", 64) + `"`}},
		{name: "pool cidr with host bits", in: "pools: [{name: public, cidrs: [203.0.113.0/24, 203.0.113.1/24]}]",
			want: []string{`pools[0].cidrs[1]: not a network prefix (address bits past the length must be zero): "203.0.113.1/24"`}},
		{name: "pool cidr not a prefix", in: "pools: [{name: public, cidrs: [203.0.113.0]}]",
			want: []string{`pools[0].cidrs[0]: not a network prefix (address bits past the length must be zero): "203.0.113.0"`}},
		{name: "pool v6", in: "pools: [{name: public, cidrs: ['2001:db8::/64'], auto-assign: true}]"},

		// management
		{name: "gnmi socket", in: "management: {gnmi: {socket: /tmp/a/gnmi.sock}}"},
		{name: "gnmi socket relative", in: "management: {gnmi: {socket: run/gnmi.sock}}", want: []string{`management.gnmi.socket: must be an absolute path, not "run/gnmi.sock"`}},
		{name: "metrics address", in: "management: {metrics: '[::1]:9273'}"},
		{name: "metrics without host", in: "management: {metrics: ':9273'}", want: []string{`management.metrics: not address:port: ":9273"`}},
		{name: "metrics host name", in: "management: {metrics: 'localhost:9273'}", want: []string{`management.metrics: not address:port: "localhost:9273"`}},

		// Several problems are all reported, in document order.
		{name: "all problems at once", in: `
log: {level: loud}
vips:
  - {name: web, address: 203.0.113.10, port: 0, protocol: sctp, backends: [{address: 10.0.1.11:8080, weight: 0}]}
  - {name: web, address: 203.0.113.300, port: 80}
pools: [{name: ""}]
`, want: []string{
			`log.level: must be debug, info, warn or error, not "loud"`,
			"vips[0].port: must be 1..65535, not 0",
			`vips[0].protocol: must be tcp or udp, not "sctp"`,
			"vips[0].backends[0].weight: must be 1..1000, not 0",
			`vips[1].name: "web" is already the name of vips[0]`,
			`vips[1].address: not an IP address: "203.0.113.300"`,
			"pools[0].name: required",
			"pools[0].cidrs: at least one prefix required",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := config.Parse([]byte(tt.in), nil)
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

func TestParseDefaults(t *testing.T) {
	c, err := config.Parse([]byte(`
vips:
  - name: web
    address: 203.0.113.10
    port: 80
    health: {type: http}
    backends: [{address: 10.0.1.11:8080}, {address: 10.0.1.12:8080, weight: 3}]
  - name: fast
    address: 203.0.113.10
    port: 81
    health: {type: tcp, interval: 500ms, rise: 0, fall: 0}
`), nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.Store != config.DefaultStore || c.Log != (config.Log{Level: "info", Format: "text"}) {
		t.Errorf("store %q, log %+v; want %q, info/text", c.Store, c.Log, config.DefaultStore)
	}
	web := c.VIPs[0]
	if web.Protocol != "tcp" || web.Scheduler != "maglev" || web.SNAT {
		t.Errorf("web: protocol %q scheduler %q snat %v; want tcp, maglev, false", web.Protocol, web.Scheduler, web.SNAT)
	}
	if w := web.Backends[0].Weight; w == nil || *w != 1 {
		t.Errorf("absent weight = %v, want 1", w)
	}
	if w := web.Backends[1].Weight; w == nil || *w != 3 {
		t.Errorf("weight 3 = %v", w)
	}
	want := config.Health{Type: "http", Path: "/", Interval: 2 * time.Second, Timeout: time.Second, Rise: 2, Fall: 3}
	if *web.Health != want {
		t.Errorf("web health %+v, want %+v", *web.Health, want)
	}
	// An interval below the default timeout also bounds the default timeout;
	// rise and fall 0 mean the default.
	want = config.Health{Type: "tcp", Interval: 500 * time.Millisecond, Timeout: 500 * time.Millisecond, Rise: 2, Fall: 3}
	if got := *c.VIPs[1].Health; got != want {
		t.Errorf("fast health %+v, want %+v", got, want)
	}
	if c.VIPs[1].Backends != nil && len(c.VIPs[1].Backends) != 0 {
		t.Errorf("backends %v, want none", c.VIPs[1].Backends)
	}
}

func TestParseEnv(t *testing.T) {
	const file = "log: {level: info}\nvips: [" + vip + ", snat: true}]\n"
	tests := []struct {
		name string
		env  []string
		want func(*config.Config) string // "" when the config is as wanted
		errs []string
	}{
		{name: "no env", env: nil, want: func(c *config.Config) string { return eq(c.Log.Level, "info") }},
		{name: "log level", env: []string{"APPLIANCE_LOG_LEVEL=debug"}, want: func(c *config.Config) string { return eq(c.Log.Level, "debug") }},
		{name: "bad log level", env: []string{"APPLIANCE_LOG_LEVEL=loud"},
			errs: []string{`log.level: must be debug, info, warn or error, not "loud"`}},
		{name: "key absent from the file", env: []string{"APPLIANCE_LOG_FORMAT=json", "APPLIANCE_STORE=/tmp/x.db", "APPLIANCE_NAME=edge9"},
			want: func(c *config.Config) string {
				return eq(c.Log.Format+" "+c.Store+" "+c.Name, "json /tmp/x.db edge9")
			}},
		{name: "dashes and dots become underscores", env: []string{"APPLIANCE_MANAGEMENT_GNMI_TLS_CLIENT_CA=/etc/ca.pem", "APPLIANCE_KUBERNETES_LOAD_BALANCER_CLASS=x/y"},
			want: func(c *config.Config) string {
				return eq(c.Management.GNMI.TLS.ClientCA+" "+c.Kubernetes.LoadBalancerClass, "/etc/ca.pem x/y")
			}},
		{name: "typed values", env: []string{"APPLIANCE_BGP_ASN=65001", "APPLIANCE_KUBERNETES_DEFAULT_CLASS=true", "APPLIANCE_BGP_GRACEFUL_RESTART_RESTART_TIME=90s"},
			want: func(c *config.Config) string {
				if c.BGP.ASN != 65001 || !c.Kubernetes.DefaultClass || c.BGP.GracefulRestart.RestartTime != 90*time.Second {
					return "bgp/kubernetes not overridden"
				}
				return ""
			}},
		{name: "bad typed value", env: []string{"APPLIANCE_BGP_ASN=private"}, errs: []string{"bgp.asn: …"}},
		{name: "metrics validated", env: []string{"APPLIANCE_MANAGEMENT_METRICS=:9273"},
			errs: []string{`management.metrics: not address:port: ":9273"`}},
		{name: "metrics", env: []string{"APPLIANCE_MANAGEMENT_METRICS=127.0.0.1:9999"},
			want: func(c *config.Config) string { return eq(c.Management.Metrics, "127.0.0.1:9999") }},
		{name: "names are upper case", env: []string{"appliance_log_level=debug", "Appliance_Log_Level=debug"},
			want: func(c *config.Config) string { return eq(c.Log.Level, "info") }},
		{name: "unrelated and malformed entries", env: []string{"PATH=/bin", "APPLIANCE_LOG_LEVEL", "APPLIANCE_LOG=debug", "APPLIANCE_COLOUR=red"},
			want: func(c *config.Config) string { return eq(c.Log.Level, "info") }},
		{name: "last one wins", env: []string{"APPLIANCE_LOG_LEVEL=debug", "APPLIANCE_LOG_LEVEL=warn"},
			want: func(c *config.Config) string { return eq(c.Log.Level, "warn") }},
		{name: "keys inside lists are not reachable", env: []string{"APPLIANCE_VIPS_0_SNAT=false", "APPLIANCE_VIPS_0_PORT=81"},
			want: func(c *config.Config) string {
				if !c.VIPs[0].SNAT || c.VIPs[0].Port != 80 {
					return "vips[0] overridden"
				}
				return ""
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := config.Parse([]byte(file), tt.env)
			if got := lines(t, err); !match(got, tt.errs) {
				t.Fatalf("errors:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tt.errs, "\n"))
			}
			if c != nil && tt.want != nil {
				if msg := tt.want(c); msg != "" {
					t.Error(msg)
				}
			}
		})
	}
}

func eq(got, want string) string {
	if got != want {
		return "got " + got + ", want " + want
	}
	return ""
}

// TestParseEnvListKeys: applyEnv is documented to override scalar keys
// only, but it also takes the list keys the file has (vips, pools, …) from
// viper's AllKeys, so an empty APPLIANCE_VIPS silently drops every VIP of
// the file. Fails until applyEnv uses scalarKeys alone.
func TestParseEnvListKeys(t *testing.T) {
	const file = "vips: [" + vip + "}]\npools: [{name: public, cidrs: [203.0.113.0/24]}]\n"
	for _, env := range []string{"APPLIANCE_VIPS=", "APPLIANCE_POOLS="} {
		c, err := config.Parse([]byte(file), []string{env})
		if err != nil {
			t.Errorf("%s: %v", env, err)
			continue
		}
		if len(c.VIPs) != 1 || len(c.Pools) != 1 {
			t.Errorf("%s: %d vips and %d pools, want the file's 1 and 1: a list key must not be overridden", env, len(c.VIPs), len(c.Pools))
		}
	}
	if _, err := config.Parse([]byte(file), []string{"APPLIANCE_VIPS=web"}); err != nil {
		t.Errorf("APPLIANCE_VIPS=web: %v; want it ignored", err)
	}
}

// TestParseASNRange: the ASN fields are uint32 and viper's weak decoding
// wraps out-of-range numbers silently (-1 becomes 4294967295, 4294967297
// becomes 1). Fails until Parse refuses them.
func TestParseASNRange(t *testing.T) {
	for _, in := range []string{"bgp: {asn: -1}", "bgp: {asn: 4294967297}", "bgp: {peers: [{name: a, asn: -65001}]}"} {
		c, err := config.Parse([]byte(in), nil)
		if err == nil {
			t.Errorf("Parse(%q) accepted it: asn %d, peers %+v", in, c.BGP.ASN, c.BGP.Peers)
			continue
		}
		if got := lines(t, err); len(got) != 1 || !strings.HasPrefix(got[0], "bgp.") {
			t.Errorf("Parse(%q) = %q, want one bgp.… line", in, got)
		}
	}
}

// TestParseV4MappedDuplicateBackend: Validate looks for duplicate backends
// before unmapping, so 10.0.1.11:8080 and [::ffff:10.0.1.11]:8080 pass as
// two backends; control.Compile unmaps both into one address, and the
// Maglev build then fails on the duplicate and leaves the VIP without a
// table. Fails until validate.go keys `seen` by the unmapped address.
func TestParseV4MappedDuplicateBackend(t *testing.T) {
	_, err := config.Parse([]byte(`vips: [{name: web, address: 203.0.113.10, port: 80, backends: [{address: 10.0.1.11:8080}, {address: "[::ffff:10.0.1.11]:8080"}]}]`), nil)
	want := []string{"vips[0].backends[1].address: …"}
	if got := lines(t, err); !match(got, want) {
		t.Errorf("errors %q, want %q", got, want)
	}
}

// TestParseDuplicateWithBadPort: the duplicate-service check converts the
// port with uint16() before the port has been found valid, so port 70000
// is taken as 4464 and a valid VIP on port 4464 is refused as "already
// served" by a VIP that serves nothing. Fails until validate.go skips the
// check for a port outside 1..65535.
func TestParseDuplicateWithBadPort(t *testing.T) {
	_, err := config.Parse([]byte("vips: [{name: a, address: 203.0.113.10, port: 70000}, {name: b, address: 203.0.113.10, port: 4464}]"), nil)
	want := []string{"vips[0].port: must be 1..65535, not 70000"}
	if got := lines(t, err); !match(got, want) {
		t.Errorf("errors %q, want %q", got, want)
	}
}

func TestParseEmbeddedDefault(t *testing.T) {
	c, err := config.Parse(configs.Default, nil)
	if err != nil {
		t.Fatalf("configs/appliance.yaml: %v", err)
	}
	if c.Store != config.DefaultStore || c.Log.Level != "info" || c.Log.Format != "text" || len(c.VIPs) != 0 {
		t.Errorf("default config %+v", c)
	}
}

func TestParseFullExample(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("testdata", "full.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := config.Parse(data, nil)
	if err != nil {
		t.Fatalf("testdata/full.yaml:\n%v", err)
	}
	w := func(n int) *int { return &n }
	want := &config.Config{
		Name:  "edge1",
		Store: "/var/lib/appliance/edge1.db",
		Log:   config.Log{Level: "warn", Format: "json"},
		VIPs: []config.VIP{
			{
				Name: "web", Address: "203.0.113.10", Port: 80, Protocol: "tcp", Scheduler: "maglev",
				Health: &config.Health{Type: "tcp", Interval: 2 * time.Second, Timeout: time.Second, Rise: 2, Fall: 3},
				Backends: []config.Backend{
					{Address: "10.0.1.11:8080", Weight: w(1)},
					{Address: "10.0.1.12:8080", Weight: w(3)},
				},
			},
			{
				Name: "dns", Address: "203.0.113.10", Port: 53, Protocol: "udp", Scheduler: "round-robin", SNAT: true,
				Backends: []config.Backend{{Address: "10.0.1.21:53", Weight: w(1)}},
			},
			{
				Name: "web6", Address: "2001:db8::10", Port: 443, Protocol: "tcp", Scheduler: "maglev",
				Health: &config.Health{Type: "http", Path: "/healthz", Interval: 5 * time.Second, Timeout: 500 * time.Millisecond, Rise: 1, Fall: 5},
				Backends: []config.Backend{
					{Address: "[2001:db8:1::11]:8443", Weight: w(2)},
					{Address: "[2001:db8:1::12]:8443", Weight: w(1)},
				},
			},
		},
		Pools: []config.Pool{
			{Name: "public", CIDRs: []string{"203.0.113.0/24", "2001:db8::/64"}, AutoAssign: true},
			{Name: "reserved", CIDRs: []string{"198.51.100.0/28"}},
		},
		BGP: config.BGP{
			ASN: 65000, RouterID: "10.0.0.1", ListenPort: 179,
			GracefulRestart: config.GracefulRestart{Enabled: true, RestartTime: 120 * time.Second},
			Peers: []config.Peer{
				{
					Name: "node1", Address: "10.0.1.11", ASN: 65001, Role: "node",
					HoldTime: 9 * time.Second, Keepalive: 3 * time.Second,
					BFD:    config.BFD{Enabled: true, Interval: 300 * time.Millisecond, Multiplier: 3},
					Accept: []string{"203.0.113.0/24"}, MaxPrefixes: 1000, Communities: []string{},
				},
				{
					Name: "upstream1", Address: "192.0.2.1", ASN: 64512, Role: "upstream", Password: "s3cret",
					Multihop: 2, HoldTime: 90 * time.Second, Keepalive: 30 * time.Second,
					Accept: []string{}, Communities: []string{"65000:100", "65000:200"},
				},
			},
		},
		Kubernetes: config.Kubernetes{
			Clusters:          []config.Cluster{{Name: "prod", Kubeconfig: "/etc/appliance/prod.kubeconfig"}},
			LoadBalancerClass: "portico.dev/appliance", DefaultClass: true, IngressClass: "portico", ForwardTo: "pods",
		},
		Management: config.Management{
			GNMI: config.GNMI{
				Listen: ":9339", Socket: "/run/appliance/gnmi.sock",
				TLS: config.TLS{Cert: "/etc/appliance/tls.crt", Key: "/etc/appliance/tls.key", ClientCA: "/etc/appliance/ca.crt"},
				Users: []config.User{
					{Name: "admin", PasswordHash: "$2a$10$abcdefghijklmnopqrstuu", Role: "admin"},
					{Name: "viewer", PasswordHash: "$2a$10$zyxwvutsrqponmlkjihgff", Role: "read-only"},
				},
			},
			Metrics: "127.0.0.1:9273",
		},
	}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("testdata/full.yaml parsed as\n%+v\nwant\n%+v", c, want)
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "appliance.yaml")
	text := []byte("name: edge1\nvips: [" + vip + "}]\n")
	if err := os.WriteFile(path, text, 0o600); err != nil {
		t.Fatal(err)
	}
	c, data, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if c.Name != "edge1" || len(c.VIPs) != 1 || string(data) != string(text) {
		t.Errorf("Load = %+v, %q", c, data)
	}

	// A missing file is os.ErrNotExist, which is how cmd/appliance knows
	// to fall back to the embedded default.
	if _, _, err := config.Load(filepath.Join(dir, "missing.yaml")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load(missing) = %v, want os.ErrNotExist", err)
	}

	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("colour: red\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := config.Load(bad); !match(lines(t, err), []string{"colour: unknown key"}) {
		t.Errorf("Load(bad) = %v", err)
	}
}

func TestErrorsFormat(t *testing.T) {
	es := config.Errors{{Path: "vips[0].port", Reason: "must be 1..65535, not 0"}, {Path: "log.level", Reason: "bad"}}
	if got, want := es.Error(), "vips[0].port: must be 1..65535, not 0\nlog.level: bad"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
}

// TestParseKubernetesDefaults: the class and forward-to take their defaults
// only when clusters are configured; values given are kept.
func TestParseKubernetesDefaults(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want config.Kubernetes
	}{
		{name: "no kubernetes", in: "", want: config.Kubernetes{}},
		{name: "no clusters", in: "kubernetes: {default-class: true}", want: config.Kubernetes{DefaultClass: true}},
		{name: "clusters", in: "kubernetes: {clusters: [{name: prod, kubeconfig: /k/prod}]}",
			want: config.Kubernetes{
				Clusters:          []config.Cluster{{Name: "prod", Kubeconfig: "/k/prod"}},
				LoadBalancerClass: config.DefaultLoadBalancerClass, ForwardTo: "pods",
			}},
		{name: "given values kept", in: "kubernetes: {clusters: [{name: prod, kubeconfig: /k/prod}], load-balancer-class: example.com/lb, forward-to: nodeports}",
			want: config.Kubernetes{
				Clusters:          []config.Cluster{{Name: "prod", Kubeconfig: "/k/prod"}},
				LoadBalancerClass: "example.com/lb", ForwardTo: "nodeports",
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := config.Parse([]byte(tt.in), nil)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(c.Kubernetes, tt.want) {
				t.Errorf("kubernetes = %+v, want %+v", c.Kubernetes, tt.want)
			}
		})
	}
}
