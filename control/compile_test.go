package control_test

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"portico.dev/appliance/control"
	"portico.dev/appliance/control/bgp"
	"portico.dev/appliance/control/config"
	"portico.dev/appliance/control/health"
	"portico.dev/appliance/control/maglev"
	"portico.dev/appliance/datapath/nft"
)

func TestCompileVIP(t *testing.T) {
	tests := []struct {
		name string
		in   string // one VIP
		want control.VIP
	}{
		{
			name: "defaults: tcp, maglev, no snat, no health",
			in:   "{name: web, address: 203.0.113.10, port: 80, backends: [{address: 10.0.1.11:8080}]}",
			want: control.VIP{
				Name:      "web",
				Key:       nft.Key{Addr: netip.MustParseAddr("203.0.113.10"), Proto: nft.TCP, Port: 80},
				Scheduler: nft.Hash,
				Backends:  []control.Backend{{Addr: ap("10.0.1.11:8080"), Weight: 1, Up: true}},
			},
		},
		{
			name: "udp, round-robin, snat",
			in:   "{name: dns, address: 203.0.113.10, port: 53, protocol: udp, scheduler: round-robin, snat: true, backends: [{address: 10.0.1.21:53, weight: 3}]}",
			want: control.VIP{
				Name:      "dns",
				Key:       nft.Key{Addr: netip.MustParseAddr("203.0.113.10"), Proto: nft.UDP, Port: 53},
				SNAT:      true,
				Scheduler: nft.RoundRobin,
				Backends:  []control.Backend{{Addr: ap("10.0.1.21:53"), Weight: 3, Up: true}},
			},
		},
		{
			name: "explicit tcp and maglev",
			in:   "{name: web, address: 203.0.113.10, port: 443, protocol: tcp, scheduler: maglev, snat: false, backends: [{address: 10.0.1.11:8443}]}",
			want: control.VIP{
				Name:      "web",
				Key:       nft.Key{Addr: netip.MustParseAddr("203.0.113.10"), Proto: nft.TCP, Port: 443},
				Scheduler: nft.Hash,
				Backends:  []control.Backend{{Addr: ap("10.0.1.11:8443"), Weight: 1, Up: true}},
			},
		},
		{
			name: "ipv6 with an http check",
			in:   "{name: web6, address: '2001:db8::10', port: 443, health: {type: http, path: /hz, interval: 3s, timeout: 2s, rise: 4, fall: 5}, backends: [{address: '[2001:db8:1::11]:8443', weight: 2}]}",
			want: control.VIP{
				Name:      "web6",
				Key:       nft.Key{Addr: netip.MustParseAddr("2001:db8::10"), Proto: nft.TCP, Port: 443},
				Scheduler: nft.Hash,
				Health:    &health.Check{Type: "http", Path: "/hz", Interval: 3 * time.Second, Timeout: 2 * time.Second, Rise: 4, Fall: 5},
				Backends:  []control.Backend{{Addr: ap("[2001:db8:1::11]:8443"), Weight: 2, Up: true}},
			},
		},
		{
			name: "tcp check with defaults",
			in:   "{name: web, address: 203.0.113.10, port: 80, health: {type: tcp}, backends: [{address: 10.0.1.11:8080}]}",
			want: control.VIP{
				Name:      "web",
				Key:       nft.Key{Addr: netip.MustParseAddr("203.0.113.10"), Proto: nft.TCP, Port: 80},
				Scheduler: nft.Hash,
				Health:    &health.Check{Type: "tcp", Interval: 2 * time.Second, Timeout: time.Second, Rise: 2, Fall: 3},
				Backends:  []control.Backend{{Addr: ap("10.0.1.11:8080"), Weight: 1, Up: true}},
			},
		},
		{
			name: "v4-mapped backend is unmapped",
			in:   "{name: web, address: 203.0.113.10, port: 80, backends: [{address: '[::ffff:10.0.1.11]:8080'}]}",
			want: control.VIP{
				Name:      "web",
				Key:       nft.Key{Addr: netip.MustParseAddr("203.0.113.10"), Proto: nft.TCP, Port: 80},
				Scheduler: nft.Hash,
				Backends:  []control.Backend{{Addr: ap("10.0.1.11:8080"), Weight: 1, Up: true}},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := compile(t, parse(t, "vips: ["+tt.in+"]"), nil)
			if len(d.VIPs) != 1 {
				t.Fatalf("%d VIPs, want 1", len(d.VIPs))
			}
			got := d.VIPs[0]
			if len(got.Slots) == 0 {
				t.Errorf("no slots")
			}
			for _, s := range got.Slots {
				if s != got.Backends[0].Addr {
					t.Fatalf("slot %s is not the only backend %s", s, got.Backends[0].Addr)
				}
			}
			got.Slots = nil
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("VIP\n%+v\nwant\n%+v", got, tt.want)
			}
		})
	}
}

