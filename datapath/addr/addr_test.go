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

// TestSetMany sets more addresses than one write carries, of both
// families, then half of them, then none: lo holds exactly what is asked
// each time, each address with its prefix length and no duplicate address
// detection.
func TestSetMany(t *testing.T) {
	ns, fd := newNS(t)
	ctx := context.Background()
	tg, err := New(fd)
	if err != nil {
		t.Fatal(err)
	}
	defer tg.Close()
	var all []netip.Addr
	for i := range 2*perWrite + 100 {
		all = append(all, netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}))
		if i%10 == 0 {
			all = append(all, netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 14: byte(i >> 8), 15: byte(i)}))
		}
	}
	for _, want := range [][]netip.Addr{all, all[:len(all)/2], nil} {
		if err := tg.Set(ctx, want); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command("ip", "-n", ns, "-o", "addr", "show", "dev", "lo").CombinedOutput()
		if err != nil {
			t.Fatalf("ip addr show: %v: %s", err, out)
		}
		var got []netip.Addr
		for line := range strings.Lines(string(out)) {
			f := strings.Fields(line)
			p, err := netip.ParsePrefix(f[3])
			if err != nil || p.Addr().IsLoopback() {
				continue
			}
			if p.Bits() != p.Addr().BitLen() || p.Addr().Is6() && !strings.Contains(line, "nodad") {
				t.Errorf("lo holds %s", strings.TrimSpace(line))
			}
			got = append(got, p.Addr())
		}
		slices.SortFunc(got, netip.Addr.Compare)
		want = slices.Clone(want)
		slices.SortFunc(want, netip.Addr.Compare)
		if !slices.Equal(got, want) {
			t.Fatalf("lo holds %d VIP addresses, want %d", len(got), len(want))
		}
	}
}
