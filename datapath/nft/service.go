// Package nft programs the appliance's L4 load-balancing datapath into the
// kernel with nftables, through netlink batches (github.com/google/nftables);
// no nft binary is needed at run time.
//
// Everything lives in one table, inet "portico", owned by the appliance:
//
//   - Verdict maps services4 / services6 keyed by "daddr . l4proto . dport"
//     send a packet for a VIP to that VIP's chain in one hash lookup, so the
//     cost per packet does not grow with the number of VIPs.
//   - Each VIP chain picks a backend from its own slot map: the slot is a
//     jhash of the flow's source address and port (fixed seed, so every
//     appliance with the same table picks the same backend for a flow) or a
//     round-robin counter, and the map holds the lookup table the caller
//     built (Maglev for the hash scheduler). DNAT rewrites to the backend.
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

// chainName is the name of the VIP's chain; its slot map adds "_slots".
// Only [a-z0-9_] so that the names need no quoting in the nft CLI.
func (k Key) chainName() string {
	a := strings.NewReplacer(".", "_", ":", "_").Replace(k.Addr.String())
	return fmt.Sprintf("vip_%s_%s_%d", a, k.Proto, k.Port)
}

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

// normalize returns a copy with Backends sorted and deduplicated, so that two
// equal services compare equal.
func (s Service) normalize() Service {
	s.Backends = slices.Clone(s.Backends)
	slices.SortFunc(s.Backends, func(a, b netip.AddrPort) int { return a.Compare(b) })
	s.Backends = slices.Compact(s.Backends)
	s.Slots = slices.Clone(s.Slots)
	return s
}

func (s Service) validate() error {
	if !s.Key.Addr.IsValid() {
		return fmt.Errorf("service %s: invalid address", s.Key)
	}
	if s.Key.Proto != TCP && s.Key.Proto != UDP {
		return fmt.Errorf("service %s: protocol %d not supported", s.Key, s.Key.Proto)
	}
	for _, b := range append(slices.Clone(s.Backends), s.Slots...) {
		if !b.IsValid() || b.Addr().Is4() != s.Key.Addr.Is4() {
			return fmt.Errorf("service %s: backend %s: not an address and port of the VIP's family", s.Key, b)
		}
	}
	return nil
}
