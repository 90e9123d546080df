package nft

import (
	"bytes"
	"encoding/hex"
	"flag"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/google/nftables/binaryutil"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

var (
	web4 = Service{
		Key:       Key{netip.MustParseAddr("203.0.113.10"), TCP, 80},
		SNAT:      true,
		Scheduler: Hash,
		Backends:  backends4,
		Slots:     slots(7, backends4...),
	}
	dns6 = Service{
		Key:       Key{netip.MustParseAddr("2001:db8::53"), UDP, 53},
		Scheduler: RoundRobin,
		Backends:  backends6,
		Slots:     slots(5, backends6...),
	}
	// idle4 has a backend but no slots: none of them can take traffic.
	idle4 = Service{
		Key:      Key{netip.MustParseAddr("203.0.113.20"), TCP, 443},
		Backends: []netip.AddrPort{netip.MustParseAddrPort("10.0.1.11:8443")},
	}

	backends4 = addrPorts("10.0.1.11:8080", "10.0.2.12:8080", "10.0.3.13:8080")
	backends6 = addrPorts("[fd00:1::11]:5353", "[fd00:2::12]:5353")
)

func addrPorts(s ...string) []netip.AddrPort {
	var out []netip.AddrPort
	for _, a := range s {
		out = append(out, netip.MustParseAddrPort(a))
	}
	return out
}

// slots is a lookup table of n slots that deals the backends out in turn.
func slots(n int, backends ...netip.AddrPort) []netip.AddrPort {
	out := make([]netip.AddrPort, n)
	for i := range out {
		out[i] = backends[i%len(backends)]
	}
	return out
}

// replaceBackend returns s with backend from replaced by to in its backends
// and its slots, as a consistent-hash table does when one backend changes.
func replaceBackend(s Service, from, to netip.AddrPort) Service {
	s.Backends, s.Slots = slices.Clone(s.Backends), slices.Clone(s.Slots)
	for _, l := range [][]netip.AddrPort{s.Backends, s.Slots} {
		for i, b := range l {
			if b == from {
				l[i] = to
			}
		}
	}
	return s.normalize()
}

// sorted is services sorted by key, as Set hands them to diff.
func sorted(services ...Service) []Service {
	out := slices.Clone(services)
	slices.SortFunc(out, func(a, b Service) int { return a.Key.Compare(b.Key) })
	return out
}

// planBetween is the plan of a Target whose table holds cur to make it hold
// want, and what the kernel then holds.
func planBetween(t *testing.T, o *objects, cur, want []Service) (*plan, []Service) {
	t.Helper()
	var refs objectRefs
	changes, held, err := diff(nil, sorted(cur...), nil)
	if err != nil {
		t.Fatal(err)
	}
	diffPlan(o, &refs, changes, nil)
	refs.commit()
	changes, next, err := diff(held, sorted(want...), nil)
	if err != nil {
		t.Fatal(err)
	}
	return diffPlan(o, &refs, changes, nil), next
}

// golden compares got with testdata/name.golden, or rewrites the file with -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if got != string(want) {
		t.Errorf("%s differs (go test -update rewrites it)\n--- got:\n%s--- want:\n%s", path, got, want)
	}
}