func TestCompileSortsBackendsAndVIPs(t *testing.T) {
	c := parse(t, `
vips:
  - {name: b6, address: "2001:db8::10", port: 80, backends: [{address: "[2001:db8:1::2]:80"}, {address: "[2001:db8:1::1]:80"}]}
  - {name: web81, address: 203.0.113.10, port: 81}
  - {name: dns, address: 203.0.113.10, port: 53, protocol: udp}
  - name: web
    address: 203.0.113.10
    port: 80
    backends:
      - {address: 10.0.1.12:8080}
      - {address: 10.0.1.2:8080}
      - {address: 10.0.1.11:8081}
      - {address: 10.0.1.11:8080}
  - {name: other, address: 198.51.100.1, port: 80}
`)
	d, _ := control.Compile(control.Inputs{Config: c})
	var names []string
	for _, v := range d.VIPs {
		names = append(names, v.Name)
	}
	// By address, then protocol (tcp 6 before udp 17), then port.
	if want := []string{"other", "web", "web81", "dns", "b6"}; !slices.Equal(names, want) {
		t.Errorf("VIP order %v, want %v", names, want)
	}
	var got []string
	for _, b := range d.VIPs[1].Backends {
		got = append(got, b.Addr.String())
	}
	if want := []string{"10.0.1.2:8080", "10.0.1.11:8080", "10.0.1.11:8081", "10.0.1.12:8080"}; !slices.Equal(got, want) {
		t.Errorf("backends %v, want %v", got, want)
	}
	if a, b := d.VIPs[4].Backends[0].Addr, d.VIPs[4].Backends[1].Addr; a.Compare(b) >= 0 {
		t.Errorf("v6 backends %s, %s not sorted", a, b)
	}
}

const healthVIPs = `
vips:
  - name: web
    address: 203.0.113.10
    port: 80
    health: {type: tcp}
    backends: [{address: 10.0.1.11:8080}, {address: 10.0.1.12:8080}, {address: 10.0.1.13:8080}]
  - name: plain
    address: 203.0.113.11
    port: 80
    backends: [{address: 10.0.1.11:8080}, {address: 10.0.1.12:8080}]
`

