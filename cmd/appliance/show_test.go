package main

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/netip"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"portico.dev/appliance/control/bgp"
	"portico.dev/appliance/datapath/route"
	"portico.dev/appliance/mgmt/gnmi"
)

// shownState is the daemon's state as the show tests see it.
type shownState struct{}

func (shownState) Neighbors() []bgp.NeighborState {
	return []bgp.NeighborState{
		{Name: "node1", Address: netip.MustParseAddr("192.0.2.11"), ASN: 65001, Role: bgp.Node, State: "established",
			Uptime: time.Hour, Received: 3, Accepted: 2, Rejected: 1, BFD: "up", GracefulRestart: true},
		// node2 restarts: its session is down, its prefix kept stale.
		{Name: "node2", Address: netip.MustParseAddr("192.0.2.12"), ASN: 65002, Role: bgp.Node, State: "idle",
			Received: 1, Accepted: 1, BFD: "down", Restarting: true, Stale: 1},
		// BFD configured, BGP up without it: unprotected.
		{Name: "node3", Address: netip.MustParseAddr("192.0.2.13"), ASN: 65003, Role: bgp.Node, State: "established",
			Uptime: time.Minute, BFD: "down", Unprotected: true},
		{Name: "up1", Address: netip.MustParseAddr("2001:db8::1"), ASN: 64512, Role: bgp.Upstream, State: "active",
			Advertised: 1, LastError: "hold timer expired", BFD: "disabled"},
	}
}

func (shownState) BGPRoutes() []bgp.Learned {
	return []bgp.Learned{
		{Prefix: netip.MustParsePrefix("203.0.113.10/32"), NextHops: []netip.Addr{netip.MustParseAddr("192.0.2.11")}},
		{Prefix: netip.MustParsePrefix("203.0.113.20/32"), NextHops: []netip.Addr{netip.MustParseAddr("192.0.2.11"), netip.MustParseAddr("192.0.2.12")}},
	}
}

func (shownState) KernelRoutes(context.Context) ([]route.TableRoute, error) {
	return []route.TableRoute{
		{Prefix: netip.MustParsePrefix("192.0.2.0/24"), Protocol: "kernel", Type: "unicast",
			NextHops: []route.TableNextHop{{Interface: "eth0", Weight: 1}}},
		{Prefix: netip.MustParsePrefix("203.0.113.20/32"), Protocol: "bgp", Type: "unicast", Metric: 20,
			NextHops: []route.TableNextHop{
				{Addr: netip.MustParseAddr("192.0.2.11"), Interface: "eth0", Weight: 1},
				{Addr: netip.MustParseAddr("192.0.2.12"), Interface: "eth0", Weight: 2}}},
		{Prefix: netip.MustParsePrefix("198.51.100.0/24"), Protocol: "static", Type: "blackhole"},
		{Prefix: netip.MustParsePrefix("fe80::/64"), Protocol: "kernel", Type: "unicast", Metric: 256,
			NextHops: []route.TableNextHop{{Interface: "eth0", Weight: 1}}},
		{Prefix: netip.MustParsePrefix("fe80::/64"), Protocol: "kernel", Type: "unicast", Metric: 256,
			NextHops: []route.TableNextHop{{Interface: "eth1", Weight: 1}}},
	}, nil
}

func (shownState) VIPs(context.Context) ([]gnmi.VIP, error) {
	return []gnmi.VIP{
		{Name: "web", Address: netip.MustParseAddr("203.0.113.10"), Port: 80, Protocol: "tcp", Scheduler: "maglev",
			Counters: gnmi.Counters{Packets: 10, Bytes: 1000},
			Backends: []gnmi.Backend{
				{Address: netip.MustParseAddrPort("10.0.1.11:8080"), Weight: 1, Health: gnmi.HealthUp, Counters: gnmi.Counters{Packets: 10, Bytes: 1000}},
				{Address: netip.MustParseAddrPort("10.0.1.12:8080"), Weight: 2, Health: gnmi.HealthDown},
			}},
		{Name: "dns", Address: netip.MustParseAddr("2001:db8::53"), Port: 53, Protocol: "udp", Scheduler: "round-robin", SNAT: true,
			Backends: []gnmi.Backend{{Address: netip.MustParseAddrPort("[2001:db8:1::53]:53"), Weight: 1, Health: gnmi.HealthUnchecked}}},
	}, nil
}

