package store

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func openTemp(t *testing.T) (*Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "state.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	return s, path
}

func reopen(t *testing.T, s *Store, path string) *Store {
	t.Helper()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func rev(i int) Revision {
	return Revision{
		Time:    time.Date(2025, 1, 1, 0, i, 0, 0, time.UTC),
		User:    "admin",
		Message: fmt.Sprintf("change %d", i),
		Config:  fmt.Appendf(nil, "vips:\n  - name: web%d\n", i),
	}
}

func equalRevision(a, b Revision) bool {
	return a.Number == b.Number && a.Time.Equal(b.Time) && a.User == b.User &&
		a.Message == b.Message && bytes.Equal(a.Config, b.Config)
}

func schemaVersion(t *testing.T, s *Store) uint64 {
	t.Helper()
	var v uint64
	err := s.db.View(func(tx *bolt.Tx) error {
		v = binary.BigEndian.Uint64(tx.Bucket(bucketMeta).Get(keySchemaVersion))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestOpenNew(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "lib", "appliance")
	path := filepath.Join(dir, "state.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	if got := schemaVersion(t, s); got != SchemaVersion {
		t.Errorf("schema version = %d, want %d", got, SchemaVersion)
	}
	for p, want := range map[string]os.FileMode{dir: 0o700 | os.ModeDir, path: 0o600} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != want {
			t.Errorf("%s: mode = %v, want %v", p, fi.Mode(), want)
		}
	}
}

func TestNotFound(t *testing.T) {
	s, _ := openTemp(t)
	defer s.Close()

	if _, err := s.Revision(1); !errors.Is(err, ErrNotFound) {
		t.Errorf("Revision(1) on empty store: err = %v, want ErrNotFound", err)
	}
	if _, err := s.LatestRevision(); !errors.Is(err, ErrNotFound) {
		t.Errorf("LatestRevision on empty store: err = %v, want ErrNotFound", err)
	}
	if _, err := s.LoadApplied(); !errors.Is(err, ErrNotFound) {
		t.Errorf("LoadApplied on empty store: err = %v, want ErrNotFound", err)
	}
	if rs, err := s.Revisions(); err != nil || len(rs) != 0 {
		t.Errorf("Revisions on empty store = %v, %v; want none", rs, err)
	}
	if _, err := s.AddRevision(rev(1)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Revision(2); !errors.Is(err, ErrNotFound) {
		t.Errorf("Revision(2) with only 1: err = %v, want ErrNotFound", err)
	}
}

func TestReopenKeepsState(t *testing.T) {
	s, path := openTemp(t)

	for i := 1; i <= 3; i++ {
		r := rev(i)
		r.Number = 42 // ignored
		n, err := s.AddRevision(r)
		if err != nil {
			t.Fatal(err)
		}
		if n != uint64(i) {
			t.Errorf("AddRevision #%d = %d, want %d", i, n, i)
		}
	}
	if err := s.SaveApplied(map[string][]byte{"old": []byte("1"), "a": []byte("0")}, nil, false); err != nil {
		t.Fatal(err)
	}
	// replace drops the parts it does not name; del and put change the rest.
	if err := s.SaveApplied(map[string][]byte{"a": []byte("1"), "b": []byte("1"), "c": []byte("1")}, nil, true); err != nil {
		t.Fatal(err)
	}
	if err := s.SaveApplied(map[string][]byte{"b": []byte("2")}, []string{"c", "gone already"}, false); err != nil {
		t.Fatal(err)
	}
	applied := map[string][]byte{"a": []byte("1"), "b": []byte("2")}

	s = reopen(t, s, path)
	defer s.Close()

	if got, err := s.LoadApplied(); err != nil || !maps.EqualFunc(got, applied, bytes.Equal) {
		t.Errorf("LoadApplied = %q, %v; want %q", got, err, applied)
	}
	n, err := s.AddRevision(rev(4))
	if err != nil {
		t.Fatal(err)
	}
	if n != 4 {
		t.Errorf("AddRevision after reopen = %d, want 4", n)
	}

	rs, err := s.Revisions()
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 4 {
		t.Fatalf("Revisions: got %d, want 4", len(rs))
	}
	for i, r := range rs {
		want := rev(4 - i)
		want.Number = uint64(4 - i)
		if !equalRevision(r, want) {
			t.Errorf("Revisions[%d] = %+v, want %+v", i, r, want)
		}
	}
	if r, err := s.Revision(2); err != nil || r.Message != "change 2" {
		t.Errorf("Revision(2) = %+v, %v; want change 2", r, err)
	}
	if r, err := s.LatestRevision(); err != nil || r.Number != 4 {
		t.Errorf("LatestRevision = %+v, %v; want number 4", r, err)
	}
}

// TestSchema1 opens a file an earlier version wrote: the whole applied
// state under one key, which LoadApplied returns as a part of that name.
func TestSchema1(t *testing.T) {
	s, path := openTemp(t)
	err := s.db.Update(func(tx *bolt.Tx) error {
		if err := tx.Bucket(bucketApplied).Put([]byte("desired_state"), []byte(`{"vips":[]}`)); err != nil {
			return err
		}
		return tx.Bucket(bucketMeta).Put(keySchemaVersion, itob(1))
	})
	if err != nil {
		t.Fatal(err)
	}
	s = reopen(t, s, path)
	defer s.Close()
	if got := schemaVersion(t, s); got != SchemaVersion {
		t.Errorf("schema version = %d, want %d", got, SchemaVersion)
	}
	want := map[string][]byte{"desired_state": []byte(`{"vips":[]}`)}
	if got, err := s.LoadApplied(); err != nil || !maps.EqualFunc(got, want, bytes.Equal) {
		t.Errorf("LoadApplied = %q, %v; want %q", got, err, want)
	}
}

func TestNewerSchemaRefused(t *testing.T) {
	s, path := openTemp(t)
	err := s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMeta).Put(keySchemaVersion, itob(SchemaVersion+1))
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s, err = Open(path)
	if err == nil {
		s.Close()
		t.Fatal("Open of a newer schema succeeded")
	}
	want := fmt.Sprintf("store: open %s: schema version %d is newer than this binary supports (%d)",
		path, SchemaVersion+1, SchemaVersion)
	if err.Error() != want {
		t.Errorf("err = %q, want %q", err, want)
	}
}

func TestLocked(t *testing.T) {
	s, path := openTemp(t)
	defer s.Close()

	start := time.Now()
	s2, err := Open(path)
	if err == nil {
		s2.Close()
		t.Fatal("second Open of a held file succeeded")
	}
	if elapsed := time.Since(start); elapsed > lockTimeout+2*time.Second {
		t.Errorf("second Open took %v, want about %v", elapsed, lockTimeout)
	}
	want := fmt.Sprintf("store: open %s: locked by another process?", path)
	if err.Error() != want {
		t.Errorf("err = %q, want %q", err, want)
	}
}

func TestPrune(t *testing.T) {
	s, path := openTemp(t)
	defer func() { s.Close() }()
	s.keep = 3 // KeepRevisions fsyncs would make this slow

	check := func(newest uint64) {
		t.Helper()
		rs, err := s.Revisions()
		if err != nil {
			t.Fatal(err)
		}
		var got []uint64
		for _, r := range rs {
			got = append(got, r.Number)
		}
		var want []uint64
		for n := newest; n > 0 && len(want) < s.keep; n-- {
			want = append(want, n)
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("after %d revisions: kept %v, want %v", newest, got, want)
		}
	}
	for i := 1; i <= 8; i++ {
		if _, err := s.AddRevision(rev(i)); err != nil {
			t.Fatal(err)
		}
		check(uint64(i))
	}
	if _, err := s.Revision(5); !errors.Is(err, ErrNotFound) {
		t.Errorf("Revision(5) after pruning: err = %v, want ErrNotFound", err)
	}

	// Numbers are never reused after pruning, across a reopen too.
	s = reopen(t, s, path)
	s.keep = 3
	n, err := s.AddRevision(rev(9))
	if err != nil {
		t.Fatal(err)
	}
	if n != 9 {
		t.Errorf("AddRevision after prune and reopen = %d, want 9", n)
	}
	check(9)
}

// crashChildEnv, when set, makes TestCrashDurability act as the child: it
// adds a revision to the store at the path given, reports the number on
// stdout and waits to be killed.
const crashChildEnv = "STORE_TEST_CRASH_CHILD"

func TestCrashDurability(t *testing.T) {
	if path := os.Getenv(crashChildEnv); path != "" {
		crashChild(path)
		return
	}

	s, path := openTemp(t)
	if _, err := s.AddRevision(rev(1)); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashDurability$")
	cmd.Env = append(os.Environ(), crashChildEnv+"="+path)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	// The child blocks reading stdin; if this test dies, stdin closes and
	// the child exits instead of lingering.
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, readErr := bufio.NewReader(stdout).ReadString('\n')
	// SIGKILL as soon as AddRevision has returned: no Close, no deferred
	// cleanup, nothing after the commit gets to run. Kill fails only if the
	// child has already exited, which the exit code below reports.
	cmd.Process.Kill()
	cmd.Wait()
	if readErr != nil {
		t.Fatalf("child did not report a revision: %v\nstderr:\n%s", readErr, stderr.Bytes())
	}
	if code := cmd.ProcessState.ExitCode(); code != -1 {
		t.Fatalf("child exited with %d before being killed\nstderr:\n%s", code, stderr.Bytes())
	}
	n, err := strconv.ParseUint(strings.TrimSpace(line), 10, 64)
	if err != nil {
		t.Fatalf("child reported %q: %v", line, err)
	}
	if n != 2 {
		t.Errorf("child added revision %d, want 2", n)
	}

	s, err = Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	r, err := s.LatestRevision()
	if err != nil {
		t.Fatal(err)
	}
	want := rev(2)
	want.Number = n
	if !equalRevision(r, want) {
		t.Errorf("after crash, latest revision = %+v, want %+v", r, want)
	}
}

func crashChild(path string) {
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	s, err := Open(path)
	if err != nil {
		fail(err)
	}
	n, err := s.AddRevision(rev(2))
	if err != nil {
		fail(err)
	}
	fmt.Println(n)
	os.Stdin.Read(make([]byte, 1))
	os.Exit(1)
}

func TestLeases(t *testing.T) {
	s, path := openTemp(t)
	if got, err := s.LoadLeases(); err != nil || len(got) != 0 {
		t.Fatalf("LoadLeases on a new store = %q, %v; want none", got, err)
	}
	if err := s.SaveLeases(map[string][]byte{"a": []byte("1"), "b": []byte("1"), "c": []byte("1")}, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.SaveLeases(map[string][]byte{"b": []byte("2")}, []string{"c", "gone already"}); err != nil {
		t.Fatal(err)
	}
	want := map[string][]byte{"a": []byte("1"), "b": []byte("2")}
	// One transaction: an invalid key (empty) fails the whole call, so
	// neither the delete of a nor the put of d happens.
	if err := s.SaveLeases(map[string][]byte{"d": []byte("1"), "": []byte("x")}, []string{"a"}); err == nil {
		t.Error("SaveLeases with an empty key succeeded")
	}
	s = reopen(t, s, path)
	defer s.Close()
	if got, err := s.LoadLeases(); err != nil || !maps.EqualFunc(got, want, bytes.Equal) {
		t.Errorf("LoadLeases after reopen = %q, %v; want %q", got, err, want)
	}
}

// TestLeasesOlderFile opens a file written before leases existed (no
// leases bucket): it opens, has no leases, and takes new ones.
func TestLeasesOlderFile(t *testing.T) {
	s, path := openTemp(t)
	if _, err := s.AddRevision(rev(1)); err != nil {
		t.Fatal(err)
	}
	err := s.db.Update(func(tx *bolt.Tx) error { return tx.DeleteBucket(bucketLeases) })
	if err != nil {
		t.Fatal(err)
	}
	s = reopen(t, s, path)
	defer s.Close()
	if got, err := s.LoadLeases(); err != nil || len(got) != 0 {
		t.Fatalf("LoadLeases on an older file = %q, %v; want none", got, err)
	}
	if err := s.SaveLeases(map[string][]byte{"a": []byte("1")}, nil); err != nil {
		t.Fatal(err)
	}
	if r, err := s.LatestRevision(); err != nil || r.Number != 1 {
		t.Errorf("LatestRevision = %+v, %v; want the older file's revision 1", r, err)
	}
}

// leasesChildEnv, when set, makes TestLeasesCrashDurability act as the
// child: it saves leases, says so on stdout and waits to be killed.
const leasesChildEnv = "STORE_TEST_LEASES_CHILD"

func TestLeasesCrashDurability(t *testing.T) {
	if path := os.Getenv(leasesChildEnv); path != "" {
		s, err := Open(path)
		if err == nil {
			err = s.SaveLeases(map[string][]byte{"a": []byte("2"), "b": []byte("1")}, []string{"c"})
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Println("saved")
		os.Stdin.Read(make([]byte, 1))
		os.Exit(1)
	}
	s, path := openTemp(t)
	if err := s.SaveLeases(map[string][]byte{"a": []byte("1"), "c": []byte("1")}, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestLeasesCrashDurability$")
	cmd.Env = append(os.Environ(), leasesChildEnv+"="+path)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, readErr := bufio.NewReader(stdout).ReadString('\n')
	// SIGKILL right after SaveLeases returned: nothing after the commit runs.
	cmd.Process.Kill()
	cmd.Wait()
	if readErr != nil || strings.TrimSpace(line) != "saved" {
		t.Fatalf("child did not save: %q, %v\nstderr:\n%s", line, readErr, stderr.Bytes())
	}
	s, err = Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	want := map[string][]byte{"a": []byte("2"), "b": []byte("1")}
	if got, err := s.LoadLeases(); err != nil || !maps.EqualFunc(got, want, bytes.Equal) {
		t.Errorf("after crash, leases = %q, %v; want %q", got, err, want)
	}
}