func TestCompileHealth(t *testing.T) {
	c := parse(t, healthVIPs)
	tests := []struct {
		name  string
		state map[string]bool
		down  []string // HealthIDs of backends that must be down
		warn  []string
	}{
		{name: "no state: all up"},
		{name: "all up", state: map[string]bool{"web/10.0.1.11:8080": true, "web/10.0.1.12:8080": true, "web/10.0.1.13:8080": true}},
		{name: "one down", state: map[string]bool{"web/10.0.1.12:8080": false}, down: []string{"web/10.0.1.12:8080"}},
		{name: "two down, one unknown", state: map[string]bool{"web/10.0.1.11:8080": false, "web/10.0.1.13:8080": false, "web/10.9.9.9:80": false},
			down: []string{"web/10.0.1.11:8080", "web/10.0.1.13:8080"}},
		{name: "all down", state: map[string]bool{"web/10.0.1.11:8080": false, "web/10.0.1.12:8080": false, "web/10.0.1.13:8080": false},
			down: []string{"web/10.0.1.11:8080", "web/10.0.1.12:8080", "web/10.0.1.13:8080"},
			warn: []string{"vips[0]: no backend is up: new connections to 203.0.113.10:80/tcp are refused"}},
		{name: "a VIP without check ignores the state", state: map[string]bool{"plain/10.0.1.11:8080": false, "plain/10.0.1.12:8080": false}},
	}
	all, _ := control.Compile(control.Inputs{Config: c})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, warns := control.Compile(control.Inputs{Config: c, Health: tt.state})
			var ws []string
			for _, w := range warns {
				ws = append(ws, w.String())
			}
			if !slices.Equal(ws, tt.warn) {
				t.Errorf("warnings %q, want %q", ws, tt.warn)
			}
			h := d.Health()
			if len(h) != 5 {
				t.Errorf("Health() has %d backends, want 5: %v", len(h), h)
			}
			for id, up := range h {
				if want := !slices.Contains(tt.down, id); up != want {
					t.Errorf("Health()[%s] = %v, want %v", id, up, want)
				}
			}
			web := d.VIPs[0]
			if len(web.Backends) != 3 {
				t.Fatalf("web has %d backends, want all 3 whatever their state", len(web.Backends))
			}
			for _, b := range web.Backends {
				inSlots := slices.Contains(web.Slots, b.Addr)
				if down := slices.Contains(tt.down, control.HealthID("web", b.Addr)); b.Up == down || inSlots == down {
					t.Errorf("backend %s: up %v, in slots %v, want down %v", b.Addr, b.Up, inSlots, down)
				}
			}
			// The L4 datapath keeps a down backend's counter: it stays in
			// Services().Backends while it leaves the slots.
			svc := d.Services()[0]
			if len(svc.Backends) != 3 || !slices.Equal(svc.Slots, web.Slots) {
				t.Errorf("service backends %v, slots %d", svc.Backends, len(svc.Slots))
			}
			// The table size stays that of the configured pool.
			if len(tt.down) < 3 && len(web.Slots) != maglev.Size(3) {
				t.Errorf("%d slots, want %d whatever is down", len(web.Slots), maglev.Size(3))
			}
			if len(tt.down) == 3 && len(web.Slots) != 0 {
				t.Errorf("all down: %d slots, want none", len(web.Slots))
			}
			// Health checks are seeded with the compiled state.
			targets := d.HealthTargets()
			if len(targets) != 3 {
				t.Fatalf("%d health targets, want the 3 of web", len(targets))
			}
			for _, tg := range targets {
				if tg.Up != h[tg.ID] {
					t.Errorf("target %s up %v, Health() %v", tg.ID, tg.Up, h[tg.ID])
				}
			}
			// A backend going down moves only slots that were its own.
			for i, s := range web.Slots {
				if all.VIPs[0].Slots[i] != s && !slices.Contains(tt.down, control.HealthID("web", all.VIPs[0].Slots[i])) {
					t.Errorf("slot %d moved from %s, which is up, to %s", i, all.VIPs[0].Slots[i], s)
					break
				}
			}
		})
	}
}

func TestCompileNoBackends(t *testing.T) {
	c := parse(t, `
vips:
  - {name: web, address: 203.0.113.10, port: 80, backends: [{address: 10.0.1.11:8080}]}
  - {name: empty, address: 203.0.113.11, port: 80, scheduler: round-robin}
`)
	d, warns := control.Compile(control.Inputs{Config: c})
	want := []control.Warning{{Path: "vips[1]", Message: "no backend is up: new connections to 203.0.113.11:80/tcp are refused"}}
	if !reflect.DeepEqual(warns, want) {
		t.Errorf("warnings %v, want %v", warns, want)
	}
	if v := d.VIPs[1]; v.Name != "empty" || len(v.Slots) != 0 || len(v.Backends) != 0 {
		t.Errorf("empty VIP %+v", v)
	}
}

func count(slots []netip.AddrPort) map[netip.AddrPort]int {
	n := map[netip.AddrPort]int{}
	for _, s := range slots {
		n[s]++
	}
	return n
}

func rrConfig(t *testing.T, weights ...int) *config.Config {
	t.Helper()
	var b strings.Builder
	b.WriteString("vips: [{name: rr, address: 203.0.113.10, port: 80, scheduler: round-robin, health: {type: tcp}, backends: [")
	for i, w := range weights {
		fmt.Fprintf(&b, "{address: 10.0.1.%d:80, weight: %d},", i+1, w)
	}
	b.WriteString("]}]")
	return parse(t, b.String())
}