// serveShown serves shownState on a socket and returns its path.
func serveShown(t *testing.T) string {
	path := filepath.Join(t.TempDir(), "gnmi.sock")
	l, err := gnmi.ListenUnix(path)
	if err != nil {
		t.Fatal(err)
	}
	s := gnmi.New(shownState{}, slog.New(slog.DiscardHandler))
	done := make(chan error, 1)
	go func() { done <- s.Serve(l) }()
	t.Cleanup(func() {
		s.Stop()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return path
}

// appliance runs the command line and returns its output.
func appliance(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := newRoot()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), err
}

func TestShowTables(t *testing.T) {
	sock := serveShown(t)
	tests := []struct {
		args []string
		want string // a regular expression of the whole output
	}{
		{[]string{"show", "bgp", "neighbors"}, `^` +
			`NEIGHBOR     AS     NAME   ROLE      STATE        UP/DOWN  BFD       GR                    RCVD  ACCEPTED  INSTALLED  SENT  LAST ERROR\n` +
			`192\.0\.2\.11   65001  node1  node      ESTABLISHED  1h0m\d+s +up        yes                   3     2         2          0     \n` +
			`192\.0\.2\.12   65002  node2  node      IDLE         never    down      restarting \(1 stale\)  1     1         1          0     \n` +
			`192\.0\.2\.13   65003  node3  node      ESTABLISHED  1m\d+s +down!     no                    0     0         0          0     \n` +
			`2001:db8::1  64512  up1    upstream  ACTIVE       never    disabled  no                    0     0         0          1     hold timer expired\n$`},
		{[]string{"show", "bgp", "routes"}, `^` + regexp.QuoteMeta(
			"PREFIX           NEXT HOPS\n"+
				"203.0.113.10/32  192.0.2.11\n"+
				"203.0.113.20/32  192.0.2.11, 192.0.2.12\n") + `$`},
		{[]string{"show", "routes"}, `^` + regexp.QuoteMeta(
			"PREFIX           METRIC  PROTOCOL  TYPE       NEXT HOP\n"+
				"192.0.2.0/24     0       kernel    unicast    dev eth0\n"+
				"203.0.113.20/32  20      bgp       unicast    via 192.0.2.11 dev eth0 weight 1\n"+
				"                                              via 192.0.2.12 dev eth0 weight 2\n"+
				"198.51.100.0/24  0       static    blackhole  \n"+
				"fe80::/64        256     kernel    unicast    dev eth0\n"+
				"fe80::/64        256     kernel    unicast    dev eth1\n") + `$`},
		{[]string{"show", "vips"}, `^` + regexp.QuoteMeta(
			"NAME  ADDRESS       PORT  PROTO  SCHEDULER    SNAT   BACKENDS UP  PACKETS  BYTES\n"+
				"web   203.0.113.10  80    tcp    maglev       false  1/2          10       1000\n"+
				"dns   2001:db8::53  53    udp    round-robin  true   1/1          0        0\n") + `$`},
		{[]string{"show", "vips", "dns"}, `^` + regexp.QuoteMeta(
			"NAME  ADDRESS       PORT  PROTO  SCHEDULER    SNAT  BACKENDS UP  PACKETS  BYTES\n"+
				"dns   2001:db8::53  53    udp    round-robin  true  1/1          0        0\n") + `$`},
		{[]string{"show", "backends"}, `^` + regexp.QuoteMeta(
			"VIP  BACKEND              WEIGHT  HEALTH     PACKETS  BYTES\n"+
				"web  10.0.1.11:8080       1       up         10       1000\n"+
				"web  10.0.1.12:8080       2       down       0        0\n"+
				"dns  [2001:db8:1::53]:53  1       unchecked  0        0\n") + `$`},
	}
	for _, tc := range tests {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			got, err := appliance(t, append(tc.args, "--target", "unix://"+sock)...)
			if err != nil {
				t.Fatal(err)
			}
			if !regexp.MustCompile(tc.want).MatchString(got) {
				t.Errorf("got\n%s\nwant (regexp)\n%s", got, tc.want)
			}
		})
	}
}

