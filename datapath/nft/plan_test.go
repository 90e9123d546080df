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
	"testing"
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
	s = s.normalize()
	for _, l := range [][]netip.AddrPort{s.Backends, s.Slots} {
		for i, b := range l {
			if b == from {
				l[i] = to
			}
		}
	}
	return s.normalize()
}

// byKey is services as diffPlan takes them.
func byKey(services ...Service) map[Key]Service {
	m := make(map[Key]Service, len(services))
	for _, s := range services {
		m[s.Key] = s.normalize()
	}
	return m
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
		{name: "snat-toggle", cur: all, want: []Service{noSNAT, dns6, idle4}, maxSteps: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := newObjects()
			cur, want := byKey(tt.cur...), byKey(tt.want...)
			p := diffPlan(o, cur, want)
			got := p.String()
			if tt.cur == nil {
				got = basePlan(o).String() + got
			}
			golden(t, "plan-"+tt.name, got)
			if tt.maxSteps > 0 && len(p.steps) > tt.maxSteps {
				t.Errorf("plan has %d steps, want at most %d", len(p.steps), tt.maxSteps)
			}
			// A plan names only the VIPs that change.
			for k, s := range cur {
				if w, ok := want[k]; ok && equal(s, w) {
					if text := p.String(); strings.Contains(text, keyText(k)) || strings.Contains(text, k.chainName()) {
						t.Errorf("plan names %s, which does not change", k)
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
// elements than its 16-bit attribute length can hold.
func TestPlanSplitsElements(t *testing.T) {
	var bes []netip.AddrPort
	for i := range 3000 {
		bes = append(bes, netip.AddrPortFrom(netip.MustParseAddr("fd00:1::"), uint16(1000+i)))
	}
	s := Service{Key: dns6.Key, Backends: bes, Slots: slots(4001, bes...)}
	p := diffPlan(newObjects(), nil, byKey(s))
	elems := map[string]int{}
	for _, st := range p.steps {
		if st.size > maxElements {
			t.Errorf("step of %d elements, want at most %d: %.80s…", st.size, maxElements, st.text)
		}
		if strings.HasPrefix(st.text, "add element") {
			elems[strings.Fields(st.text)[4]] += st.size
		}
	}
	want := map[string]int{s.Key.chainName() + "_slots": 4001, "backend_counters6": 3000, "vip_counters6": 1, "services6": 1}
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
			if i, err := decodeSlotKey(slotKey(tt.slot)); err != nil || i != tt.slot {
				t.Errorf("decodeSlotKey(slotKey(%d)) = %d, %v", tt.slot, i, err)
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
	if _, err := decodeSlotKey([]byte{1, 2}); err == nil {
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
		{name: "v4 slot of v6 VIP", in: with(dns6, func(s *Service) { s.Slots[4] = backends4[0] }),
			wantErr: "service [2001:db8::53]:53/udp: backend 10.0.1.11:8080: not an address and port of the VIP's family"},
		{name: "invalid slot", in: with(web4, func(s *Service) { s.Slots[3] = netip.AddrPort{} }), wantErr: "backend invalid AddrPort"},
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
