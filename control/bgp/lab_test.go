package bgp

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"text/template"
	"time"

	"portico.dev/appliance/test/topo"
)

// The lab tests run the Speaker in a process of its own in the appliance's namespace of
// the bgp-ecmp lab (see speakerEnv), and BIRD on the nodes and the upstream router.

const (
	labFile     = "../../test/topo/bgp-ecmp.clab.yml"
	waitTimeout = 30 * time.Second // for what takes 1-3 s on an idle machine
)

var applianceGlobal = Global{ASN: 65000, RouterID: netip.MustParseAddr("10.0.0.1")}

// nodeAddrs returns the appliance's and node n's addresses on their link (n = 1..4, 4
// being the upstream router).
func nodeAddrs(n int, v6 bool) (appliance, node netip.Addr) {
	if v6 {
		return netip.MustParseAddr(fmt.Sprintf("fd00:%d::1", n)), netip.MustParseAddr(fmt.Sprintf("fd00:%d::2", n))
	}
	return netip.MustParseAddr(fmt.Sprintf("10.0.%d.1", n)), netip.MustParseAddr(fmt.Sprintf("10.0.%d.2", n))
}

// speaker is the speaker process of a lab.
type speaker struct {
	t    *testing.T
	proc *topo.Proc
	http *http.Client
}

// startSpeaker starts the speaker process in the lab's appliance namespace and stops it
// when the test ends, failing the test unless it exits cleanly.
func startSpeaker(t *testing.T, lab *topo.Lab) *speaker {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "speaker.sock")
	// Not t.Context(): that ends before cleanups run and would kill the process, which
	// must get SIGTERM and show that it stops cleanly.
	proc, err := lab.Start(context.Background(), "appliance", "env", speakerEnv+"="+sock, exe)
	if err != nil {
		t.Fatal(err)
	}
	s := &speaker{t: t, proc: proc, http: &http.Client{
		Timeout: waitTimeout,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}},
	}}
	t.Cleanup(s.stop)
	deadline := time.Now().Add(waitTimeout)
	for {
		resp, err := s.http.Get("http://speaker/state")
		if err == nil {
			resp.Body.Close()
			return s
		}
		select {
		case <-proc.Done():
			t.Fatalf("speaker exited: %v\n%s", proc.Wait(), proc.Output())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("speaker does not answer: %v\n%s", err, proc.Output())
		}
	}
}

// stop stops the speaker with SIGTERM, which must end its Run cleanly.
func (s *speaker) stop() {
	if err := s.proc.Stop(10 * time.Second); err != nil {
		s.t.Error(err)
	}
	if err := s.proc.Wait(); err != nil {
		s.t.Errorf("speaker: %v\n%s", err, s.proc.Output())
	}
}

// set calls Set in the speaker.
func (s *speaker) set(c Config) error {
	body, err := json.Marshal(c)
	if err != nil {
		s.t.Fatal(err)
	}
	resp, err := s.http.Post("http://speaker/config", "application/json", bytes.NewReader(body))
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s", bytes.TrimSpace(msg))
	}
	return nil
}

// mustSet calls Set in the speaker and fails the test if it fails.
func (s *speaker) mustSet(c Config) {
	s.t.Helper()
	if err := s.set(c); err != nil {
		s.t.Fatalf("set: %v", err)
	}
}

func (s *speaker) state() speakerState {
	resp, err := s.http.Get("http://speaker/state")
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	var st speakerState
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		s.t.Fatal(err)
	}
	return st
}