func TestPlan(t *testing.T) {
	all := []Service{web4, dns6, idle4}
	newBackend := netip.MustParseAddrPort("10.0.4.14:8080")
	noSNAT := web4
	noSNAT.SNAT = false
	tests := []struct {
		name string
		// cur nil is a cold start: the plan is the base plan, then the services.
		cur, want []Service
		maxSteps  int // 0 for no bound
	}{
		{name: "cold-start", want: all},
		{name: "one-backend", cur: all, want: []Service{replaceBackend(web4, backends4[2], newBackend), dns6, idle4}, maxSteps: 4},
		{name: "remove-vip", cur: all, want: []Service{web4, idle4}},
		// SNAT is in the pick chain: the VIP moves to another one, made if need be,
		// and the one it leaves goes when no VIP uses it any more.
		{name: "snat-toggle", cur: all, want: []Service{noSNAT, dns6, idle4}, maxSteps: 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := newObjects()
			p, _ := planBetween(t, o, tt.cur, tt.want)
			got := p.String()
			if tt.cur == nil {
				got = basePlan(o).String() + got
			}
			golden(t, "plan-"+tt.name, got)
			if tt.maxSteps > 0 && len(p.steps) > tt.maxSteps {
				t.Errorf("plan has %d steps, want at most %d:\n%s", len(p.steps), tt.maxSteps, p)
			}
			// A plan names only the VIPs that change.
			for _, s := range tt.cur {
				i := slices.IndexFunc(tt.want, func(w Service) bool { return w.Key == s.Key })
				if i >= 0 && equal(s.normalize(), tt.want[i].normalize()) {
					if text := p.String(); strings.Contains(text, keyText(s.Key)) || strings.Contains(text, s.Key.name()) {
						t.Errorf("plan names %s, which does not change", s.Key)
					}
				}
			}
		})
	}
}

func equal(a, b Service) bool {
	return a.Key == b.Key && a.SNAT == b.SNAT && a.Scheduler == b.Scheduler &&
		slices.Equal(a.Backends, b.Backends) && slices.Equal(a.Slots, b.Slots)
}

// TestPlanSplitsElements checks that no netlink message carries more
// elements than its 16-bit attribute length can hold, and that the
// messages carry every element.
func TestPlanSplitsElements(t *testing.T) {
	var bes []netip.AddrPort
	for i := range 3000 {
		bes = append(bes, netip.AddrPortFrom(netip.MustParseAddr("fd00:1::"), uint16(1000+i)))
	}
	s := Service{Key: dns6.Key, Scheduler: RoundRobin, Backends: bes, Slots: slots(MaxSlots, bes...)}
	o := newObjects()
	p, _ := planBetween(t, o, nil, []Service{s})
	var b elemBatch
	for _, st := range p.steps {
		if st.elems != nil {
			b.push(st.elems)
		}
	}
	var w wire
	b.encode(&w)
	msgs, err := syscall.ParseNetlinkMessage(w.buf)
	if err != nil {
		t.Fatal(err)
	}
	if w.acks != len(msgs) {
		t.Errorf("%d of %d messages ask for an ack, want all", w.acks, len(msgs))
	}
	elems := map[string]int{}
	for _, m := range msgs {
		ad, err := netlink.NewAttributeDecoder(m.Data[4:])
		if err != nil {
			t.Fatal(err)
		}
		var set string
		for ad.Next() {
			switch ad.Type() {
			case unix.NFTA_SET_ELEM_LIST_SET:
				set = ad.String()
			case unix.NFTA_SET_ELEM_LIST_ELEMENTS:
				if n := len(ad.Bytes()); n > maxElemsAttr {
					t.Errorf("a message to %s carries %d bytes of elements, want at most %d", set, n, maxElemsAttr)
				}
				ad.Nested(func(ad *netlink.AttributeDecoder) error {
					for ad.Next() {
						elems[set]++
					}
					return nil
				})
			}
		}
		if err := ad.Err(); err != nil {
			t.Fatal(err)
		}
	}
	want := map[string]int{slotsSet(o, s.Key).Name: MaxSlots, "backend_counters6": 3000, "vip_counters6": 1, "services6": 1}
	if !maps.Equal(elems, want) {
		t.Errorf("elements added per set = %v, want %v", elems, want)
	}
}

