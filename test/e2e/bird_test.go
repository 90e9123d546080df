package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"text/template"
	"time"

	"portico.dev/appliance/test/topo"
)

// BIRD 2 on the cluster nodes of the BGP lab.

// applianceASN is the appliance's AS in every BGP test.
const applianceASN = 65000

// static is one of BIRD's static protocols: blackhole routes that BIRD
// announces but installs nowhere (BIRD runs no kernel protocol), so the
// node's kernel keeps serving the addresses on its lo.
type static struct {
	Name     string
	Routes   []string // prefixes
	Disabled bool     // until birdc enable NAME
}

// birdConf is the configuration of the BIRD on node N (1..3) of the BGP
// lab: one session with the appliance over IPv6 if V6, else IPv4, from AS
// ASN, exporting the statics with itself as next hop.
type birdConf struct {
	N       int
	ASN     uint32
	V6      bool
	Statics []static
	// BFD protects the session with BFD, 100 ms × 3.
	BFD bool
}

// nodeAddr is node n's address on its link with the appliance.
func nodeAddr(n int, v6 bool) netip.Addr {
	if v6 {
		return netip.MustParseAddr(fmt.Sprintf("fd00:%d::2", n))
	}
	return netip.MustParseAddr(fmt.Sprintf("10.0.%d.2", n))
}

// applianceAddr is the appliance's address on its link with node n (n = 4:
// the upstream router).
func applianceAddr(n int, v6 bool) netip.Addr {
	if v6 {
		return netip.MustParseAddr(fmt.Sprintf("fd00:%d::1", n))
	}
	return netip.MustParseAddr(fmt.Sprintf("10.0.%d.1", n))
}

var birdTemplate = template.Must(template.New("bird").Parse(`
router id 10.0.{{.N}}.2;
log stderr all;
protocol device {}
{{if .BFD}}protocol bfd {
	interface "eth0" { min rx interval 100 ms; min tx interval 100 ms; multiplier 3; };
}
{{end}}{{range .Statics}}
protocol static {{.Name}} {
{{if .Disabled}}	disabled;
{{end}}	{{$.Channel}};
{{range .Routes}}	route {{.}} blackhole;
{{end}}}
{{end}}
protocol bgp appliance {
	local {{.Local}} as {{.ASN}};
	neighbor {{.Remote}} as {{.ApplianceASN}};
	hold time 9;
	keepalive time 3;
	connect delay time 1;
	connect retry time 2;
	error wait time 1, 4;
{{if .BFD}}	bfd on;
{{end}}	{{.Channel}} {
		import none;
		export all;
	};
}
`))

// bird is a BIRD daemon on a node of the lab.
type bird struct {
	l    *lab
	node string
	sock string
	proc *topo.Proc
}

// startBird starts BIRD on node nodeN with c and waits until it answers
// birdc; the lab stops it.
func (l *lab) startBird(c birdConf) *bird {
	l.t.Helper()
	dir := l.t.TempDir()
	conf := filepath.Join(dir, "bird.conf")
	channel := "ipv4"
	if c.V6 {
		channel = "ipv6"
	}
	var text bytes.Buffer
	err := birdTemplate.Execute(&text, struct {
		birdConf
		Channel       string
		Local, Remote netip.Addr
		ApplianceASN  uint32
	}{c, channel, nodeAddr(c.N, c.V6), applianceAddr(c.N, c.V6), applianceASN})
	if err != nil {
		l.t.Fatal(err)
	}
	if err := os.WriteFile(conf, text.Bytes(), 0o644); err != nil {
		l.t.Fatal(err)
	}
	b := &bird{l: l, node: fmt.Sprintf("node%d", c.N), sock: filepath.Join(dir, "bird.ctl")}
	b.proc, err = l.Start(context.Background(), b.node, "bird", "-f", "-c", conf, "-s", b.sock, "-P", filepath.Join(dir, "bird.pid"))
	if err != nil {
		l.t.Fatal(err)
	}
	deadline := time.Now().Add(waitTimeout)
	for {
		if _, err := b.birdc("show", "status"); err == nil {
			return b
		}
		select {
		case <-b.proc.Done():
			l.t.Fatalf("bird on %s exited: %v\n%s\n%s", b.node, b.proc.Wait(), b.proc.Output(), text.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			l.t.Fatalf("bird on %s does not answer birdc:\n%s", b.node, b.proc.Output())
		}
	}
}

// birdc runs a birdc command and returns its output.
func (b *bird) birdc(args ...string) (string, error) {
	out, err := b.l.Exec(context.Background(), b.node, append([]string{"birdc", "-s", b.sock}, args...)...)
	return string(out), err
}

// mustBirdc runs a birdc command and fails the test if birdc fails.
func (b *bird) mustBirdc(args ...string) string {
	b.l.t.Helper()
	out, err := b.birdc(args...)
	if err != nil {
		b.l.t.Fatal(err)
	}
	return out
}

// session returns BIRD's line about its protocol appliance, which ends
// with the session's state.
func (b *bird) session() string {
	b.l.t.Helper()
	for line := range strings.Lines(b.mustBirdc("show", "protocols", "appliance")) {
		if strings.HasPrefix(line, "appliance") {
			return strings.Join(strings.Fields(line), " ")
		}
	}
	b.l.t.Fatalf("bird on %s: no protocol appliance", b.node)
	return ""
}

// waitEstablished waits until BIRD's session with the appliance is
// established.
func (b *bird) waitEstablished() {
	b.l.t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		s := b.session()
		if strings.HasSuffix(s, "Established") {
			return
		}
		if time.Now().After(deadline) {
			b.l.t.Fatalf("bird on %s: session with the appliance not established within %s: %s\n%s",
				b.node, waitTimeout, s, b.l.app.Output())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitFor polls birdc args until ok holds for its output, or fails the
// test. birdc's exit status does not count: it fails on answers such as
// "Network not found".
func (b *bird) waitFor(what string, ok func(string) bool, args ...string) string {
	b.l.t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		out, _ := b.birdc(args...)
		if ok(out) {
			return out
		}
		if time.Now().After(deadline) {
			b.l.t.Fatalf("bird on %s: %s: not within %s; birdc %s:\n%s", b.node, what, waitTimeout, strings.Join(args, " "), out)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
