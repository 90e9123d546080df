package nft

import (
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// TableName is the one nftables table the appliance owns (family inet).
const TableName = "portico"

// SNATMark is the packet mark bit that tells postrouting to masquerade a
// new flow of an SNAT VIP. It stays clear of kube-proxy's 0x4000 and
// 0x8000 and of Calico's and Cilium's high bits.
const SNATMark = 0x00100000

// HashSeed is the jhash seed. It is fixed, not random, so that every
// appliance maps a given flow to the same slot.
const HashSeed = 0x706f7274 // "port"

// Names of the base objects.
const (
	setServices4 = "services4"
	setServices6 = "services6"
	chainPre     = "prerouting"
	chainOut     = "output"
	chainPost    = "postrouting"
	chainFwd     = "forward"
)

var (
	typeService4 = mustConcat(nftables.TypeIPAddr, nftables.TypeInetProto, nftables.TypeInetService)
	typeService6 = mustConcat(nftables.TypeIP6Addr, nftables.TypeInetProto, nftables.TypeInetService)
	typeBECount4 = mustConcat(nftables.TypeIPAddr, nftables.TypeInetProto, nftables.TypeInetService, nftables.TypeIPAddr, nftables.TypeInetService)
	typeBECount6 = mustConcat(nftables.TypeIP6Addr, nftables.TypeInetProto, nftables.TypeInetService, nftables.TypeIP6Addr, nftables.TypeInetService)
	// The slot is a host-endian 32-bit integer, as the hash and numgen
	// expressions leave it; the mark type is one, and unlike a bare
	// integer it has a size, which the nft CLI needs to list a
	// concatenation.
	typeSlot4    = mustConcat(nftables.TypeIPAddr, nftables.TypeInetProto, nftables.TypeInetService, nftables.TypeMark)
	typeSlot6    = mustConcat(nftables.TypeIP6Addr, nftables.TypeInetProto, nftables.TypeInetService, nftables.TypeMark)
	typeBackend4 = mustConcat(nftables.TypeIPAddr, nftables.TypeInetService)
	typeBackend6 = mustConcat(nftables.TypeIP6Addr, nftables.TypeInetService)
)

// objects holds the table and base objects as google/nftables values.
type objects struct {
	table                *nftables.Table
	services4, services6 *nftables.Set
	// slots are the slot maps by name, made when first needed, so that
	// a batch that adds one and the rules that use it agree on its ID.
	slots map[string]*nftables.Set
	// Per family: counters per VIP, and per VIP and backend.
	vipCounters4, vipCounters6         *nftables.Set
	backendCounters4, backendCounters6 *nftables.Set
	prerouting, output, postrouting    *nftables.Chain
	forward                            *nftables.Chain
}

// lastSetID numbers the sets this package makes; a batch that adds a set
// refers to it by this ID. A set must have one before it reaches
// google/nftables, which otherwise numbers it with a package variable that it
// changes under a lock of each connection: a data race between two Targets.
var lastSetID atomic.Uint32

func newObjects() *objects {
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: TableName}
	prio := func(p nftables.ChainPriority) *nftables.ChainPriority { return &p }
	accept := nftables.ChainPolicyAccept
	o := &objects{
		table: t,
		services4: &nftables.Set{Table: t, Name: setServices4, IsMap: true, Concatenation: true,
			KeyType: typeService4, DataType: nftables.TypeVerdict},
		services6: &nftables.Set{Table: t, Name: setServices6, IsMap: true, Concatenation: true,
			KeyType: typeService6, DataType: nftables.TypeVerdict},
		slots: map[string]*nftables.Set{},
		vipCounters4: &nftables.Set{Table: t, Name: "vip_counters4", Concatenation: true, Counter: true,
			KeyType: typeService4},
		vipCounters6: &nftables.Set{Table: t, Name: "vip_counters6", Concatenation: true, Counter: true,
			KeyType: typeService6},
		backendCounters4: &nftables.Set{Table: t, Name: "backend_counters4", Concatenation: true, Counter: true,
			KeyType: typeBECount4},
		backendCounters6: &nftables.Set{Table: t, Name: "backend_counters6", Concatenation: true, Counter: true,
			KeyType: typeBECount6},
		prerouting: &nftables.Chain{Table: t, Name: chainPre, Type: nftables.ChainTypeNAT,
			Hooknum: nftables.ChainHookPrerouting, Priority: prio(*nftables.ChainPriorityNATDest), Policy: &accept},
		output: &nftables.Chain{Table: t, Name: chainOut, Type: nftables.ChainTypeNAT,
			Hooknum: nftables.ChainHookOutput, Priority: prio(*nftables.ChainPriorityNATDest), Policy: &accept},
		postrouting: &nftables.Chain{Table: t, Name: chainPost, Type: nftables.ChainTypeNAT,
			Hooknum: nftables.ChainHookPostrouting, Priority: prio(*nftables.ChainPriorityNATSource), Policy: &accept},
		forward: &nftables.Chain{Table: t, Name: chainFwd, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookForward, Priority: prio(*nftables.ChainPriorityFilter), Policy: &accept},
	}
	for _, s := range []*nftables.Set{o.services4, o.services6, o.vipCounters4, o.vipCounters6, o.backendCounters4, o.backendCounters6} {
		s.ID = lastSetID.Add(1)
	}
	return o
}