func TestEncode(t *testing.T) {
	tests := []struct {
		name    string
		key     Key
		backend netip.AddrPort
		slot    int
		// The layouts the kernel's registers hold: every field padded to 4 bytes.
		wantService, wantBackend string
	}{
		{
			name:        "v4",
			key:         web4.Key,
			backend:     backends4[0],
			slot:        6,
			wantService: "cb00710a 06000000 00500000",
			wantBackend: "0a00010b 1f900000",
		},
		{
			name:        "v6",
			key:         dns6.Key,
			backend:     backends6[1],
			slot:        65520,
			wantService: "20010db8000000000000000000000053 11000000 00350000",
			wantBackend: "fd000002000000000000000000000012 14e90000",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v6 := tt.key.Addr.Is6()
			hexOf := func(s string) []byte {
				b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
				if err != nil {
					t.Fatal(err)
				}
				return b
			}
			if got := serviceKey(tt.key); !bytes.Equal(got, hexOf(tt.wantService)) {
				t.Errorf("serviceKey = %x, want %s", got, tt.wantService)
			}
			if got := backendData(tt.backend); !bytes.Equal(got, hexOf(tt.wantBackend)) {
				t.Errorf("backendData = %x, want %s", got, tt.wantBackend)
			}

			if k, err := decodeServiceKey(serviceKey(tt.key), v6); err != nil || k != tt.key {
				t.Errorf("decodeServiceKey(serviceKey(%s)) = %s, %v", tt.key, k, err)
			}
			if k, b, err := decodeBackendCounterKey(backendCounterKey(tt.key, tt.backend), v6); err != nil || k != tt.key || b != tt.backend {
				t.Errorf("decodeBackendCounterKey(backendCounterKey(%s, %s)) = %s, %s, %v", tt.key, tt.backend, k, b, err)
			}
			if b, err := decodeBackendData(backendData(tt.backend), v6); err != nil || b != tt.backend {
				t.Errorf("decodeBackendData(backendData(%s)) = %s, %v", tt.backend, b, err)
			}
			slot := appendSlotKey(nil, tt.key, tt.slot)
			if want := append(hexOf(tt.wantService), binaryutil.NativeEndian.PutUint32(uint32(tt.slot))...); !bytes.Equal(slot, want) {
				t.Errorf("appendSlotKey = %x, want %x", slot, want)
			}
			if k, i, err := decodeSlotKey(slot, v6); err != nil || k != tt.key || i != tt.slot {
				t.Errorf("decodeSlotKey(appendSlotKey(%s, %d)) = %s, %d, %v", tt.key, tt.slot, k, i, err)
			}

			// Read as the other family, every encoding has the wrong length.
			if _, err := decodeServiceKey(serviceKey(tt.key), !v6); err == nil {
				t.Error("decodeServiceKey of the other family succeeded")
			}
			if _, _, err := decodeBackendCounterKey(backendCounterKey(tt.key, tt.backend), !v6); err == nil {
				t.Error("decodeBackendCounterKey of the other family succeeded")
			}
			if _, err := decodeBackendData(backendData(tt.backend), !v6); err == nil {
				t.Error("decodeBackendData of the other family succeeded")
			}
		})
	}
	if _, _, err := decodeSlotKey([]byte{1, 2}, false); err == nil {
		t.Error("decodeSlotKey of 2 bytes succeeded")
	}
}

func TestValidate(t *testing.T) {
	with := func(s Service, f func(s *Service)) Service {
		s = s.normalize()
		f(&s)
		return s
	}
	tests := []struct {
		name    string
		in      Service
		wantErr string // "" for none
	}{
		{name: "v4", in: web4},
		{name: "v6", in: dns6},
		{name: "no slots", in: idle4},
		{name: "no address", in: with(web4, func(s *Service) { s.Key.Addr = netip.Addr{} }), wantErr: "invalid address"},
		{name: "icmp", in: with(web4, func(s *Service) { s.Key.Proto = 1 }), wantErr: "protocol 1 not supported"},
		{name: "v6 backend of v4 VIP", in: with(web4, func(s *Service) { s.Backends = append(s.Backends, backends6[0]) }),
			wantErr: "service 203.0.113.10:80/tcp: backend [fd00:1::11]:5353: not an address and port of the VIP's family"},
		{name: "v4 slot of v6 VIP", in: with(dns6, func(s *Service) { s.Slots = slices.Clone(s.Slots); s.Slots[4] = backends4[0] }),
			wantErr: "service [2001:db8::53]:53/udp: backend 10.0.1.11:8080: not an address and port of the VIP's family"},
		{name: "invalid slot", in: with(web4, func(s *Service) { s.Slots = slices.Clone(s.Slots); s.Slots[3] = netip.AddrPort{} }), wantErr: "backend invalid AddrPort"},
		{name: "unknown scheduler", in: with(web4, func(s *Service) { s.Scheduler = 7 }), wantErr: "scheduler 7 not supported"},
		{name: "too many slots", in: with(dns6, func(s *Service) { s.Slots = slots(MaxSlots+1, backends6...) }), wantErr: "65537 slots, more than 65536"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.in.validate()
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Errorf("validate() = %v, want an error with %q", err, tt.wantErr)
			}
		})
	}
}

