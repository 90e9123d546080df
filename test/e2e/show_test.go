package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"portico.dev/appliance/test/topo"
)

// showConfig is the appliance of the BGP lab: one VIP, and node1 as a
// node peer that may announce 198.51.100.0/24.
const showConfig = `management: {gnmi: {socket: %s}}
vips:
  - name: web
    address: 203.0.113.10
    port: 80
    backends:
      - {address: 10.0.1.2:8080, weight: 2}
bgp:
  asn: 65000
  router-id: 10.0.1.1
  peers:
    - {name: node1, address: 10.0.1.2, asn: 65001, role: node, accept: [198.51.100.0/24]}
`

// showBirdConf is node1's BIRD: it announces one prefix inside its
// accept list and one outside.
const showBirdConf = `router id 10.0.1.2;
log stderr all;
protocol device {}
protocol static announced {
	ipv4;
	route 198.51.100.0/24 blackhole;
	route 192.0.2.0/24 blackhole;
}
protocol bgp appliance {
	local 10.0.1.2 as 65001;
	neighbor 10.0.1.1 as 65000;
	hold time 9;
	keepalive time 3;
	connect delay time 1;
	connect retry time 2;
	ipv4 { import all; export all; };
}
`

// show runs `appliance show ARGS -o json --target SOCK` and decodes its
// output into v; it returns the error and output when the command fails.
func show(sock string, v any, args ...string) (string, error) {
	argv := append(append([]string{"show"}, args...), "-o", "json", "--target", "unix://"+sock)
	out, err := exec.Command(filepath.Join(binDir, "appliance"), argv...).CombinedOutput()
	if err != nil {
		return string(out), err
	}
	if err := json.Unmarshal(out, v); err != nil {
		return string(out), fmt.Errorf("decode: %w", err)
	}
	return string(out), nil
}

