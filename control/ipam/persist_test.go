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