// slotSet is the slot map of that name, which slotSetName wrote.
func (o *objects) slotSet(name string) *nftables.Set {
	if s := o.slots[name]; s != nil {
		return s
	}
	key, data := typeSlot4, typeBackend4
	if v6, _, _ := parseSlotSetName(name); v6 {
		key, data = typeSlot6, typeBackend6
	}
	s := &nftables.Set{Table: o.table, Name: name, ID: lastSetID.Add(1), IsMap: true, Concatenation: true,
		KeyType: key, DataType: data}
	o.slots[name] = s
	return s
}

// dispatchRule is the base-chain rule "meta nfproto F daddr . l4proto . dport
// vmap @servicesF".
func dispatchRule(set *nftables.Set, v6 bool) []expr.Any {
	nfproto, off, n := byte(unix.NFPROTO_IPV4), uint32(16), uint32(4)
	if v6 {
		nfproto, off, n = unix.NFPROTO_IPV6, 24, 16
	}
	// Registers: address from reg32 0, then protocol and port each in
	// the next free 32-bit register.
	next := reg32(n / 4)
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{nfproto}},
		&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: next},
		&expr.Payload{DestRegister: next + 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Lookup{SourceRegister: reg1, SetName: set.Name, SetID: set.ID, DestRegister: 0, IsDestRegSet: true},
	}
}

const dispatchText4 = "meta nfproto ipv4 ip daddr . meta l4proto . th dport vmap @services4"
const dispatchText6 = "meta nfproto ipv6 ip6 daddr . meta l4proto . th dport vmap @services6"

// masquerade is "meta mark & SNATMark != 0 masquerade".
func masquerade() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: reg1},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(SNATMark), Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: []byte{0, 0, 0, 0}},
		&expr.Masq{},
	}
}

var masqueradeText = fmt.Sprintf("meta mark & 0x%08x != 0 masquerade", SNATMark)

const (
	dirOriginal = 0
	dirReply    = 1
)

// Shards is how many slot maps each family's lookup tables are spread
// over, by a hash of the VIP key. One map for all would be simplest, but the
// kernel dumps a set in parts of about 32 KiB and walks its hash table from
// the start for each part: reading a map back costs the square of its size,
// which for the 1.3 million slots of 10,000 VIPs is minutes. Spread over 128
// maps, reading all back costs about a 128th of that.
const Shards = 128

// shard is the slot map that holds the VIP's lookup table.
func shard(k Key) int {
	h := fnv.New32a()
	h.Write(serviceKey(k))
	return int(h.Sum32() % Shards)
}