func TestCompileRoundRobin(t *testing.T) {
	tests := []struct {
		name    string
		weights []int
		down    []int // backend numbers (1-based) that are down
		want    []int // slots per backend, by backend number − 1
	}{
		{name: "one", weights: []int{1}, want: []int{1}},
		{name: "1,1", weights: []int{1, 1}, want: []int{1, 1}},
		{name: "1,2", weights: []int{1, 2}, want: []int{1, 2}},
		{name: "1,1,1,1", weights: []int{1, 1, 1, 1}, want: []int{1, 1, 1, 1}},
		{name: "3,3,3", weights: []int{3, 3, 3}, want: []int{3, 3, 3}},
		{name: "1,1,1 with one down", weights: []int{1, 1, 1}, down: []int{1}, want: []int{0, 1, 1}},
		{name: "5,1,1", weights: []int{5, 1, 1}, want: []int{5, 1, 1}},
		{name: "3,2", weights: []int{3, 2}, want: []int{3, 2}},
		{name: "2,1,1", weights: []int{2, 1, 1}, want: []int{2, 1, 1}},
		{name: "3,1,1", weights: []int{3, 1, 1}, want: []int{3, 1, 1}},
		{name: "2,2,1", weights: []int{2, 2, 1}, want: []int{2, 2, 1}},
		{name: "4,3,2,1", weights: []int{4, 3, 2, 1}, want: []int{4, 3, 2, 1}},
		{name: "1,2 with the 2 down", weights: []int{1, 2}, down: []int{2}, want: []int{1, 0}},
		{name: "2,3,5 with the 3 down", weights: []int{2, 3, 5}, down: []int{2}, want: []int{2, 0, 5}},
		{name: "1000,1", weights: []int{1000, 1}, want: []int{1000, 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			state := map[string]bool{}
			for _, i := range tt.down {
				state[fmt.Sprintf("rr/10.0.1.%d:80", i)] = false
			}
			d := compile(t, rrConfig(t, tt.weights...), state)
			slots := d.VIPs[0].Slots
			total := 0
			for _, w := range tt.want {
				total += w
			}
			if len(slots) != total {
				t.Errorf("%d slots, want the up weight %d", len(slots), total)
			}
			n := count(slots)
			for i, w := range tt.want {
				if got := n[ap(fmt.Sprintf("10.0.1.%d:80", i+1))]; got != w {
					t.Errorf("backend %d has %d slots, want %d: %v", i+1, got, w, slots)
				}
			}
			// Spread: with equal weights no backend takes two slots in a
			// row, not even across the wrap from the last slot to the
			// first, where the counter goes next. (With unequal weights
			// smooth weighted round robin spreads too, but does not avoid
			// every avoidable repeat: 1,1,2,2,6 gives one, as on nginx.)
			if equal := !slices.ContainsFunc(tt.want, func(w int) bool { return w != tt.want[0] }); equal && len(slots) > 1 {
				for i := range slots {
					if slots[i] == slots[(i+1)%len(slots)] {
						t.Errorf("slot %d and the next are both %s: %v", i, slots[i], slots)
					}
				}
			}
		})
	}
}

const mixedVIPs = `
vips:
  - name: web
    address: 203.0.113.10
    port: 80
    health: {type: http, path: /hz}
    backends: [{address: 10.0.1.11:8080, weight: 2}, {address: 10.0.1.12:8080}, {address: 10.0.1.13:8080, weight: 3}]
  - name: dns
    address: 203.0.113.10
    port: 53
    protocol: udp
    scheduler: round-robin
    snat: true
    backends: [{address: 10.0.1.21:53}, {address: 10.0.1.22:53, weight: 4}, {address: 10.0.1.23:53, weight: 2}]
  - name: web6
    address: "2001:db8::10"
    port: 443
    health: {type: tcp, interval: 1s, timeout: 500ms}
    backends: [{address: "[2001:db8:1::11]:8443"}, {address: "[2001:db8:1::12]:8443"}]
  - name: idle
    address: 198.51.100.7
    port: 8080
`