// -o json and -o yaml print the same records, named as the YANG leaves.
func TestShowJSONAndYAML(t *testing.T) {
	sock := serveShown(t)
	js, err := appliance(t, "show", "bgp", "neighbors", "-o", "json", "--target", sock)
	if err != nil {
		t.Fatal(err)
	}
	ys, err := appliance(t, "show", "bgp", "neighbors", "-o", "yaml", "--target", sock)
	if err != nil {
		t.Fatal(err)
	}
	var fromJSON, fromYAML []map[string]any
	if err := json.Unmarshal([]byte(js), &fromJSON); err != nil {
		t.Fatalf("%v\n%s", err, js)
	}
	if err := yaml.Unmarshal([]byte(ys), &fromYAML); err != nil {
		t.Fatalf("%v\n%s", err, ys)
	}
	if len(fromJSON) != 4 || len(fromYAML) != 4 {
		t.Fatalf("json %s\nyaml %s", js, ys)
	}
	n := fromJSON[0]
	if n["neighbor-address"] != "192.0.2.11" || n["session-state"] != "ESTABLISHED" || n["peer-as"] != 65001.0 ||
		n["received"] != 2.0 || n["installed"] != 2.0 || n["role"] != "node" ||
		n["bfd-state"] != "up" || n["unprotected"] != false || n["graceful-restart-negotiated"] != true || n["peer-restarting"] != false {
		t.Errorf("json neighbor %v", n)
	}
	if n := fromJSON[1]; n["peer-restarting"] != true || n["stale"] != 1.0 || n["graceful-restart-negotiated"] != false {
		t.Errorf("json restarting neighbor %v", n)
	}
	if y := fromYAML[2]; y["bfd-state"] != "down" || y["unprotected"] != true {
		t.Errorf("yaml unprotected neighbor %v", y)
	}
	if _, err := time.Parse(time.RFC3339, n["last-established"].(string)); err != nil {
		t.Errorf("last-established: %v", err)
	}
	if y := fromYAML[3]; y["neighbor-address"] != "2001:db8::1" || y["last-error"] != "hold timer expired" || y["sent"] != 1 {
		t.Errorf("yaml neighbor %v", y)
	}

	js, err = appliance(t, "show", "routes", "-o", "json", "--target", sock)
	if err != nil {
		t.Fatal(err)
	}
	var routes []routeRow
	if err := json.Unmarshal([]byte(js), &routes); err != nil {
		t.Fatal(err)
	}
	if len(routes) != 5 || routes[4].Index != 1 || len(routes[1].NextHops) != 2 || routes[1].NextHops[1] != (nextHopRow{Address: "192.0.2.12", Interface: "eth0", Weight: 2}) {
		t.Errorf("routes %+v", routes)
	}
}

func TestShowErrors(t *testing.T) {
	sock := serveShown(t)
	missing := filepath.Join(t.TempDir(), "gnmi.sock")
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"show", "vips", "--target", missing}, "cannot reach the appliance at " + missing + ": no such file or directory (is the daemon running?)"},
		{[]string{"show", "vips", "-o", "xml", "--target", sock}, `-o: must be table, json or yaml, not "xml"`},
		{[]string{"show", "vips", "nosuch", "--target", sock}, "NotFound: no /vips/vip[name=nosuch]"},
		{[]string{"show", "routes", "--target", "192.0.2.1:9339"}, "only the local unix socket is served yet"},
	}
	for _, tc := range tests {
		_, err := appliance(t, tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: got %v, want %q", tc.args, err, tc.want)
		}
	}
}