// slotSetName names a slot map: slots4_17, slots6_3.
func slotSetName(v6 bool, shard int) string {
	if v6 {
		return fmt.Sprintf("%s6_%d", slotSetPrefix, shard)
	}
	return fmt.Sprintf("%s4_%d", slotSetPrefix, shard)
}

const slotSetPrefix = "slots"

// parseSlotSetName reads a name slotSetName wrote.
func parseSlotSetName(name string) (v6 bool, shard int, ok bool) {
	rest, found := strings.CutPrefix(name, slotSetPrefix)
	if !found || len(rest) < 3 || (rest[0] != '4' && rest[0] != '6') || rest[1] != '_' {
		return false, 0, false
	}
	n, err := strconv.Atoi(rest[2:])
	if err != nil || n < 0 || n >= Shards || strconv.Itoa(n) != rest[2:] {
		return false, 0, false
	}
	return rest[0] == '6', n, true
}

// pickParams are what a pick chain's rule does.
type pickParams struct {
	v6        bool
	scheduler Scheduler
	size      int
	snat      bool
	// slots is the slot map it looks the backend up in.
	slots string
}

func paramsOf(k Key, sched Scheduler, size int, snat bool) pickParams {
	v6 := k.Addr.Is6()
	return pickParams{v6: v6, scheduler: sched, size: size, snat: snat, slots: slotSetName(v6, shard(k))}
}

// chainName is the pick chain of a service with these parameters: shared
// by every hash-scheduled VIP of the same slot map, table size and SNAT
// setting, or the round-robin VIP's own. Names hold only [a-z0-9_].
func chainName(k Key, p pickParams) string {
	if p.scheduler != RoundRobin {
		return hashChainName(p.v6, shard(k), p.size, p.snat)
	}
	name := fmt.Sprintf("rr_%s_m%d", k.name(), p.size)
	if p.snat {
		name += "_snat"
	}
	return name
}

func hashChainName(v6 bool, shard, size int, snat bool) string {
	fam := 4
	if v6 {
		fam = 6
	}
	name := fmt.Sprintf("hash%d_s%d_m%d", fam, shard, size)
	if snat {
		name += "_snat"
	}
	return name
}

// pickChain is the pick chain of a service with slots.
func pickChain(s Service) string {
	return chainName(s.Key, paramsOf(s.Key, s.Scheduler, len(s.Slots), s.SNAT))
}

// parsePickChain reads the scheduler, table size and SNAT setting from the
// name of a pick chain; ok is false for a name chainName cannot have
// written. The caller checks the rest by writing the name again.
func parsePickChain(name string) (sched Scheduler, size int, snat, ok bool) {
	rest, snat := strings.CutSuffix(name, "_snat")
	i := strings.LastIndex(rest, "_m")
	if i < 0 {
		return 0, 0, false, false
	}
	size, err := strconv.Atoi(rest[i+2:])
	if err != nil || size < 1 || size > MaxSlots || strconv.Itoa(size) != rest[i+2:] {
		return 0, 0, false, false
	}
	switch rest = rest[:i]; {
	case strings.HasPrefix(rest, "hash4_s") || strings.HasPrefix(rest, "hash6_s"):
		return Hash, size, snat, true
	case strings.HasPrefix(rest, "rr_"):
		return RoundRobin, size, snat, true
	}
	return 0, 0, false, false
}

