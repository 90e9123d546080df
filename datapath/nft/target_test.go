package nft

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"portico.dev/appliance/test/topo"
)

// newNetns makes a network namespace for t and returns its name and an open
// descriptor of it; both go when t ends.
func newNetns(t *testing.T) (string, int) {
	t.Helper()
	topo.RequireRoot(t)
	name := fmt.Sprintf("nft-test-%06x", rand.N(1<<24))
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	f, err := os.Open(filepath.Join("/var/run/netns", name))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return name, int(f.Fd())
}

// newTarget returns a Target with the options, closed when t ends.
func newTarget(t *testing.T, opt Options) *Target {
	t.Helper()
	tg, err := New(opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := tg.Close(); err != nil {
			t.Error(err)
		}
	})
	return tg
}

// nftCLI runs the nft command in the namespace ns and returns its output.
func nftCLI(t *testing.T, ns string, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"netns", "exec", ns, "nft"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("nft %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// text is services in key order, normalized, as Dump returns what Set was
// given: a line for each service and one for each of its slots.
func text(services ...Service) string {
	services = slices.Clone(services)
	slices.SortFunc(services, func(a, b Service) int { return a.Key.Compare(b.Key) })
	var b strings.Builder
	for _, s := range services {
		s = s.normalize()
		fmt.Fprintf(&b, "%s snat=%t %s backends=%v\n", s.Key, s.SNAT, s.Scheduler, s.Backends)
		for i, slot := range s.Slots {
			fmt.Fprintf(&b, "%s slot %d: %s\n", s.Key, i, slot)
		}
	}
	return b.String()
}

// lineDiff lists the first lines where got and want differ, or is "" if
// they are equal: the texts can have tens of thousands of lines.
func lineDiff(got, want string) string {
	g, w := strings.Split(got, "\n"), strings.Split(want, "\n")
	var b strings.Builder
	n := 0
	for i := range max(len(g), len(w)) {
		var gl, wl string
		if i < len(g) {
			gl = g[i]
		}
		if i < len(w) {
			wl = w[i]
		}
		if gl == wl {
			continue
		}
		if n++; n > 10 {
			b.WriteString("…\n")
			break
		}
		fmt.Fprintf(&b, "line %d:\n  got  %s\n  want %s\n", i+1, gl, wl)
	}
	return b.String()
}

func set(t *testing.T, tg *Target, services ...Service) {
	t.Helper()
	if err := tg.Set(t.Context(), services); err != nil {
		t.Fatal(err)
	}
}

func requireDump(t *testing.T, tg *Target, want ...Service) {
	t.Helper()
	got, err := tg.Dump(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if diff := lineDiff(text(got...), text(want...)); diff != "" {
		t.Fatalf("Dump differs from what was set:\n%s", diff)
	}
}

// TestSetDump applies a sequence of states to a table and reads each back.
func TestSetDump(t *testing.T) {
	t.Parallel()
	ns, fd := newNetns(t)
	tg := newTarget(t, Options{NetNS: fd})

	moved := replaceBackend(web4, backends4[2], netip.MustParseAddrPort("10.0.4.14:8080"))
	grown := moved
	grown.Slots = slots(11, moved.Backends...)
	roundRobin := grown
	roundRobin.SNAT, roundRobin.Scheduler = false, RoundRobin
	// A VIP without slots has no rule: nothing in the kernel keeps its
	// SNAT and scheduler, so only their zero values read back the same.
	emptied := grown
	emptied.SNAT, emptied.Slots = false, nil
	bigSlots := slots(65521, backends6...) // Maglev's largest table
	big := Service{Key: dns6.Key, Scheduler: RoundRobin, Backends: backends6, Slots: bigSlots}
	bigMoved := replaceBackend(big, backends6[1], netip.MustParseAddrPort("[fd00:3::13]:5353"))

	states := []struct {
		name     string
		services []Service
	}{
		{"cold start", []Service{web4, dns6, idle4}},
		{"one backend replaced", []Service{moved, dns6, idle4}},
		{"table grows", []Service{grown, dns6, idle4}},
		{"round robin without SNAT", []Service{roundRobin, dns6, idle4}},
		{"slots emptied", []Service{emptied, dns6, idle4}},
		{"VIPs removed", []Service{dns6}},
		{"largest table", []Service{big}},
		{"half of the largest table moves", []Service{bigMoved}},
		{"empty", nil},
	}
	for _, st := range states {
		set(t, tg, st.services...)
		requireDump(t, tg, st.services...)

		before := nftCLI(t, ns, "-a", "list", "table", "inet", TableName)
		set(t, tg, st.services...)
		if diff := lineDiff(nftCLI(t, ns, "-a", "list", "table", "inet", TableName), before); diff != "" {
			t.Fatalf("%s: a second Set changed the table:\n%s", st.name, diff)
		}
		if changes, _, err := diff(tg.cur, sorted(st.services...), nil); err != nil || len(changes) != 0 {
			t.Fatalf("%s: after Set, the changes to the same services are %v, %v", st.name, changes, err)
		}
	}
}

// TestAdopt checks that a new Target takes over the table an earlier one
// left: same services, no change at all; one changed, only it changes;
// what no service owns goes.
func TestAdopt(t *testing.T) {
	t.Parallel()
	ns, fd := newNetns(t)
	all := []Service{web4, dns6, idle4}
	set(t, newTarget(t, Options{NetNS: fd}), all...)
	// Give every counter a count, which adoption must not reset.
	seeded := map[Key]Counter{}
	for i, s := range all {
		c := Counter{Packets: uint64(10 + i), Bytes: uint64(1000 + i)}
		seeded[s.Key] = c
		vc, bc := counterSets(newObjects(), s.Key)
		elems := map[string]string{keyText(s.Key): vc.Name}
		for _, b := range s.Backends {
			elems[keyText(s.Key)+" . "+backendText(b)] = bc.Name
		}
		for e, name := range elems {
			nftCLI(t, ns, fmt.Sprintf("delete element inet %s %s { %s }", TableName, name, e))
			nftCLI(t, ns, fmt.Sprintf("add element inet %s %s { %s counter packets %d bytes %d }", TableName, name, e, c.Packets, c.Bytes))
		}
	}
	table := func() string { return nftCLI(t, ns, "list", "table", "inet", TableName) }

	t.Run("same services", func(t *testing.T) {
		before := table()
		set(t, newTarget(t, Options{NetNS: fd}), all...)
		if diff := lineDiff(table(), before); diff != "" {
			t.Errorf("adopting changed the table:\n%s", diff)
		}
	})

	changed := []Service{replaceBackend(web4, backends4[2], netip.MustParseAddrPort("10.0.4.14:8080")), dns6, idle4}
	t.Run("one service changed", func(t *testing.T) {
		// Rule handles show whether a chain was rewritten.
		chains := func() string {
			var b strings.Builder
			for _, s := range changed[1:] {
				if len(s.Slots) == 0 {
					continue
				}
				b.WriteString(nftCLI(t, ns, "-a", "list", "chain", "inet", TableName, pickChain(s)))
				b.WriteString(nftCLI(t, ns, "list", "map", "inet", TableName, SlotMap(s.Key)))
			}
			return b.String()
		}
		before := chains()
		tg := newTarget(t, Options{NetNS: fd})
		set(t, tg, changed...)
		requireDump(t, tg, changed...)
		if diff := lineDiff(chains(), before); diff != "" {
			t.Errorf("the chains and maps of the unchanged VIPs changed:\n%s", diff)
		}
		c, err := tg.Counters(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range changed[1:] {
			want := seeded[s.Key]
			if got := c.VIPs[s.Key]; got != want {
				t.Errorf("counter of %s = %+v, want %+v", s.Key, got, want)
			}
			for _, b := range s.Backends {
				if got := c.Backends[s.Key][b]; got != want {
					t.Errorf("counter of %s backend %s = %+v, want %+v", s.Key, b, got, want)
				}
			}
		}
	})

	t.Run("orphans", func(t *testing.T) {
		before := table()
		web := SlotMap(changed[0].Key)
		idle := (shard(changed[0].Key) + 1) % Shards // a shard no VIP of the test uses
		for _, cmd := range []string{
			// An older version's layout: a chain and a map per VIP.
			"add map inet portico vip_198_51_100_1_tcp_80_slots { type inet_service : ipv4_addr . inet_service; }",
			"add chain inet portico vip_198_51_100_1_tcp_80",
			"add rule inet portico vip_198_51_100_1_tcp_80 dnat ip addr . port to tcp sport map @vip_198_51_100_1_tcp_80_slots",
			// Counters and slots of VIPs that are gone.
			"add element inet portico vip_counters4 { 198.51.100.1 . tcp . 80 }",
			"add element inet portico backend_counters4 { 198.51.100.1 . tcp . 80 . 10.0.1.11 . 8080 }",
			"add element inet portico vip_counters6 { 2001:db8::1 . tcp . 80 }",
			"add element inet portico " + web + " { 198.51.100.1 . tcp . 80 . 3 : 10.0.1.11 . 8080 }",
			// A slot beyond the end of a VIP's table.
			"add element inet portico " + web + " { 203.0.113.10 . tcp . 80 . 7 : 10.0.1.11 . 8080 }",
		} {
			nftCLI(t, ns, cmd)
		}
		// A pick chain and a slot map that no VIP uses, written as this
		// version writes them (the nft CLI refuses a jhash in a key).
		o := newObjects()
		p := &plan{}
		params := pickParams{scheduler: Hash, size: 13, slots: slotSetName(false, idle)}
		addSlotSet(p, o, params.slots)
		addPickChain(p, o, hashChainName(false, idle, 13, false), params)
		// A chain of a name this version does not write that uses the
		// unused slot map: the map can go only after the chain.
		foreign := &nftables.Chain{Table: o.table, Name: "vip_198_51_100_2_tcp_80"}
		p.add(1, "add chain", func(c *nftables.Conn) error { c.AddChain(foreign); return nil })
		addPickRule(p, o, foreign, params)
		if err := newTarget(t, Options{NetNS: fd}).run(t.Context(), p); err != nil {
			t.Fatal(err)
		}
		set(t, newTarget(t, Options{NetNS: fd}), changed...)
		if diff := lineDiff(table(), before); diff != "" {
			t.Errorf("adopting left orphans:\n%s", diff)
		}
	})

	// A table an older version wrote: the VIP's dispatch entry names a
	// chain of its own, which looks its backend up in a map of its own.
	t.Run("older layout", func(t *testing.T) {
		tg := newTarget(t, Options{NetNS: fd})
		set(t, tg, changed[1:]...)
		s := changed[0]
		var slotElems []string
		for i, b := range s.Slots {
			slotElems = append(slotElems, fmt.Sprintf("%d : %s", i, backendText(b)))
		}
		var counters []string
		for _, b := range s.Backends {
			counters = append(counters, keyText(s.Key)+" . "+backendText(b))
		}
		writeOlderPick(t, fd, s)
		for _, cmd := range []string{
			"add element inet portico vip_203_0_113_10_tcp_80_slots { " + strings.Join(slotElems, ", ") + " }",
			"add element inet portico vip_counters4 { " + keyText(s.Key) + " }",
			"add element inet portico backend_counters4 { " + strings.Join(counters, ", ") + " }",
			"add element inet portico services4 { " + keyText(s.Key) + " : goto vip_203_0_113_10_tcp_80 }",
		} {
			nftCLI(t, ns, cmd)
		}
		tg = newTarget(t, Options{NetNS: fd})
		set(t, tg, changed...)
		requireDump(t, tg, changed...)
		if got := table(); strings.Contains(got, "vip_203_0_113_10_tcp_80") {
			t.Errorf("the older layout's chain or map is still there:\n%s", got)
		}
		// Nothing is left to fix: yet another Target changes nothing.
		after := table()
		set(t, newTarget(t, Options{NetNS: fd}), changed...)
		if diff := lineDiff(table(), after); diff != "" {
			t.Errorf("a second adoption changed the table:\n%s", diff)
		}
	})
}

// writeOlderPick writes a chain and a slot map for s as the version before
// the shared slot maps did: vip_ADDR_PROTO_PORT with one rule "dnat ip to
// jhash ip saddr . th sport mod M seed 0x706f7274 map @…_slots" (the nft
// CLI refuses the map's integer key).
func writeOlderPick(t *testing.T, fd int, s Service) {
	t.Helper()
	c, err := nftables.New(nftables.WithNetNSFd(fd))
	if err != nil {
		t.Fatal(err)
	}
	tb := &nftables.Table{Family: nftables.TableFamilyINet, Name: TableName}
	name := "vip_" + s.Key.name()
	slots := &nftables.Set{Table: tb, Name: name + "_slots", ID: lastSetID.Add(1), IsMap: true,
		KeyType: nftables.TypeInteger, DataType: typeBackend4, KeyByteOrder: binaryutil.NativeEndian}
	if err := c.AddSet(slots, nil); err != nil {
		t.Fatal(err)
	}
	ch := c.AddChain(&nftables.Chain{Table: tb, Name: name})
	c.AddRule(&nftables.Rule{Table: tb, Chain: ch, Exprs: []expr.Any{
		&expr.Payload{DestRegister: reg2, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
		&expr.Payload{DestRegister: reg32(5), Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 2},
		&expr.Hash{SourceRegister: reg2, DestRegister: reg32(0), Length: 8, Modulus: uint32(len(s.Slots)), Seed: HashSeed, Type: expr.HashTypeJenkins},
		&expr.Lookup{SourceRegister: reg32(0), DestRegister: reg1, IsDestRegSet: true, SetName: slots.Name, SetID: slots.ID},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: reg1, RegProtoMin: reg32(1), Specified: true},
	}})
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
}

// TestRepair edits the table by hand behind a Target's back, then checks
// that its next Set leaves the table as asked.
func TestRepair(t *testing.T) {
	topo.RequireRoot(t)
	t.Parallel()
	all := []Service{web4, dns6, idle4}
	slot2 := web4.normalize()
	slot2.Slots = slices.Clone(slot2.Slots)
	slot2.Slots[2] = backends4[0]
	tests := []struct {
		name string
		edit string
		// resync calls Resync before Set: an edit that no change of the
		// next Set runs into is found only by reading the kernel again.
		resync bool
		want   []Service
		// gone are texts the table must no longer hold.
		gone []string
	}{
		{
			name: "slot deleted, then changed",
			edit: "delete element inet portico " + SlotMap(web4.Key) + " { 203.0.113.10 . tcp . 80 . 2 }",
			want: []Service{slot2, dns6, idle4},
		},
		{
			name: "dispatch entry deleted, then VIP removed",
			edit: "delete element inet portico services6 { 2001:db8::53 . udp . 53 }",
			want: []Service{web4, idle4},
			gone: []string{pickChain(dns6), "2001:db8::53"},
		},
		{
			name:   "dispatch entry deleted, then resync",
			edit:   "delete element inet portico services4 { 203.0.113.10 . tcp . 80 }",
			resync: true,
			want:   all,
		},
		{
			name:   "table deleted, then resync",
			edit:   "delete table inet portico",
			resync: true,
			want:   all,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ns, fd := newNetns(t)
			var log strings.Builder
			tg := newTarget(t, Options{NetNS: fd, Log: slog.New(slog.NewTextHandler(&log, nil))})
			set(t, tg, all...)
			nftCLI(t, ns, tt.edit)
			if tt.resync {
				tg.Resync()
			}
			set(t, tg, tt.want...)
			requireDump(t, tg, tt.want...)
			if !tt.resync && !strings.Contains(log.String(), "resyncing") {
				t.Errorf("Set did not resync; its log:\n%s", log.String())
			}
			table := nftCLI(t, ns, "list", "table", "inet", TableName)
			for _, s := range tt.gone {
				if strings.Contains(table, s) {
					t.Errorf("the table still holds %s:\n%s", s, table)
				}
			}
		})
	}
}

func TestDelete(t *testing.T) {
	t.Parallel()
	ns, fd := newNetns(t)
	tg := newTarget(t, Options{NetNS: fd})
	set(t, tg, web4, dns6)
	for range 2 {
		if err := tg.Delete(t.Context()); err != nil {
			t.Fatal(err)
		}
		if tables := nftCLI(t, ns, "list", "tables"); tables != "" {
			t.Fatalf("after Delete, the namespace has tables:\n%s", tables)
		}
		requireDump(t, tg)
	}
	// Delete forgets what the table held: the next Set makes it again.
	set(t, tg, web4, dns6)
	requireDump(t, tg, web4, dns6)
}

// TestSetCanceled checks that a Set whose context is done leaves nothing
// behind for the next Set to send.
func TestSetCanceled(t *testing.T) {
	t.Parallel()
	_, fd := newNetns(t)
	tg := newTarget(t, Options{NetNS: fd})
	set(t, tg, idle4)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := tg.Set(ctx, []Service{web4, dns6, idle4}); err == nil {
		t.Fatal("Set with a canceled context succeeded")
	}
	set(t, tg, idle4)
	requireDump(t, tg, idle4)
}
