// Package bgp is the appliance's BGP speaker: gobgp, embedded as a library, behind a
// Speaker that takes the whole desired set of peers and advertisements at once (Set) and
// reports what cluster nodes announce (Routes) and the state of every session (Neighbors).
//
// A peer has one of two roles. A node (a cluster node running MetalLB, OpenELB, Calico or
// Cilium) announces Service VIPs and pod CIDRs; the Speaker keeps those inside the node's
// accept list and announces nothing back. An upstream router receives the appliance's own
// advertisements, next hop self, with the peer's communities, and nothing else.
//
// gobgp runs the sessions and keeps what each peer sent (its Adj-RIB-In); the Speaker picks
// the routes. gobgp's import policy refuses every route a peer sends, so gobgp's global RIB
// holds only the appliance's own advertisements, and a route from a node can never reach an
// upstream, whatever the export policy says. For each node the Speaker reads the
// Adj-RIB-In, keeps what lies inside accept, and makes one Learned route per prefix with a
// next hop for every node whose path ties with the best one on gobgp's own criteria (see
// rank.compare); node ASNs play no part, so nodes that share an ASN and nodes that each
// have their own both give multipath. gobgp's multipath selection is not used because it
// prefers a locally originated path to any learned one: a VIP that the appliance
// advertises upstream and that nodes announce to it would hide every node's path.
//
// One goroutine, Run's, owns the gobgp server and all that the Speaker knows; Set sends it
// requests, and Routes and Neighbors read a snapshot that it publishes under a mutex.
//
// BFD and graceful restart are not supported yet.
package bgp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"
)

// Role says what a peer is to the appliance.
type Role int

const (
	// Node is a cluster node that announces prefixes to the appliance.
	Node Role = iota + 1
	// Upstream is a router that the appliance announces its advertisements to.
	Upstream
)

func (r Role) String() string {
	switch r {
	case Node:
		return "node"
	case Upstream:
		return "upstream"
	}
	return fmt.Sprintf("Role(%d)", int(r))
}

// Peer is one BGP neighbor. Its session carries unicast routes of the address family of
// Address only, so a dual-stack node peers twice, once per family.
type Peer struct {
	Name     string     // unique; names the peer in logs and in Neighbors
	Address  netip.Addr // unique
	ASN      uint32
	Role     Role
	Password string // TCP MD5 signature key (RFC 2385); "" for none
	Multihop int    // eBGP TTL; 0 for a directly connected peer
	// HoldTime and Keepalive are whole seconds; 0 leaves gobgp's defaults (a hold time of
	// 90 s, a keepalive of a third of the hold time).
	HoldTime, Keepalive time.Duration
	// Accept is, for a node, what it may announce: these prefixes and those inside them.
	// A node with an empty Accept has every route refused.
	Accept []netip.Prefix
	// MaxPrefixes is how many prefixes the peer may send, counted before Accept refuses
	// any. One more shuts the session down with a Cease notification, and it stays down
	// until a Set changes the peer's session settings (MaxPrefixes itself, say) or
	// removes the peer. 0: no limit.
	MaxPrefixes int
	// Communities are, for an upstream, attached to all that is announced to it: standard
	// ("65000:100") or large ("65000:1:2") communities.
	Communities []string
}

// Global is the speaker's own identity.
type Global struct {
	ASN         uint32       // 0: BGP is off, and there may be no peers
	RouterID    netip.Addr   // IPv4
	ListenPort  int          // -1: do not listen (only connect out); 0: 179
	ListenAddrs []netip.Addr // none: every address
}

// Advertisement is a prefix the appliance announces to its upstream peers, with itself
// as the next hop.
type Advertisement struct {
	Prefix netip.Prefix
}

// Config is the whole desired state of the speaker.
type Config struct {
	Global         Global
	Peers          []Peer
	Advertisements []Advertisement
}

// Learned is a prefix that node peers announce, accepted and equally good from each of
// NextHops.
type Learned struct {
	Prefix   netip.Prefix
	NextHops []netip.Addr // one per node (fewer if nodes name the same next hop); sorted
}