// pick is a pick chain's one rule: optionally mark for SNAT, load the VIP
// key, append the slot (a hash of the source address and port, or a
// counter), look the backend up in the slot map and DNAT to it.
func pick(slots *nftables.Set, p pickParams) []expr.Any {
	var e []expr.Any
	if p.snat {
		e = append(e,
			&expr.Meta{Key: expr.MetaKeyMARK, Register: reg1},
			&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4,
				Mask: binaryutil.NativeEndian.PutUint32(^uint32(SNATMark)),
				Xor:  binaryutil.NativeEndian.PutUint32(SNATMark)},
			&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: reg1},
		)
	}
	// The key daddr . l4proto . dport . slot fills reg32 0 on: the
	// address, then the protocol, port and slot in a register each.
	daddr, saddr, n, family := uint32(16), uint32(12), uint32(1), uint32(unix.NFPROTO_IPV4)
	if p.v6 {
		daddr, saddr, n, family = 24, 8, 4, unix.NFPROTO_IPV6
	}
	slot := reg32(n + 2)
	e = append(e,
		&expr.Payload{DestRegister: reg32(0), Base: expr.PayloadBaseNetworkHeader, Offset: daddr, Len: 4 * n},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg32(n)},
		&expr.Payload{DestRegister: reg32(n + 1), Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
	)
	if p.scheduler == RoundRobin {
		e = append(e, &expr.Numgen{Register: slot, Type: unix.NFT_NG_INCREMENTAL, Modulus: uint32(p.size)})
	} else {
		// Source address and port into reg32 8 on, hashed into the
		// slot's register.
		e = append(e,
			&expr.Payload{DestRegister: reg32(8), Base: expr.PayloadBaseNetworkHeader, Offset: saddr, Len: 4 * n},
			&expr.Payload{DestRegister: reg32(8 + n), Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 2},
			&expr.Hash{SourceRegister: reg32(8), DestRegister: slot, Length: 4*n + 4, Modulus: uint32(p.size),
				Seed: HashSeed, Type: expr.HashTypeJenkins},
		)
	}
	// The backend's address lands from reg32 0 on, its port in the
	// register after the address.
	return append(e,
		&expr.Lookup{SourceRegister: reg32(0), DestRegister: reg1, IsDestRegSet: true, SetName: slots.Name, SetID: slots.ID},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: family, RegAddrMin: reg1, RegProtoMin: reg32(n), Specified: true},
	)
}

func pickText(p pickParams) string {
	var b []byte
	if p.snat {
		b = fmt.Appendf(b, "meta mark set meta mark | 0x%08x ", SNATMark)
	}
	ip := "ip"
	if p.v6 {
		ip = "ip6"
	}
	b = fmt.Appendf(b, "dnat %s to %s daddr . meta l4proto . th dport . ", ip, ip)
	if p.scheduler == RoundRobin {
		b = fmt.Appendf(b, "numgen inc mod %d", p.size)
	} else {
		b = fmt.Appendf(b, "jhash %s saddr . th sport mod %d seed 0x%08x", ip, p.size, HashSeed)
	}
	return string(fmt.Appendf(b, " map @%s", p.slots))
}

// parsePick reads back what pick wrote: SNAT, scheduler and table size.
func parsePick(exprs []expr.Any) (p pickParams, err error) {
	found := false
	for _, e := range exprs {
		switch e := e.(type) {
		case *expr.Meta:
			if e.Key == expr.MetaKeyMARK && e.SourceRegister {
				p.snat = true
			}
		case *expr.Hash:
			p.scheduler, p.size, found = Hash, int(e.Modulus), true
		case *expr.Numgen:
			p.scheduler, p.size, found = RoundRobin, int(e.Modulus), true
		case *expr.NAT:
			p.v6 = e.Family == unix.NFPROTO_IPV6
		case *expr.Lookup:
			p.slots = e.SetName
		}
	}
	if !found {
		return p, fmt.Errorf("rule has neither jhash nor numgen")
	}
	return p, nil
}

// baseRules are the rules of a base chain, in the order basePlan lists
// their texts.
func baseRules(o *objects, ch *nftables.Chain) [][]expr.Any {
	switch ch {
	case o.prerouting, o.output:
		return [][]expr.Any{dispatchRule(o.services4, false), dispatchRule(o.services6, true)}
	case o.postrouting:
		return [][]expr.Any{masquerade()}
	}
	return nil
}

func gotoChain(name string) *expr.Verdict { return &expr.Verdict{Kind: expr.VerdictGoto, Chain: name} }

// SlotMap names the map that holds the lookup table of the VIP k, for
// reading it with the nft CLI: nft list map inet portico NAME.
func SlotMap(k Key) string { return slotSetName(k.Addr.Is6(), shard(k)) }
