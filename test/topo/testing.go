package topo

import (
	"fmt"
	"math/rand/v2"
	"os"
	"testing"
)

// RequireRoot skips t unless it runs as root. Where CI=true it fails t instead, because CI
// runs as root and a root test must never be skipped there.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("test needs root, and CI=true: CI must run root tests")
	}
	t.Skip("test needs root for network namespaces")
}

// UpT brings up the topology file at path for t, under a prefix of its own so that tests
// can run in parallel, and brings it down when t ends. It skips or fails t as RequireRoot
// does.
func UpT(t testing.TB, path string) *Lab {
	t.Helper()
	RequireRoot(t)
	topo, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	prefix := fmt.Sprintf("%s-%06x-", topo.Name, rand.N(1<<24))
	lab, err := Up(t.Context(), topo, Options{Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := lab.Down(); err != nil {
			t.Error(err)
		}
	})
	return lab
}
