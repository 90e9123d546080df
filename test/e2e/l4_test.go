package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"portico.dev/appliance/datapath/nft"
)

const (
	vip4 = "203.0.113.10"
	vip6 = "2001:db8::10"
)

// threeBackends is the VIP set most tests start from.
const threeBackends = `vips:
  - name: web
    address: 203.0.113.10
    port: 80
    health: {type: tcp, interval: 200ms, timeout: 150ms, rise: 2, fall: 2}
    backends:
      - {address: 10.0.1.11:8080}
      - {address: 10.0.2.12:8080}
      - {address: 10.0.3.13:8080}
  - name: web6
    address: "2001:db8::10"
    port: 80
    snat: true
    backends:
      - {address: "[fd00:1::11]:8080"}
      - {address: "[fd00:2::12]:8080"}
      - {address: "[fd00:3::13]:8080"}
  - name: dns
    address: 203.0.113.10
    port: 53
    protocol: udp
    scheduler: round-robin
    backends:
      - {address: 10.0.1.11:5353, weight: 2}
      - {address: 10.0.2.12:5353}
`

func echoVIP(backends ...string) string {
	var b strings.Builder
	b.WriteString("  - name: echo\n    address: 203.0.113.10\n    port: 9000\n    backends:\n")
	for _, be := range backends {
		fmt.Fprintf(&b, "      - {address: %s}\n", be)
	}
	return b.String()
}

var echoAll = []string{"10.0.1.11:9000", "10.0.2.12:9000", "10.0.3.13:9000"}

// TestBalance: new connections reach every backend in proportion; without
// SNAT the backend sees the client's address, with SNAT the appliance's;
// UDP and IPv6 VIPs work; the kernel counts per VIP and per backend.
func TestBalance(t *testing.T) {
	l := newLab(t)
	l.writeConfig(threeBackends)
	l.startAppliance()

	const n = 300
	hits := map[string]int{}
	for range n {
		name, from, err := l.ask(vip4 + ":80")
		if err != nil {
			t.Fatal(err)
		}
		hits[name]++
		if host, _, _ := net.SplitHostPort(from); host != "10.0.0.2" {
			t.Fatalf("snat false: backend saw %s, want the client 10.0.0.2", from)
		}
	}
	for _, be := range []string{"be1", "be2", "be3"} {
		if share := float64(hits[be]) / n; share < 0.20 || share > 0.47 {
			t.Errorf("%s got %d of %d new connections (%.0f%%), want 20..47%%: %v", be, hits[be], n, 100*share, hits)
		}
	}

	seen6 := map[string]bool{}
	for range 60 {
		name, from, err := l.ask("[" + vip6 + "]:80")
		if err != nil {
			t.Fatal(err)
		}
		seen6[name] = true
		host, _, _ := net.SplitHostPort(from)
		if want := "fd00:" + name[2:] + "::1"; host != want {
			t.Fatalf("snat true: %s saw %s, want the appliance's address %s", name, from, want)
		}
	}
	if len(seen6) != 3 {
		t.Errorf("IPv6 VIP reached %v, want all 3 backends", seen6)
	}

	udp := map[string]int{}
	for range 30 {
		c, err := l.dial("udp", vip4+":53")
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(3 * time.Second))
		fmt.Fprint(c, "q")
		buf := make([]byte, 256)
		k, err := c.Read(buf)
		c.Close()
		if err != nil {
			t.Fatalf("udp VIP: %v", err)
		}
		udp[strings.Fields(string(buf[:k]))[0]]++
	}
	// round-robin with weights 2:1 over new flows
	if udp["be1"] != 20 || udp["be2"] != 10 {
		t.Errorf("udp round-robin 2:1 over 30 flows gave %v, want be1 20, be2 10", udp)
	}

	out, err := l.Exec(context.Background(), "appliance", "nft", "list", "set", "inet", "portico", "backend_counters4")
	if err != nil {
		t.Fatal(err)
	}
	for _, be := range []string{"10.0.1.11 . 8080", "10.0.2.12 . 8080", "10.0.3.13 . 8080"} {
		m := regexp.MustCompile(regexp.QuoteMeta(be) + ` counter packets (\d+) bytes (\d+)`).FindStringSubmatch(string(out))
		if m == nil {
			t.Fatalf("no counter for %s in\n%s", be, out)
		}
		// every connection is at least 3 packets each way
		if p, _ := strconv.Atoi(m[1]); p < 6*hits["be"+be[7:8]] {
			t.Errorf("backend %s counted %s packets for %d connections", be, m[1], hits["be"+be[7:8]])
		}
	}
}

