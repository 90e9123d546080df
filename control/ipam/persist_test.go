package ipam

import (
	"path/filepath"
	"slices"
	"testing"

	"portico.dev/appliance/store"
)

// TestLeasesThroughStore: leases saved through the real store come back
// equal after a reopen, and a second save writes only what changed.
func TestLeasesThroughStore(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	st, err := store.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	r := Allocate(testPools, nil, []Service{svc("a", "dual"), svc("b", "ip=198.51.100.4")})
	put, del := EncodeLeases(nil, r.Leases)
	if len(put) != 3 || len(del) != 0 {
		t.Fatalf("first save: put %d, del %v; want 3 and none", len(put), del)
	}
	if err := st.SaveLeases(put, del); err != nil {
		t.Fatal(err)
	}
	st.Close()
	if st, err = store.Open(path); err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	raw, err := st.LoadLeases()
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeLeases(raw)
	if err != nil {
		t.Fatal(err)
	}
	again := Allocate(testPools, got, []Service{svc("b", "ip=198.51.100.4")})
	if !slices.Equal(dump(again), []string{"b: [198.51.100.4]"}) {
		t.Errorf("after restart: %v", dump(again))
	}
	put, del = EncodeLeases(raw, again.Leases)
	if len(put) != 0 || len(del) != 2 {
		t.Errorf("second save: put %q, del %v; want nothing to put and a's two leases deleted", put, del)
	}
	if _, err := DecodeLeases(map[string][]byte{"x": []byte("{")}); err == nil {
		t.Error("a broken record decoded")
	}
}

// TestReconcileThroughStore: a restart through the real store. The store
// says a holds 203.0.113.1, but the cluster shows a on 203.0.113.2 and b,
// a new Service, on 203.0.113.1: the status wins where the address is
// free, the reconciled leases survive a reopen, and Allocate on them keeps
// every address and writes nothing more.
func TestReconcileThroughStore(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	st, err := store.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	put, del := EncodeLeases(nil, []Lease{lease("a", "203.0.113.1", 1), lease("gone", "198.51.100.1", 2)})
	if err := st.SaveLeases(put, del); err != nil {
		t.Fatal(err)
	}
	st.Close()

	if st, err = store.Open(path); err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	raw, err := st.LoadLeases()
	if err != nil {
		t.Fatal(err)
	}
	stored, err := DecodeLeases(raw)
	if err != nil {
		t.Fatal(err)
	}
	observed := []Observed{obs("203.0.113.1", "b"), obs("203.0.113.2", "a")}
	r := Reconcile(testPools, stored, observed, c1Complete)
	leases, _ := dumpReconciled(r)
	if want := []string{"b 203.0.113.1 3", "a 203.0.113.2 1"}; !slices.Equal(leases, want) {
		t.Fatalf("reconciled leases %v, want %v", leases, want)
	}
	put, del = EncodeLeases(raw, r.Leases)
	if err := st.SaveLeases(put, del); err != nil {
		t.Fatal(err)
	}
	raw, err = st.LoadLeases()
	if err != nil {
		t.Fatal(err)
	}
	if got, err := DecodeLeases(raw); err != nil || len(got) != 2 {
		t.Fatalf("stored after reconcile: %v, %v; want the 2 reconciled leases", got, err)
	}
	alloc := Allocate(testPools, r.Leases, []Service{observed[0].Service, observed[1].Service})
	if got, want := dump(alloc), []string{"a: [203.0.113.2]", "b: [203.0.113.1]"}; !slices.Equal(got, want) {
		t.Errorf("Allocate after Reconcile: %v, want %v", got, want)
	}
	if put, del := EncodeLeases(raw, alloc.Leases); len(put) != 0 || len(del) != 0 {
		t.Errorf("Allocate after Reconcile changed the store: put %q, del %v", put, del)
	}
}
