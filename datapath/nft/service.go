// Package nft programs the appliance's L4 load-balancing datapath into the
// kernel with nftables, through netlink batches (github.com/google/nftables
// for tables, sets, chains and rules; hand-encoded messages for set
// elements, of which there are over a million at 10,000 VIPs); no nft
// binary is needed at run time.
//
// Everything lives in one table, inet "portico", owned by the appliance:
//
//   - Verdict maps services4 / services6 keyed by "daddr . l4proto . dport"
//     send a packet for a VIP to the chain that picks its backend, in one
//     hash lookup, so the cost per packet does not grow with the number of
//     VIPs. A VIP with no backend to take traffic maps to accept: its new
//     flows reach the local stack, which refuses them.
//   - One slot map per family, slots4 / slots6, keyed by "daddr . l4proto .
//     dport . slot", holds the lookup table of every VIP: slot i of a VIP
//     names a backend address and port.
//   - A pick chain computes the slot and DNATs to the backend the slot map
//     names. Hash-scheduled VIPs share one chain per family, table size and
//     SNAT setting (hash4_m131, hash4_m131_snat, …): the slot is a jhash of
//     the flow's source address and port modulo the table size, with a fixed
//     seed, so every appliance with the same table picks the same backend
//     for a flow. A round-robin VIP has a chain of its own (rr_…), because
//     the counter that walks its slots must be its own.
//   - Conntrack does NAT on a connection's first packet only, so established
//     flows stay on their backend whatever later happens to the maps.
//   - SNAT VIPs mark their first packet; postrouting masquerades marked ones.
//   - A forward chain counts packets and bytes per VIP and per VIP backend in
//     two sets whose elements carry counters.
//
// The package knows nothing of configuration: it takes the whole desired list
// of services through Set and changes only what differs.
package nft

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Proto is an IP protocol number.
type Proto uint8

// The protocols a VIP can balance.
const (
	TCP Proto = 6
	UDP Proto = 17
)

func (p Proto) String() string {
	switch p {
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	}
	return fmt.Sprintf("proto-%d", uint8(p))
}

// Scheduler says how a VIP chain turns a packet into a slot.
type Scheduler uint8

const (
	// Hash picks the slot from a hash of the source address and port: the
	// same flow lands in the same slot on every appliance.
	Hash Scheduler = iota
	// RoundRobin picks slots in turn with a counter.
	RoundRobin
)

func (s Scheduler) String() string {
	if s == RoundRobin {
		return "round-robin"
	}
	return "hash"
}

// Key identifies a VIP: address, protocol and port.
type Key struct {
	Addr  netip.Addr
	Proto Proto
	Port  uint16
}

func (k Key) String() string {
	return fmt.Sprintf("%s/%s", netip.AddrPortFrom(k.Addr, k.Port), k.Proto)
}

// Compare orders keys by address, protocol, then port.
func (k Key) Compare(o Key) int {
	if c := k.Addr.Compare(o.Addr); c != 0 {
		return c
	}
	if c := cmp.Compare(k.Proto, o.Proto); c != 0 {
		return c
	}
	return cmp.Compare(k.Port, o.Port)
}

// name is the key as it appears in a chain name: only [a-z0-9_], so that
// names need no quoting in the nft CLI.
func (k Key) name() string {
	a := strings.NewReplacer(".", "_", ":", "_").Replace(k.Addr.String())
	return fmt.Sprintf("%s_%s_%d", a, k.Proto, k.Port)
}

// MaxSlots is the largest lookup table a service may have: the slot map's
// key has room for more, but a bigger table would not fit one netlink
// batch when it is replaced whole.
const MaxSlots = 65536

// Service is one VIP as the datapath sees it.
type Service struct {
	Key       Key
	SNAT      bool
	Scheduler Scheduler
	// Backends are every backend of the VIP, whether in the table or not;
	// each has a counter. Same address family as the VIP.
	Backends []netip.AddrPort
	// Slots is the lookup table: slot i sends a new flow to Slots[i]. Its
	// length is the table size. Empty means no backend can take traffic:
	// new flows then reach the local stack, which refuses them.
	Slots []netip.AddrPort
}

// normalize returns s with Backends sorted and deduplicated, so that two
// equal services compare equal, and with SNAT and Scheduler cleared when
// it has no slots: the kernel then holds neither. It copies Backends only
// when they are not sorted already, and never Slots: a Target keeps the
// slices it is given.
func (s Service) normalize() Service {
	if !sortedUnique(s.Backends) {
		s.Backends = slices.Clone(s.Backends)
		slices.SortFunc(s.Backends, netip.AddrPort.Compare)
		s.Backends = slices.Compact(s.Backends)
	}
	if len(s.Slots) == 0 {
		s.SNAT, s.Scheduler, s.Slots = false, Hash, nil
	}
	return s
}

func sortedUnique(l []netip.AddrPort) bool {
	for i := 1; i < len(l); i++ {
		if l[i-1].Compare(l[i]) >= 0 {
			return false
		}
	}
	return true
}

// same reports whether a normalized service s holds what t, normalized too,
// asks for. It is cheap when t's slices are those s was made from, which is
// the case for every service the caller did not change: the Target keeps the
// slices it is given, and the caller builds a new slice for what changes.
func (s Service) same(t Service) bool {
	return s.Key == t.Key && s.SNAT == t.SNAT && s.Scheduler == t.Scheduler &&
		sameAddrPorts(s.Backends, t.Backends) && sameAddrPorts(s.Slots, t.Slots)
}

func sameAddrPorts(a, b []netip.AddrPort) bool {
	if len(a) != len(b) {
		return false
	}
	if len(a) == 0 || &a[0] == &b[0] {
		return true
	}
	return slices.Equal(a, b)
}

func (s Service) validate() error {
	if !s.Key.Addr.IsValid() {
		return fmt.Errorf("service %s: invalid address", s.Key)
	}
	if s.Key.Proto != TCP && s.Key.Proto != UDP {
		return fmt.Errorf("service %s: protocol %d not supported", s.Key, s.Key.Proto)
	}
	if s.Scheduler != Hash && s.Scheduler != RoundRobin {
		return fmt.Errorf("service %s: scheduler %d not supported", s.Key, s.Scheduler)
	}
	if len(s.Slots) > MaxSlots {
		return fmt.Errorf("service %s: %d slots, more than %d", s.Key, len(s.Slots), MaxSlots)
	}
	for _, l := range [][]netip.AddrPort{s.Backends, s.Slots} {
		for _, b := range l {
			if !b.IsValid() || b.Addr().Is4() != s.Key.Addr.Is4() {
				return fmt.Errorf("service %s: backend %s: not an address and port of the VIP's family", s.Key, b)
			}
		}
	}
	return nil
}