// NeighborState is the state of one peer's session.
type NeighborState struct {
	Name    string
	Address netip.Addr
	ASN     uint32
	Role    Role
	State   string        // idle, connect, active, opensent, openconfirm or established
	Uptime  time.Duration // since the session was established; 0 if it is not
	// Received counts the prefixes the peer sent; for a node, Accepted counts those
	// inside its accept list and Rejected the others.
	Received, Accepted, Rejected int
	Advertised                   int // prefixes announced to the peer
	// LastError is why the session last went down other than by the Speaker's doing: a
	// notification, the hold timer, a broken connection, max-prefixes. "" if it never did.
	LastError string
}

// Speaker is the appliance's BGP speaker. Run must be running for Set to work; Routes and
// Neighbors may be called at any time, from any goroutine.
type Speaker struct {
	log      *slog.Logger
	onChange func()
	sets     chan setRequest
	done     chan struct{} // closed when Run returns

	mu        sync.Mutex // guards the snapshot below, which Run's goroutine publishes
	routes    []Learned
	neighbors []neighbor
}

type setRequest struct {
	cfg Config
	err chan error // buffered, so that Run never waits for a Set that gave up
}

// neighbor is a NeighborState as published, with the time Uptime counts from.
type neighbor struct {
	NeighborState
	since time.Time // when the session was established; zero if it is not
}

// New returns a Speaker that logs to log, which should carry component=bgp; gobgp's own
// messages go there too. onChange, unless nil, is called from Run's goroutine whenever
// Routes or Neighbors may have changed; it must return quickly and must not call Set.
func New(log *slog.Logger, onChange func()) *Speaker {
	return &Speaker{
		log:      log,
		onChange: onChange,
		sets:     make(chan setRequest),
		done:     make(chan struct{}),
	}
}

// Run owns the gobgp server, which starts with the first Set whose Global has an ASN. It
// returns nil when ctx ends, after stopping the server: every session is closed with a
// Cease notification. Run must be called once.
func (s *Speaker) Run(ctx context.Context) error {
	defer close(s.done)
	o := newOwner(s)
	defer o.stopServer()
	for {
		select {
		case <-ctx.Done():
			return nil
		case req := <-s.sets:
			req.err <- o.set(ctx, req.cfg)
		case ev := <-o.events:
			o.handle(ctx, ev)
		}
	}
}

// Set makes the speaker match c, and returns once gobgp has been told. It first checks c
// and, if anything is wrong, returns an error naming each bad peer and field and changes
// nothing. Otherwise:
//   - a change of Global restarts gobgp, which resets every session;
//   - a peer that is new is added and one that is gone is removed; a peer whose Accept
//     or Communities change keeps its session (its routes are filtered again, or
//     announced again with the new communities); a peer with any other change is
//     removed and added again, which resets its session; other peers are not touched;
//   - advertisements that are new are announced and those that are gone are withdrawn.
//
// Calling Set twice with the same c changes nothing. If gobgp refuses a step, Set goes on
// with the others and returns all such errors joined; the next Set tries again what
// failed.
func (s *Speaker) Set(ctx context.Context, c Config) error {
	if err := validate(c); err != nil {
		return err
	}
	req := setRequest{cfg: c, err: make(chan error, 1)}
	select {
	case s.sets <- req:
	case <-s.done:
		return errors.New("bgp: set: the speaker is not running")
	case <-ctx.Done():
		return fmt.Errorf("bgp: set: %w", ctx.Err())
	}
	select {
	case err := <-req.err:
		return err
	case <-ctx.Done():
		return fmt.Errorf("bgp: set: %w", ctx.Err())
	}
}

// Routes returns the prefixes that node peers announce and their accept lists allow,
// sorted by prefix. The caller may keep and change the result.
func (s *Speaker) Routes() []Learned {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Learned, len(s.routes))
	for i, l := range s.routes {
		out[i] = Learned{Prefix: l.Prefix, NextHops: append([]netip.Addr(nil), l.NextHops...)}
	}
	return out
}

// Neighbors returns the state of every configured peer, sorted by name.
func (s *Speaker) Neighbors() []NeighborState {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]NeighborState, len(s.neighbors))
	for i, n := range s.neighbors {
		out[i] = n.NeighborState
		if !n.since.IsZero() {
			out[i].Uptime = time.Since(n.since).Truncate(time.Second)
		}
	}
	return out
}