// TestSetRefuses checks that Set refuses bad input before it sends
// anything: the zero Target has no netlink connection to send on.
func TestSetRefuses(t *testing.T) {
	tests := []struct {
		name    string
		in      []Service
		wantErr string
	}{
		{"invalid", []Service{web4, {Key: Key{web4.Key.Addr, 1, 0}}}, "protocol 1 not supported"},
		{"listed twice", []Service{web4, dns6, web4}, "service 203.0.113.10:80/tcp: listed twice"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var tg Target
			if err := tg.Set(t.Context(), tt.in); err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Set = %v, want an error with %q", err, tt.wantErr)
			}
		})
	}
}

// TestDiff checks which services diff takes for changed: only those that
// differ, whether or not the caller built them anew.
func TestDiff(t *testing.T) {
	all := sorted(web4.normalize(), dns6.normalize(), idle4.normalize())
	copied := func(s Service) Service {
		s.Backends, s.Slots = slices.Clone(s.Backends), slices.Clone(s.Slots)
		return s
	}
	idleSNAT := idle4
	idleSNAT.SNAT, idleSNAT.Scheduler = true, RoundRobin
	badWeb := web4
	badWeb.Slots = append(slices.Clone(web4.Slots), backends6[0])
	tests := []struct {
		name    string
		want    []Service
		foreign map[Key]string
		changed []Key
		wantErr string
	}{
		{name: "the same slices", want: all},
		{name: "equal copies", want: sorted(copied(web4), copied(dns6), copied(idle4))},
		{name: "SNAT and scheduler of a VIP without slots", want: sorted(web4, dns6, idleSNAT)},
		{name: "one backend replaced", want: sorted(replaceBackend(web4, backends4[2], netip.MustParseAddrPort("10.0.4.14:8080")), dns6, idle4),
			changed: []Key{web4.Key}},
		{name: "one removed, one added", want: sorted(web4, idle4, Service{Key: Key{netip.MustParseAddr("203.0.113.30"), UDP, 53}}),
			changed: []Key{Key{netip.MustParseAddr("203.0.113.30"), UDP, 53}, dns6.Key}},
		{name: "foreign dispatch", want: all, foreign: map[Key]string{dns6.Key: "vip_old"}, changed: []Key{dns6.Key}},
		{name: "changed and invalid", want: sorted(badWeb, dns6, idle4), wantErr: "not an address and port of the VIP's family"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			changes, next, err := diff(all, tt.want, tt.foreign)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("diff = %v, want an error with %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []Key
			for _, c := range changes {
				k := c.new.Key
				if !c.hasNew {
					k = c.old.Key
				}
				got = append(got, k)
			}
			slices.SortFunc(got, Key.Compare)
			slices.SortFunc(tt.changed, Key.Compare)
			if !slices.Equal(got, tt.changed) {
				t.Errorf("changed = %v, want %v", got, tt.changed)
			}
			if len(next) != len(tt.want) {
				t.Fatalf("next holds %d services, want %d", len(next), len(tt.want))
			}
			for i, s := range next {
				if !equal(s, tt.want[i].normalize()) {
					t.Errorf("next[%d] = %+v, want %+v", i, s, tt.want[i])
				}
			}
		})
	}
}