var mixedState = map[string]bool{"web/10.0.1.13:8080": false, "web6/[2001:db8:1::12]:8443": false}

func TestCompileDeterministic(t *testing.T) {
	c := parse(t, mixedVIPs)
	want, wantWarns := control.Compile(control.Inputs{Config: c, Health: mixedState})
	again, _ := control.Compile(control.Inputs{Config: c, Health: mixedState})
	if !reflect.DeepEqual(want, again) {
		t.Fatal("two compiles of the same inputs differ")
	}
	if len(wantWarns) != 1 || wantWarns[0].Path != "vips[3]" {
		t.Errorf("warnings %v, want one for vips[3] (idle)", wantWarns)
	}
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 20 {
		s := parse(t, mixedVIPs)
		r.Shuffle(len(s.VIPs), func(i, j int) { s.VIPs[i], s.VIPs[j] = s.VIPs[j], s.VIPs[i] })
		for _, v := range s.VIPs {
			r.Shuffle(len(v.Backends), func(i, j int) { v.Backends[i], v.Backends[j] = v.Backends[j], v.Backends[i] })
		}
		got, warns := control.Compile(control.Inputs{Config: s, Health: mixedState})
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("shuffle %d: Desired differs from the unshuffled one", i)
		}
		if len(warns) != 1 {
			t.Errorf("shuffle %d: warnings %v", i, warns)
		}
	}
}

func TestDesiredViews(t *testing.T) {
	d, _ := control.Compile(control.Inputs{Config: parse(t, mixedVIPs), Health: mixedState})

	var addrs []string
	for _, a := range d.Addresses() {
		addrs = append(addrs, a.String())
	}
	// Sorted, each once although web and dns share one.
	if want := []string{"198.51.100.7", "203.0.113.10", "2001:db8::10"}; !slices.Equal(addrs, want) {
		t.Errorf("Addresses() = %v, want %v", addrs, want)
	}

	var svcs []string
	for _, s := range d.Services() {
		svcs = append(svcs, fmt.Sprintf("%s snat=%v %s backends=%v slots=%d", s.Key, s.SNAT, s.Scheduler, s.Backends, len(s.Slots)))
	}
	want := []string{
		"198.51.100.7:8080/tcp snat=false hash backends=[] slots=0",
		"203.0.113.10:80/tcp snat=false hash backends=[10.0.1.11:8080 10.0.1.12:8080 10.0.1.13:8080] slots=" + fmt.Sprint(maglev.Size(6)),
		"203.0.113.10:53/udp snat=true round-robin backends=[10.0.1.21:53 10.0.1.22:53 10.0.1.23:53] slots=7",
		"[2001:db8::10]:443/tcp snat=false hash backends=[[2001:db8:1::11]:8443 [2001:db8:1::12]:8443] slots=" + fmt.Sprint(maglev.Size(2)),
	}
	if !slices.Equal(svcs, want) {
		t.Errorf("Services():\n%s\nwant:\n%s", strings.Join(svcs, "\n"), strings.Join(want, "\n"))
	}
	for i, s := range d.Services() {
		if !slices.Equal(s.Slots, d.VIPs[i].Slots) {
			t.Errorf("service %s: slots differ from the VIP's", s.Key)
		}
	}

	var targets []string
	for _, tg := range d.HealthTargets() {
		targets = append(targets, fmt.Sprintf("%s %s %s up=%v", tg.ID, tg.Addr, tg.Check.Type, tg.Up))
	}
	// Only VIPs with a check; in VIP then backend order.
	wantTargets := []string{
		"web/10.0.1.11:8080 10.0.1.11:8080 http up=true",
		"web/10.0.1.12:8080 10.0.1.12:8080 http up=true",
		"web/10.0.1.13:8080 10.0.1.13:8080 http up=false",
		"web6/[2001:db8:1::11]:8443 [2001:db8:1::11]:8443 tcp up=true",
		"web6/[2001:db8:1::12]:8443 [2001:db8:1::12]:8443 tcp up=false",
	}
	if !slices.Equal(targets, wantTargets) {
		t.Errorf("HealthTargets():\n%s\nwant:\n%s", strings.Join(targets, "\n"), strings.Join(wantTargets, "\n"))
	}
	if tg := d.HealthTargets()[0]; tg.Check != (health.Check{Type: "http", Path: "/hz", Interval: 2 * time.Second, Timeout: time.Second, Rise: 2, Fall: 3}) {
		t.Errorf("check %+v", tg.Check)
	}

	h := d.Health()
	if len(h) != 8 || h["web/10.0.1.13:8080"] || !h["dns/10.0.1.22:53"] || h["web6/[2001:db8:1::12]:8443"] {
		t.Errorf("Health() = %v", h)
	}

	var empty control.Desired
	if len(empty.Services()) != 0 || len(empty.Addresses()) != 0 || len(empty.HealthTargets()) != 0 || len(empty.Health()) != 0 {
		t.Error("an empty Desired has something")
	}
}

