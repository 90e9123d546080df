package gnmi

import (
	"context"
	"net/netip"

	"portico.dev/appliance/control/bgp"
	"portico.dev/appliance/datapath/route"
)

// State is what the server reads: the daemon implements it. The server
// calls it on every Get, from the RPC's goroutine, concurrently with other
// Gets and with the daemon's own work, and reads only the parts the
// request's paths reach (a Get of BGP neighbors does not read the kernel's
// routing table). The server never changes what State returns.
type State interface {
	// Neighbors returns the state of every configured BGP peer, in any
	// order; none when BGP is off. It must return at once (a snapshot, not
	// a question to the BGP speaker that may wait).
	Neighbors() []bgp.NeighborState
	// BGPRoutes returns the prefixes that node peers announce and their
	// accept lists allow, each with its equally good next hops: what the
	// appliance installs in the kernel. It must return at once.
	BGPRoutes() []bgp.Learned
	// KernelRoutes reads the kernel's main routing table of the
	// appliance's network namespace now, every protocol. An error fails
	// the Get with Internal.
	KernelRoutes(ctx context.Context) ([]route.TableRoute, error)
	// VIPs returns every VIP the appliance serves now, with its backends'
	// health and the kernel's counters; none before the first
	// configuration is applied. An error fails the Get with Internal.
	VIPs(ctx context.Context) ([]VIP, error)
}

// VIP is one L4 service as the server shows it.
type VIP struct {
	Name      string
	Address   netip.Addr
	Port      uint16
	Protocol  string // tcp | udp
	Scheduler string // maglev | round-robin
	SNAT      bool
	Counters  Counters
	Backends  []Backend
}

// Backend is one destination of a VIP.
type Backend struct {
	Address  netip.AddrPort
	Weight   int
	Health   Health
	Counters Counters
}

// Health says whether new flows go to a backend.
type Health string

// The values of Health, as in portico.yang.
const (
	HealthUp        Health = "up"        // its check passes
	HealthDown      Health = "down"      // its check fails: no new flow goes to it
	HealthUnchecked Health = "unchecked" // its VIP has no check: new flows go to it
)

// Counters are packets and bytes, both directions, since the object was
// added to the kernel.
type Counters struct {
	Packets, Bytes uint64
}
