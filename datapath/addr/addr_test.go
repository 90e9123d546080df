package addr

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"portico.dev/appliance/test/topo"
)

// newNS makes a throwaway network namespace and returns its name and a
// descriptor of it.
func newNS(t *testing.T) (string, int) {
	topo.RequireRoot(t)
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	name := "addrtest-" + hex.EncodeToString(b)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	f, err := os.Open("/var/run/netns/" + name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return name, int(f.Fd())
}

func loAddrs(t *testing.T, ns string) string {
	out, err := exec.Command("ip", "-n", ns, "addr", "show", "dev", "lo").CombinedOutput()
	if err != nil {
		t.Fatalf("ip addr show: %v: %s", err, out)
	}
	return string(out)
}

func addrs(s ...string) []netip.Addr {
	var out []netip.Addr
	for _, a := range s {
		out = append(out, netip.MustParseAddr(a))
	}
	return out
}

func TestSetOwnsOnlyWhatItAdded(t *testing.T) {
	ns, fd := newNS(t)
	ctx := context.Background()
	// The operator's own address on lo, there before the target.
	if out, err := exec.Command("ip", "-n", ns, "addr", "add", "198.51.100.1/32", "dev", "lo").CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	tg, err := New(fd)
	if err != nil {
		t.Fatal(err)
	}
	defer tg.Close()

	want := addrs("203.0.113.10", "2001:db8::10", "198.51.100.1")
	if err := tg.Set(ctx, want); err != nil {
		t.Fatal(err)
	}
	got := loAddrs(t, ns)
	for _, s := range []string{"203.0.113.10/32", "2001:db8::10/128", "198.51.100.1/32"} {
		if !strings.Contains(got, s) {
			t.Errorf("lo lacks %s:\n%s", s, got)
		}
	}
	if err := tg.Set(ctx, want); err != nil {
		t.Fatalf("second Set with the same list: %v", err)
	}
	owned, err := tg.Owned()
	if err != nil {
		t.Fatal(err)
	}
	if w := addrs("203.0.113.10", "2001:db8::10"); !slices.Equal(owned, w) {
		t.Errorf("Owned = %v, want %v (not the operator's address)", owned, w)
	}

	if err := tg.Set(ctx, nil); err != nil {
		t.Fatal(err)
	}
	got = loAddrs(t, ns)
	if strings.Contains(got, "203.0.113.10") || strings.Contains(got, "2001:db8::10") {
		t.Errorf("Set(nil) left VIP addresses:\n%s", got)
	}
	if !strings.Contains(got, "198.51.100.1/32") {
		t.Errorf("Set(nil) removed the operator's address:\n%s", got)
	}
}

// A new target (a restarted daemon) removes what an earlier run added only
// once told about it with Adopt.
func TestAdopt(t *testing.T) {
	ns, fd := newNS(t)
	ctx := context.Background()
	first, err := New(fd)
	if err != nil {
		t.Fatal(err)
	}
	if err := first.Set(ctx, addrs("203.0.113.10", "203.0.113.11")); err != nil {
		t.Fatal(err)
	}
	first.Close()

	second, err := New(fd)
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	if err := second.Set(ctx, addrs("203.0.113.10")); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(loAddrs(t, ns), "203.0.113.11/32") {
		t.Fatal("a target that was not told removed an address it did not add")
	}
	second.Adopt(addrs("203.0.113.10", "203.0.113.11"))
	if err := second.Set(ctx, addrs("203.0.113.10")); err != nil {
		t.Fatal(err)
	}
	got := loAddrs(t, ns)
	if strings.Contains(got, "203.0.113.11/32") || !strings.Contains(got, "203.0.113.10/32") {
		t.Fatalf("after Adopt, want only 203.0.113.10:\n%s", got)
	}
}