func TestCompileBGP(t *testing.T) {
	c := parse(t, `
vips:
  - {name: web, address: 203.0.113.10, port: 80, backends: [{address: 10.0.1.11:8080}]}
  - {name: idle, address: 203.0.113.20, port: 80}
bgp:
  asn: 65000
  router-id: 10.0.0.1
  graceful-restart: {enabled: true, restart-time: 90s}
  peers:
    - {name: node1, address: 10.0.1.2, asn: 64512, role: node, accept: [203.0.113.0/24], max-prefixes: 10,
       bfd: {enabled: true, interval: 100ms, multiplier: 5}}
    - {name: node2, address: 10.0.2.2, asn: 64512, role: node, bfd: {enabled: true}}
    - {name: up, address: 10.0.4.2, asn: 65100, role: upstream, hold-time: 30s, communities: ["65000:100"]}
`)
	d, warns := control.Compile(control.Inputs{Config: c})
	// Only the idle VIP warns: BFD and graceful restart are active, not "not active".
	if len(warns) != 1 || warns[0].Path != "vips[1]" {
		t.Errorf("warnings %v, want only vips[1]'s", warns)
	}
	want := bgp.Config{
		Global: bgp.Global{ASN: 65000, RouterID: netip.MustParseAddr("10.0.0.1"), ListenPort: 179,
			GracefulRestart: bgp.GracefulRestart{Enabled: true, RestartTime: 90 * time.Second}},
		Peers: []bgp.Peer{
			{Name: "node1", Address: netip.MustParseAddr("10.0.1.2"), ASN: 64512, Role: bgp.Node,
				HoldTime: 9 * time.Second, Keepalive: 3 * time.Second,
				Accept: []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")}, MaxPrefixes: 10,
				BFD: bgp.BFD{Interval: 100 * time.Millisecond, Multiplier: 5}},
			{Name: "node2", Address: netip.MustParseAddr("10.0.2.2"), ASN: 64512, Role: bgp.Node,
				HoldTime: 9 * time.Second, Keepalive: 3 * time.Second,
				BFD: bgp.BFD{Interval: 300 * time.Millisecond, Multiplier: 3}},
			{Name: "up", Address: netip.MustParseAddr("10.0.4.2"), ASN: 65100, Role: bgp.Upstream,
				HoldTime: 30 * time.Second, Keepalive: 10 * time.Second, Communities: []string{"65000:100"}},
		},
		// The idle VIP has no backend up, so it is not announced.
		Advertisements: []bgp.Advertisement{{Prefix: netip.MustParsePrefix("203.0.113.10/32")}},
	}
	if !reflect.DeepEqual(d.BGP, want) {
		t.Errorf("BGP:\n%+v\nwant:\n%+v", d.BGP, want)
	}

	c.BGP.GracefulRestart.Enabled = false
	c.BGP.Peers[0].BFD.Enabled = false
	d, _ = control.Compile(control.Inputs{Config: c})
	if d.BGP.Global.GracefulRestart.Enabled || d.BGP.Peers[0].BFD.Enabled() {
		t.Errorf("graceful restart and BFD off: %+v, %+v", d.BGP.Global.GracefulRestart, d.BGP.Peers[0].BFD)
	}
}
