package main

import (
	"path/filepath"
	"testing"

	"portico.dev/appliance/store"
)

// The first start records the running configuration as revision 1; a start
// with the same file adds nothing; a changed file is a new revision.
func TestRecordRevision(t *testing.T) {
	st, err := store.Open(filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	steps := []struct {
		config     string
		wantLatest uint64
	}{
		{"name: a\n", 1},
		{"name: a\n", 1},
		{"name: b\n", 2},
		{"name: b\n", 2},
	}
	for i, s := range steps {
		if err := recordRevision(st, []byte(s.config), "test"); err != nil {
			t.Fatal(err)
		}
		r, err := st.LatestRevision()
		if err != nil {
			t.Fatal(err)
		}
		if r.Number != s.wantLatest || string(r.Config) != s.config {
			t.Fatalf("step %d: latest revision %d %q, want %d %q", i, r.Number, r.Config, s.wantLatest, s.config)
		}
	}
}

// The embedded default configuration is valid.
func TestEmbeddedDefault(t *testing.T) {
	c, _, src, err := loadConfig(filepath.Join(t.TempDir(), "missing.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if src != "embedded default" || c.Store != store.DefaultPath {
		t.Fatalf("loaded %q with store %q", src, c.Store)
	}
}
