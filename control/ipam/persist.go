package ipam

import (
	"bytes"
	"encoding/json"
	"fmt"
)

// storedLease is a Lease as the store keeps it (JSON).
type storedLease struct {
	Cluster   string `json:"cluster"`
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	Address   string `json:"address"`
	Seq       uint64 `json:"seq"`
}

// StoreKey is the store key of a lease: "address service", unique because
// a Service holds an address once.
func (l Lease) StoreKey() string { return l.Address.String() + " " + l.Service.String() }

// EncodeLeases returns what store.SaveLeases needs to turn the stored set
// old into leases: the leases to put (new or changed) and the keys to
// delete.
func EncodeLeases(old map[string][]byte, leases []Lease) (put map[string][]byte, del []string) {
	put = map[string][]byte{}
	want := map[string]bool{}
	for _, l := range leases {
		k := l.StoreKey()
		want[k] = true
		v, _ := json.Marshal(storedLease{l.Service.Cluster, l.Service.Namespace, l.Service.Name, l.Address.String(), l.Seq})
		if !bytes.Equal(old[k], v) {
			put[k] = v
		}
	}
	for k := range old {
		if !want[k] {
			del = append(del, k)
		}
	}
	return put, del
}

// DecodeLeases reads the leases store.LoadLeases returns. A record that
// does not decode is an error naming its key.
func DecodeLeases(stored map[string][]byte) ([]Lease, error) {
	out := make([]Lease, 0, len(stored))
	for k, v := range stored {
		var s storedLease
		if err := json.Unmarshal(v, &s); err != nil {
			return nil, fmt.Errorf("ipam: lease %q: %w", k, err)
		}
		l := Lease{Service: Key{s.Cluster, s.Namespace, s.Name}, Seq: s.Seq}
		if err := l.Address.UnmarshalText([]byte(s.Address)); err != nil || !l.Address.IsValid() {
			return nil, fmt.Errorf("ipam: lease %q: address %q", k, s.Address)
		}
		out = append(out, l)
	}
	return out, nil
}