// The show commands read the running daemon over its socket: the BGP
// session with a real BIRD, the route it learned and installed, the
// kernel's table as ip route has it, the VIP; before the daemon runs they
// say it cannot be reached, and the socket goes when it stops.
func TestShow(t *testing.T) {
	l := &lab{t: t, Lab: topo.UpT(t, "../topo/bgp-ecmp.clab.yml"), dir: t.TempDir(), backends: map[string]*topo.Proc{}}
	sock := filepath.Join(l.dir, "run", "gnmi.sock")
	l.writeConfig(fmt.Sprintf(showConfig, sock))

	out, err := show(sock, nil, "vips")
	if want := "cannot reach the appliance at " + sock; err == nil || !strings.Contains(out, want) {
		t.Fatalf("show vips before the daemon runs: %v\n%s\nwant %q", err, out, want)
	}

	birdDir := t.TempDir()
	conf := filepath.Join(birdDir, "bird.conf")
	if err := os.WriteFile(conf, []byte(showBirdConf), 0o644); err != nil {
		t.Fatal(err)
	}
	bird, err := l.Start(context.Background(), "node1", "bird", "-f", "-c", conf, "-s", filepath.Join(birdDir, "bird.ctl"), "-P", filepath.Join(birdDir, "bird.pid"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := bird.Stop(10 * time.Second); err != nil {
			t.Error(err)
		}
	}()

	l.startAppliance()
	l.waitLog("msg=\"gnmi serving\"", 1)

	type neighbor struct {
		Address           string `json:"neighbor-address"`
		Name, Role        string
		PeerAS            uint32 `json:"peer-as"`
		SessionState      string `json:"session-state"`
		LastEstablished   string `json:"last-established"`
		ReceivedPrePolicy int    `json:"received-pre-policy"`
		Received          int
		Installed         int
		Rejected          int
		BFDState          string `json:"bfd-state"`
		Unprotected       bool
		GRNegotiated      bool `json:"graceful-restart-negotiated"`
		PeerRestarting    bool `json:"peer-restarting"`
		Stale             int
	}
	// Wait for the session and both routes; what is asserted follows.
	var ns []neighbor
	deadline := time.Now().Add(60 * time.Second)
	for {
		out, err := show(sock, &ns, "bgp", "neighbors")
		if err != nil {
			t.Fatalf("show bgp neighbors: %v\n%s", err, out)
		}
		if len(ns) == 1 && ns[0].SessionState == "ESTABLISHED" && ns[0].ReceivedPrePolicy == 2 && ns[0].Installed == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no established session with both routes within 60s: %s\nappliance:\n%s\nbird:\n%s", out, l.app.Output(), bird.Output())
		}
		time.Sleep(200 * time.Millisecond)
	}
	n := ns[0]
	if n.Address != "10.0.1.2" || n.Name != "node1" || n.Role != "node" || n.PeerAS != 65001 || n.Received != 1 || n.Rejected != 1 {
		t.Errorf("neighbor %+v", n)
	}
	// Neither BFD nor graceful restart is configured: BFD disabled is no
	// unprotected session, and nothing is negotiated or stale.
	if n.BFDState != "disabled" || n.Unprotected || n.GRNegotiated || n.PeerRestarting || n.Stale != 0 {
		t.Errorf("neighbor BFD and graceful restart %+v", n)
	}
	if est, err := time.Parse(time.RFC3339, n.LastEstablished); err != nil || est.After(time.Now()) {
		t.Errorf("last-established %q: %v", n.LastEstablished, err)
	}

	var learned []struct {
		Prefix   string
		NextHops []string `json:"next-hop"`
	}
	if out, err := show(sock, &learned, "bgp", "routes"); err != nil {
		t.Fatalf("show bgp routes: %v\n%s", err, out)
	}
	if len(learned) != 1 || learned[0].Prefix != "198.51.100.0/24" || !slices.Equal(learned[0].NextHops, []string{"10.0.1.2"}) {
		t.Errorf("bgp routes %+v", learned)
	}

	// show routes is the kernel's main table: the same routes as ip
	// route lists in the appliance's namespace, and the learned one via
	// node1.
	type hop struct{ Address, Interface string }
	var routes []struct {
		Prefix, Protocol, Type string
		NextHops               []hop `json:"next-hops"`
	}
	if out, err := show(sock, &routes, "routes"); err != nil {
		t.Fatalf("show routes: %v\n%s", err, out)
	}
	var got, want []string
	for _, r := range routes {
		got = append(got, r.Prefix+" "+r.Protocol)
		if r.Prefix == "198.51.100.0/24" && (r.Protocol != "bgp" || r.Type != "unicast" || !slices.Equal(r.NextHops, []hop{{"10.0.1.2", "eth1"}})) {
			t.Errorf("learned route %+v", r)
		}
	}
	for _, family := range []string{"-4", "-6"} {
		b, err := l.Exec(context.Background(), "appliance", "ip", "-j", family, "route", "show", "table", "main")
		if err != nil {
			t.Fatalf("ip route: %v\n%s", err, b)
		}
		var ipRoutes []struct{ Dst, Protocol string }
		if err := json.Unmarshal(b, &ipRoutes); err != nil {
			t.Fatal(err)
		}
		for _, r := range ipRoutes {
			if !strings.Contains(r.Dst, "/") {
				r.Dst += map[string]string{"-4": "/32", "-6": "/128"}[family]
			}
			want = append(want, r.Dst+" "+r.Protocol)
		}
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) || !slices.Contains(got, "198.51.100.0/24 bgp") || !slices.Contains(got, "10.0.1.0/24 kernel") {
		t.Errorf("show routes lists\n%s\nip route lists\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	var vips []struct {
		Name, Address, Protocol, Scheduler string
		Port                               int
		Backends                           []struct {
			Address, Health string
			Weight          int
		}
	}
	if out, err := show(sock, &vips, "vips"); err != nil {
		t.Fatalf("show vips: %v\n%s", err, out)
	}
	if len(vips) != 1 || vips[0].Name != "web" || vips[0].Address != "203.0.113.10" || vips[0].Port != 80 || vips[0].Protocol != "tcp" ||
		vips[0].Scheduler != "maglev" || len(vips[0].Backends) != 1 || vips[0].Backends[0].Address != "10.0.1.2:8080" ||
		vips[0].Backends[0].Weight != 2 || vips[0].Backends[0].Health != "unchecked" {
		t.Errorf("vips %+v", vips)
	}

	// The table form, as a person reads it.
	b, err := exec.Command(filepath.Join(binDir, "appliance"), "show", "bgp", "neighbors", "--target", sock).CombinedOutput()
	if err != nil || !strings.Contains(string(b), "10.0.1.2") || !strings.Contains(string(b), "ESTABLISHED") || !strings.Contains(string(b), "disabled") {
		t.Errorf("show bgp neighbors: %v\n%s", err, b)
	}

	if err := l.app.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := l.app.Wait(); err != nil {
		t.Fatalf("appliance: %v\n%s", err, l.app.Output())
	}
	if _, err := os.Lstat(sock); !os.IsNotExist(err) {
		t.Errorf("socket left after the daemon stopped: %v", err)
	}
}
