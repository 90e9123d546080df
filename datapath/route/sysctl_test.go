package route

import (
	"bufio"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// configs/sysctl.conf, which the image installs, must say what the daemon
// writes.
func TestSysctlConfMatches(t *testing.T) {
	f, err := os.Open("../../configs/sysctl.conf")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got := map[string]string{}
	s := bufio.NewScanner(f)
	for s.Scan() {
		line := strings.TrimSpace(s.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("bad line %q", line)
		}
		got[strings.ReplaceAll(strings.TrimSpace(k), ".", "/")] = strings.TrimSpace(v)
	}
	if len(got) != len(Sysctls) {
		t.Errorf("configs/sysctl.conf has %d settings, Sysctls %d", len(got), len(Sysctls))
	}
	for k, v := range Sysctls {
		if got[k] != v {
			t.Errorf("%s: configs/sysctl.conf says %q, the daemon writes %q", k, got[k], v)
		}
	}
}

func TestApplySysctls(t *testing.T) {
	root := t.TempDir()
	write := func(p, v string) {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(v+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("net/ipv4/ip_forward", "0")
	write("net/ipv4/fib_multipath_hash_policy", "1")
	err := ApplySysctls(root, map[string]string{
		"net/ipv4/ip_forward":                "1",
		"net/ipv4/fib_multipath_hash_policy": "1",
		"net/nosuch/dir/key":                 "1",
	})
	if err == nil || !strings.Contains(err.Error(), "net.nosuch.dir.key=1") {
		t.Fatalf("a missing key must be reported by name, got %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(root, "net/ipv4/ip_forward")); strings.TrimSpace(string(b)) != "1" {
		t.Errorf("ip_forward = %q, want 1 (a failure elsewhere must not stop the rest)", b)
	}
}
