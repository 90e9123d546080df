package nft

import (
	"fmt"
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
	typeBackend4 = mustConcat(nftables.TypeIPAddr, nftables.TypeInetService)
	typeBackend6 = mustConcat(nftables.TypeIP6Addr, nftables.TypeInetService)
)

// objects holds the table and base objects as google/nftables values.
type objects struct {
	table                *nftables.Table
	services4, services6 *nftables.Set
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

// dispatch is the base-chain rule "meta nfproto F daddr . l4proto . dport
// vmap @servicesF".
func dispatch(set *nftables.Set, v6 bool) []expr.Any {
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

// slotsSet is the VIP's slot map: slot : backend address . port.
func slotsSet(t *nftables.Table, k Key) *nftables.Set {
	data := typeBackend4
	if k.Addr.Is6() {
		data = typeBackend6
	}
	return &nftables.Set{Table: t, Name: k.chainName() + "_slots", ID: lastSetID.Add(1), IsMap: true,
		KeyType: nftables.TypeInteger, DataType: data, KeyByteOrder: binaryutil.NativeEndian}
}

// pick is the VIP chain's one rule: optionally mark for SNAT, compute the
// slot, look the backend up in the slot map and DNAT to it.
func pick(s Service, slots *nftables.Set) []expr.Any {
	var e []expr.Any
	if s.SNAT {
		e = append(e,
			&expr.Meta{Key: expr.MetaKeyMARK, Register: reg1},
			&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4,
				Mask: binaryutil.NativeEndian.PutUint32(^uint32(SNATMark)),
				Xor:  binaryutil.NativeEndian.PutUint32(SNATMark)},
			&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: reg1},
		)
	}
	v6 := s.Key.Addr.Is6()
	size := uint32(len(s.Slots))
	if s.Scheduler == RoundRobin {
		e = append(e, &expr.Numgen{Register: reg32(0), Type: unix.NFT_NG_INCREMENTAL, Modulus: size})
	} else {
		// Source address into reg 2 (reg32 4..), source port after it;
		// hash both into reg32 0.
		off, n := uint32(12), uint32(4)
		if v6 {
			off, n = 8, 16
		}
		e = append(e,
			&expr.Payload{DestRegister: reg2, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n},
			&expr.Payload{DestRegister: reg32(4 + n/4), Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 2},
			&expr.Hash{SourceRegister: reg2, DestRegister: reg32(0), Length: n + 4, Modulus: size,
				Seed: HashSeed, Type: expr.HashTypeJenkins},
		)
	}
	family, protoReg := uint32(unix.NFPROTO_IPV4), reg32(1)
	if v6 {
		family, protoReg = unix.NFPROTO_IPV6, reg32(4)
	}
	return append(e,
		&expr.Lookup{SourceRegister: reg32(0), DestRegister: reg1, IsDestRegSet: true, SetName: slots.Name, SetID: slots.ID},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: family, RegAddrMin: reg1, RegProtoMin: protoReg, Specified: true},
	)
}

func pickText(s Service) string {
	var b []byte
	if s.SNAT {
		b = fmt.Appendf(b, "meta mark set meta mark | 0x%08x ", SNATMark)
	}
	ip := "ip"
	if s.Key.Addr.Is6() {
		ip = "ip6"
	}
	if s.Scheduler == RoundRobin {
		b = fmt.Appendf(b, "dnat %s to numgen inc mod %d map @%s_slots", ip, len(s.Slots), s.Key.chainName())
	} else {
		b = fmt.Appendf(b, "dnat %s to jhash %s saddr . th sport mod %d seed 0x%08x map @%s_slots",
			ip, ip, len(s.Slots), HashSeed, s.Key.chainName())
	}
	return string(b)
}

// parsePick reads back what pick wrote: SNAT, scheduler and table size.
func parsePick(exprs []expr.Any) (snat bool, sched Scheduler, size int, err error) {
	found := false
	for _, e := range exprs {
		switch e := e.(type) {
		case *expr.Meta:
			if e.Key == expr.MetaKeyMARK && e.SourceRegister {
				snat = true
			}
		case *expr.Hash:
			sched, size, found = Hash, int(e.Modulus), true
		case *expr.Numgen:
			sched, size, found = RoundRobin, int(e.Modulus), true
		}
	}
	if !found {
		return false, 0, 0, fmt.Errorf("rule has neither jhash nor numgen")
	}
	return snat, sched, size, nil
}

// baseRules are the rules of a base chain, in the order basePlan lists
// their texts.
func baseRules(o *objects, ch *nftables.Chain) [][]expr.Any {
	switch ch {
	case o.prerouting, o.output:
		return [][]expr.Any{dispatch(o.services4, false), dispatch(o.services6, true)}
	case o.postrouting:
		return [][]expr.Any{masquerade()}
	}
	return nil
}

func gotoChain(name string) *expr.Verdict { return &expr.Verdict{Kind: expr.VerdictGoto, Chain: name} }