// waitFor polls the speaker until ok holds and returns that state, or fails the test.
func (s *speaker) waitFor(what string, ok func(speakerState) bool) speakerState {
	s.t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		st := s.state()
		if ok(st) {
			return st
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("%s: not within %s\nroutes: %s\nneighbors: %+v\nspeaker log:\n%s",
				what, waitTimeout, routesString(st.Routes), st.Neighbors, s.proc.Output())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// neighbor returns the state of the named peer, and false if the speaker has none.
func (st speakerState) neighbor(name string) (NeighborState, bool) {
	for _, n := range st.Neighbors {
		if n.Name == name {
			return n, true
		}
	}
	return NeighborState{}, false
}

// established reports whether the named peers' sessions are established.
func (st speakerState) established(names ...string) bool {
	for _, name := range names {
		if n, ok := st.neighbor(name); !ok || n.State != "established" {
			return false
		}
	}
	return true
}

// routesString renders routes as "PREFIX via NH,NH; ...".
func routesString(routes []Learned) string {
	var b strings.Builder
	for i, l := range routes {
		if i > 0 {
			b.WriteString("; ")
		}
		fmt.Fprintf(&b, "%s via ", l.Prefix)
		for j, nh := range l.NextHops {
			if j > 0 {
				b.WriteString(",")
			}
			b.WriteString(nh.String())
		}
	}
	return b.String()
}

// birdConf is the configuration of a BIRD peering with the appliance.
type birdConf struct {
	RouterID      netip.Addr
	ASN           uint32
	Local, Remote netip.Addr                // the BIRD's address and the appliance's
	Statics       map[string][]netip.Prefix // static protocol name: blackhole routes, announced
	// HoldTime and Keepalive are seconds, 9 and 3 if 0.
	HoldTime, Keepalive int
	// BFD, unless 0, is the interval of a BFD session with the appliance, multiplier 3.
	BFD time.Duration
	// RestartTime, unless 0, turns graceful restart on with this restart time in
	// seconds; BIRD is otherwise only graceful-restart aware (a helper).
	RestartTime int
}

// nodeConf returns the configuration of the BIRD on node n (1..4, as nodeAddrs) that
// peers with the appliance over IPv6 if v6, from asn, and announces statics.
func nodeConf(n int, v6 bool, asn uint32, statics map[string][]netip.Prefix) birdConf {
	appliance, node := nodeAddrs(n, v6)
	_, id := nodeAddrs(n, false)
	return birdConf{RouterID: id, ASN: asn, Local: node, Remote: appliance, Statics: statics}
}

var birdTemplate = template.Must(template.New("bird").Parse(`
router id {{.RouterID}};
log stderr all;
protocol device {}
{{range $name, $routes := .Statics}}
protocol static {{$name}} {
	{{$.Channel}};
{{range $routes}}	route {{.}} blackhole;
{{end}}}
{{end}}
{{if .BFD}}
protocol bfd {
	interface "*" {
		interval {{.BFD.Milliseconds}} ms;
		multiplier 3;
	};
}
{{end}}
protocol bgp appliance {
	local {{.Local}} as {{.ASN}};
	neighbor {{.Remote}} as {{.RemoteASN}};
	hold time {{or .HoldTime 9}};
	keepalive time {{or .Keepalive 3}};
	connect delay time 1;
	connect retry time 2;
	error wait time 1, 4;
{{if .BFD}}	bfd on;
{{end}}{{if .RestartTime}}	graceful restart on;
	graceful restart time {{.RestartTime}};
{{end}}	{{.Channel}} {
		import all;
		export {{if .Statics}}all{{else}}none{{end}};
	};
}
`))

// bird is a BIRD daemon on a node of a lab.
type bird struct {
	t    *testing.T
	lab  *topo.Lab
	node string
	dir  string // of its configuration, socket and pid file
	sock string
	conf string
	proc *topo.Proc
}

// startBird starts BIRD on node with c and waits until it answers birdc. The lab stops it.
func startBird(t *testing.T, lab *topo.Lab, node string, c birdConf) *bird {
	t.Helper()
	dir := t.TempDir()
	var text bytes.Buffer
	channel := "ipv4"
	if c.Local.Is6() {
		channel = "ipv6"
	}
	err := birdTemplate.Execute(&text, struct {
		birdConf
		Channel   string
		RemoteASN uint32
	}{c, channel, applianceGlobal.ASN})
	if err != nil {
		t.Fatal(err)
	}
	b := &bird{t: t, lab: lab, node: node, dir: dir, sock: filepath.Join(dir, "bird.ctl"), conf: text.String()}
	if err := os.WriteFile(filepath.Join(dir, "bird.conf"), text.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	b.start()
	return b
}

// start starts BIRD and waits until it answers birdc.
func (b *bird) start() {
	b.t.Helper()
	var err error
	b.proc, err = b.lab.Start(context.Background(), b.node, "bird", "-f", "-c", filepath.Join(b.dir, "bird.conf"), "-s", b.sock, "-P", filepath.Join(b.dir, "bird.pid"))
	if err != nil {
		b.t.Fatal(err)
	}
	deadline := time.Now().Add(waitTimeout)
	for {
		if _, err := b.birdc("show", "status"); err == nil {
			return
		}
		select {
		case <-b.proc.Done():
			b.t.Fatalf("bird on %s exited: %v\n%s\n%s", b.node, b.proc.Wait(), b.proc.Output(), b.conf)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			b.t.Fatalf("bird on %s does not answer:\n%s", b.node, b.proc.Output())
		}
	}
}

// kill kills BIRD with SIGKILL, as a crash would: its sessions end without a
// notification.
func (b *bird) kill() {
	b.t.Helper()
	if err := b.proc.Signal(syscall.SIGKILL); err != nil {
		b.t.Fatal(err)
	}
	<-b.proc.Done()
}

// birdc runs a birdc command and returns its output.
func (b *bird) birdc(args ...string) (string, error) {
	out, err := b.lab.Exec(context.Background(), b.node, append([]string{"birdc", "-s", b.sock}, args...)...)
	return string(out), err
}

// mustBirdc runs a birdc command, fails the test if it fails, and returns its output.
func (b *bird) mustBirdc(args ...string) string {
	b.t.Helper()
	out, err := b.birdc(args...)
	if err != nil {
		b.t.Fatal(err)
	}
	return out
}

// session returns BIRD's line about its session with the appliance: its state and since
// when it has been in it.
func (b *bird) session() string {
	b.t.Helper()
	for line := range strings.Lines(b.mustBirdc("show", "protocols", "appliance")) {
		if strings.HasPrefix(line, "appliance") {
			return strings.TrimSpace(line)
		}
	}
	b.t.Fatalf("bird on %s: no protocol appliance", b.node)
	return ""
}

// oneSession reports whether two lines of session are about one session: the same
// state since the same moment. BIRD prints that moment as the wall-clock time that its
// monotonic clock gives at each print, so one moment can print a millisecond apart.
func oneSession(a, b string) bool {
	fa, fb := strings.Fields(a), strings.Fields(b)
	if len(fa) < 5 || len(fb) < 5 {
		return false
	}
	ta, errA := time.Parse("15:04:05.000", fa[4])
	tb, errB := time.Parse("15:04:05.000", fb[4])
	d := ta.Sub(tb).Abs()
	fa[4], fb[4] = "", ""
	return errA == nil && errB == nil && d < 50*time.Millisecond && slices.Equal(fa, fb)
}

// waitFor polls birdc args until ok holds for its output, or fails the test. birdc's exit
// status does not count: it fails on answers such as "Network not found".
func (b *bird) waitFor(what string, ok func(string) bool, args ...string) string {
	b.t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		out, _ := b.birdc(args...)
		if ok(out) {
			return out
		}
		if time.Now().After(deadline) {
			b.t.Fatalf("bird on %s: %s: not within %s; birdc %s:\n%s", b.node, what, waitTimeout, strings.Join(args, " "), out)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// stop stops BIRD; it closes its session with a Cease notification first.
func (b *bird) stop() {
	if err := b.proc.Stop(10 * time.Second); err != nil {
		b.t.Fatal(err)
	}
}