// echoConn is a long-lived connection to the echo VIP.
type echoConn struct {
	net.Conn
	r       *bufio.Reader
	backend string
}

func (l *lab) openEcho(t *testing.T, n int) []*echoConn {
	t.Helper()
	conns := make([]*echoConn, 0, n)
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	for range n {
		c, err := l.dial("tcp", vip4+":9000")
		if err != nil {
			t.Fatal(err)
		}
		ec := &echoConn{Conn: c, r: bufio.NewReader(c)}
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		hello, err := ec.r.ReadString('\n')
		if err != nil {
			t.Fatalf("echo hello: %v", err)
		}
		ec.backend = strings.Fields(hello)[0]
		conns = append(conns, ec)
	}
	return conns
}

// roundTrip checks every connection still echoes; it returns the failures.
func roundTrip(conns []*echoConn, tag string) []string {
	var mu sync.Mutex
	var failed []string
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Go(func() {
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			msg := fmt.Sprintf("%s-%d", tag, i)
			_, err := fmt.Fprintln(c, msg)
			var got string
			if err == nil {
				got, err = c.r.ReadString('\n')
			}
			if err != nil || strings.TrimSpace(got) != msg {
				mu.Lock()
				failed = append(failed, fmt.Sprintf("conn %d (%s): %q %v", i, c.backend, got, err))
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return failed
}

// TestBackendChangeKeepsFlows: 1,000 long-lived connections; removing a
// backend resets none of them (conntrack keeps every flow where it was),
// new flows avoid the removed backend; adding it back moves no existing
// flow.
func TestBackendChangeKeepsFlows(t *testing.T) {
	l := newLab(t)
	l.writeConfig("vips:\n" + echoVIP(echoAll...))
	l.startAppliance()

	conns := l.openEcho(t, 1000)
	per := map[string]int{}
	for _, c := range conns {
		per[c.backend]++
	}
	if len(per) != 3 {
		t.Fatalf("1000 connections reached %v, want 3 backends", per)
	}
	if f := roundTrip(conns, "before"); len(f) > 0 {
		t.Fatalf("%d connections failed before any change: %v", len(f), f[:min(5, len(f))])
	}

	l.reload("vips:\n"+echoVIP(echoAll[:2]...), "msg=applied")
	if f := roundTrip(conns, "removed"); len(f) > 0 {
		t.Fatalf("after removing be3, %d of 1000 connections failed: %v", len(f), f[:min(5, len(f))])
	}
	for _, c := range l.openEcho(t, 100) {
		if c.backend == "be3" {
			t.Fatal("a new connection reached the removed backend be3")
		}
	}

	l.reload("vips:\n"+echoVIP(echoAll...), "msg=applied")
	if f := roundTrip(conns, "readded"); len(f) > 0 {
		t.Fatalf("after adding be3 back, %d of 1000 connections failed: %v", len(f), f[:min(5, len(f))])
	}
	t.Logf("1000 flows %v: 0 failures across remove and re-add", per)
}

// TestHealth: a backend whose server dies leaves the table after fall
// failed checks; when it comes back it returns after rise good ones.
func TestHealth(t *testing.T) {
	l := newLab(t)
	l.writeConfig(threeBackends)
	l.startAppliance()

	if err := l.backends["be2"].Stop(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	l.waitLog(`backend=web/10.0.2.12:8080 up=false`, 1)
	l.waitLog("msg=applied", 2)
	for range 60 {
		name, _, err := l.ask(vip4 + ":80")
		if err != nil {
			t.Fatalf("a new connection failed while be2 is down: %v", err)
		}
		if name == "be2" {
			t.Fatal("be2 is down but got a new connection")
		}
	}
	l.startBackend("be2")
	l.waitLog(`backend=web/10.0.2.12:8080 up=true`, 1)
	l.waitLog("msg=applied", 3)
	seen := false
	for range 100 {
		if name, _, err := l.ask(vip4 + ":80"); err == nil && name == "be2" {
			seen = true
			break
		}
	}
	if !seen {
		t.Fatal("be2 is back up but got no new connection in 100")
	}
}

// TestRestartUnderLoad: wrk opens a new connection for every request
// while the daemon is stopped and started again: no request fails, because
// the kernel keeps forwarding and the new daemon adopts the table.
func TestRestartUnderLoad(t *testing.T) {
	if _, err := exec.LookPath("wrk"); err != nil {
		t.Fatal("wrk is needed: apt-get install wrk")
	}
	l := newLab(t)
	l.writeConfig(threeBackends)
	l.startAppliance()

	wrk, err := l.Start(context.Background(), "client", "wrk", "-t", "2", "-c", "16", "-d", "6s",
		"-H", "Connection: close", "http://"+vip4+"/")
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond)
	// The map that holds the VIP's lookup table (among others').
	slots := nft.SlotMap(nft.Key{Addr: netip.MustParseAddr(vip4), Proto: nft.TCP, Port: 80})
	before, _ := l.Exec(context.Background(), "appliance", "nft", "list", "map", "inet", "portico", slots)
	if err := l.app.Stop(10 * time.Second); err != nil {
		t.Fatalf("stop: %v", err)
	}
	time.Sleep(500 * time.Millisecond) // no daemon at all for a while
	l.startAppliance()
	after, _ := l.Exec(context.Background(), "appliance", "nft", "list", "map", "inet", "portico", slots)
	if err := wrk.Wait(); err != nil {
		t.Fatalf("wrk: %v\n%s", err, wrk.Output())
	}
	out := wrk.Output()
	if strings.Contains(out, "Socket errors") || strings.Contains(out, "Non-2xx") {
		t.Fatalf("requests failed across the restart:\n%s", out)
	}
	m := regexp.MustCompile(`(\d+) requests in`).FindStringSubmatch(out)
	if m == nil || m[1] == "0" {
		t.Fatalf("wrk made no requests:\n%s", out)
	}
	if string(before) != string(after) {
		t.Errorf("the restart changed the slot map:\n%s\n---\n%s", before, after)
	}
	if !strings.Contains(l.app.Output(), "adopted existing table") {
		t.Errorf("the new daemon did not adopt the table:\n%s", l.app.Output())
	}
	t.Logf("restart under load: %s requests, 0 failed", m[1])
}

// TestBadReload: a configuration that does not validate is refused with
// its reasons and the running one stays, traffic included.
func TestBadReload(t *testing.T) {
	l := newLab(t)
	l.writeConfig(threeBackends)
	l.startAppliance()
	before, _ := l.Exec(context.Background(), "appliance", "nft", "list", "table", "inet", "portico")

	l.reload("vips:\n  - {name: web, address: 203.0.113.10, port: 0, backends: [{address: 10.0.1.11:8080}]}\n", "reload refused")
	if !strings.Contains(l.app.Output(), "vips[0].port: must be 1..65535") {
		t.Errorf("refusal does not name the field:\n%s", l.app.Output())
	}
	if _, _, err := l.ask(vip4 + ":80"); err != nil {
		t.Fatalf("traffic stopped after a refused reload: %v", err)
	}
	after, _ := l.Exec(context.Background(), "appliance", "nft", "list", "table", "inet", "portico")
	strip := regexp.MustCompile(`counter packets \d+ bytes \d+`)
	if strip.ReplaceAllString(string(before), "") != strip.ReplaceAllString(string(after), "") {
		t.Error("a refused reload changed the datapath")
	}
}

// TestCleanup: on exit the datapath stays unless --cleanup is given.
func TestCleanup(t *testing.T) {
	l := newLab(t)
	l.writeConfig(threeBackends)
	l.startAppliance()
	if err := l.app.Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	if _, _, err := l.ask(vip4 + ":80"); err != nil {
		t.Fatalf("no daemon: the kernel should keep forwarding: %v", err)
	}
	l.startAppliance("--cleanup")
	if err := l.app.Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	if out, err := l.Exec(context.Background(), "appliance", "nft", "list", "table", "inet", "portico"); err == nil {
		t.Fatalf("--cleanup left the table:\n%s", out)
	}
	out, _ := l.Exec(context.Background(), "appliance", "ip", "addr", "show", "dev", "lo")
	if strings.Contains(string(out), vip4) {
		t.Fatalf("--cleanup left the VIP address on lo:\n%s", out)
	}
}

// TestValidate: the CLI refuses a bad file with path: reason lines, exit 1.
func TestValidate(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	doc := "name: x\nfoo: 1\nvips:\n  - {name: a, address: 203.0.113.1, port: 80, protocol: sctp, backends: [{address: 10.0.0.1}]}\n"
	if err := os.WriteFile(bad, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(binDir, "appliance"), "validate", "--config", bad)
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
		t.Fatalf("validate of a bad file: %v, want exit 1\n%s", err, out)
	}
	for _, want := range []string{"foo: unknown key", `vips[0].protocol: must be tcp or udp, not "sctp"`, "vips[0].backends[0].address: not address:port"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("validate output lacks %q:\n%s", want, out)
		}
	}
}
