package gnmi

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	gpb "github.com/openconfig/gnmi/proto/gnmi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// serve starts a server of st on a socket in a fresh directory and returns
// the socket's path; the server stops when the test ends.
func serve(t *testing.T, st State) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "run", "gnmi.sock")
	l, err := ListenUnix(path)
	if err != nil {
		t.Fatal(err)
	}
	s := newServer(st)
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

// ListenUnix makes the directory and the socket private to root and its
// group, replaces a socket nobody serves on, refuses one that is served
// and anything else at the path, and the socket goes when the server stops.
func TestListenUnix(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "run")
	path := filepath.Join(dir, "gnmi.sock")

	// A stale socket: bound, then its listener gone without unlinking.
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	stale, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	stale.SetUnlinkOnClose(false)
	stale.Close()
	if err := os.Remove(dir); err == nil {
		t.Fatal("the stale socket is gone already: the test proves nothing")
	}
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}

	// A fresh directory gets 0750.
	l, err := ListenUnix(path)
	if err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]os.FileMode{dir: os.ModeDir | 0o750, path: os.ModeSocket | 0o660} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != want {
			t.Errorf("%s: mode %v, want %v", p, fi.Mode(), want)
		}
	}
	// A served socket is refused.
	if _, err := ListenUnix(path); err == nil || !strings.Contains(err.Error(), "another process serves on it") {
		t.Errorf("second listener: %v", err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	// The stale one is replaced.
	l, err = ListenUnix(path)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	s := newServer(newFake())
	done := make(chan error, 1)
	go func() { done <- s.Serve(l) }()
	s.Stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Errorf("socket still there after Stop: %v", err)
	}

	// A file that is not a socket is left alone.
	if err := os.WriteFile(path, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ListenUnix(path); err == nil || !strings.Contains(err.Error(), "exists and is not a socket") {
		t.Errorf("listener over a file: %v", err)
	}
}

// The CLI's client reads leaves over the socket, decoded.
func TestClient(t *testing.T) {
	path := serve(t, newFake())
	for _, target := range []string{path, "unix://" + path, "unix:" + path} {
		c, err := Dial(target)
		if err != nil {
			t.Fatal(err)
		}
		leaves, err := c.Get(context.Background(), OriginPortico, "/vips/vip[name=web]/state/counters/packets", "/vips/vip[name=web]/config/port")
		c.Close()
		if err != nil {
			t.Fatalf("%s: %v", target, err)
		}
		if len(leaves) != 2 || leaves[0].Value != "1099511627776" || leaves[1].Value != int64(80) ||
			leaves[0].Key("vip", "name") != "web" || leaves[0].Origin != OriginPortico {
			t.Fatalf("%s: got %+v", target, leaves)
		}
		if under, ok := leaves[0].Under("vip"); !ok || under != "state/counters/packets" {
			t.Errorf("Under(vip) = %q, %v", under, ok)
		}
	}
}

func TestClientErrors(t *testing.T) {
	path := serve(t, newFake())
	c, err := Dial(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Get(context.Background(), "", "/vips/vip[name=web]/nothing"); err == nil ||
		err.Error() != `NotFound: /vips/vip has no element "nothing" (it has name, config, state, backends)` {
		t.Errorf("got %v", err)
	}

	missing := filepath.Join(t.TempDir(), "gnmi.sock")
	c2, err := Dial(missing)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	_, err = c2.Get(context.Background(), "", "/vips")
	want := "cannot reach the appliance at " + missing + ": no such file or directory (is the daemon running?)"
	if err == nil || err.Error() != want {
		t.Errorf("got %v\nwant %s", err, want)
	}

	if _, err := Dial("192.0.2.1:9339"); err == nil || !strings.Contains(err.Error(), "only the local unix socket is served yet") {
		t.Errorf("TCP target: %v", err)
	}
}

// Set and Subscribe answer Unimplemented over the wire, saying what to do
// instead.
func TestUnimplemented(t *testing.T) {
	c, err := Dial(serve(t, newFake()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = c.gnmi.Set(context.Background(), &gpb.SetRequest{})
	if s, _ := status.FromError(err); s.Code() != codes.Unimplemented || !strings.Contains(s.Message(), "change the configuration file and reload") {
		t.Errorf("Set: %v", err)
	}
	sub, err := c.gnmi.Subscribe(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	_, err = sub.Recv()
	if s, _ := status.FromError(err); s.Code() != codes.Unimplemented || !strings.Contains(s.Message(), "poll with Get") {
		t.Errorf("Subscribe: %v", err)
	}
}

// gnmi_cli, the reference client of github.com/openconfig/gnmi at the
// version go.mod pins (a tool there), reads the server over the unix
// socket: grpc-go resolves unix:///path targets itself.
func TestGNMICLI(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "gnmi_cli")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/openconfig/gnmi/cmd/gnmi_cli").CombinedOutput(); err != nil {
		t.Fatalf("build gnmi_cli: %v\n%s", err, out)
	}
	path := serve(t, newFake())
	run := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(bin, append([]string{"-address", "unix://" + path, "-insecure", "-timeout", "1m"}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("gnmi_cli %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		// prototext puts random runs of spaces after a colon.
		return strings.Join(strings.Fields(string(out)), " ")
	}
	caps := run("-capabilities")
	for _, want := range []string{`name: "portico"`, `version: "2026-12-01"`, "JSON_IETF"} {
		if !strings.Contains(caps, want) {
			t.Errorf("capabilities lack %s:\n%s", want, caps)
		}
	}
	get := run("-get", "-proto", `encoding: JSON_IETF
path: <origin: "openconfig"
  elem: <name: "network-instances"> elem: <name: "network-instance" key: <key: "name" value: "default">>
  elem: <name: "protocols"> elem: <name: "protocol" key: <key: "identifier" value: "BGP"> key: <key: "name" value: "BGP">>
  elem: <name: "bgp"> elem: <name: "neighbors"> elem: <name: "neighbor" key: <key: "neighbor-address" value: "*">>
  elem: <name: "state"> elem: <name: "session-state">>`)
	for _, want := range []string{
		`key: { key: "neighbor-address" value: "192.0.2.11" }`,
		`key: { key: "neighbor-address" value: "2001:db8::1" }`,
		`json_ietf_val: "\"ESTABLISHED\""`, `json_ietf_val: "\"ACTIVE\""`,
	} {
		if !strings.Contains(get, want) {
			t.Errorf("get lacks %s:\n%s", want, get)
		}
	}
}
