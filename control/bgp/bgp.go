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
// upstream, whatever the export policy says. The Speaker keeps a copy of each node's
// Adj-RIB-In from gobgp's events (see rib.go) and, for each prefix that an event touches,
// takes what lies inside accept and makes one Learned route with a next hop for every
// node whose path ties with the best one on gobgp's own criteria (see rank.compare); node ASNs play no part, so nodes that share an ASN and nodes that each
// have their own both give multipath. gobgp's multipath selection is not used because it
// prefers a locally originated path to any learned one: a VIP that the appliance
// advertises upstream and that nodes announce to it would hide every node's path.
//
// A peer may have a BFD session (RFC 5880, 5881), run by gobgp's own BFD, so that a
// node that dies takes its next hop away within the BFD detection time rather than the
// hold time. The Speaker runs a peer's BFD only while its BGP session is established,
// which keeps gobgp v4.8.0 from queueing a reset for a session that is already down and
// killing the next one with it (gobgp#3561); see bfd.go. A peer that sets its BFD session
// AdminDown keeps its BGP session (RFC 5882 §3.2), unprotected; see admindown.go.
//
// With graceful restart (RFC 4724) on, every session negotiates it: a node that restarts
// keeps its routes, marked stale, until it sends End-of-RIB or its restart time ends, and
// when the Speaker stops (Run returns) it closes its sessions without a notification, so
// that upstream routers keep the appliance's routes while it restarts.
//
// One goroutine, Run's, owns the gobgp server and all that the Speaker knows; Set sends it
// requests, and Routes and Neighbors read a snapshot that it publishes under a mutex.
package bgp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"portico.dev/appliance/datapath/route"
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
	// BFD, unless zero, runs a BFD session with the peer while the BGP session is up.
	BFD BFD
}

// BFD is a peer's BFD session. The zero BFD is none.
type BFD struct {
	// Interval is the transmit interval the appliance wants and the receive interval
	// it can take, in whole microseconds (BFD carries microseconds).
	Interval time.Duration
	// Multiplier is how many intervals without a packet take the session down, 1..255.
	Multiplier int
}

// Enabled reports whether b is a BFD session.
func (b BFD) Enabled() bool { return b != BFD{} }

// GracefulRestart is the appliance's graceful restart (RFC 4724). The zero value is off.
type GracefulRestart struct {
	Enabled bool
	// RestartTime is how long peers keep the appliance's routes once its sessions close
	// without a notification: whole seconds, 1..4095 (12 bits in the capability).
	RestartTime time.Duration
}

// Global is the speaker's own identity.
type Global struct {
	ASN         uint32       // 0: BGP is off, and there may be no peers
	RouterID    netip.Addr   // IPv4
	ListenPort  int          // -1: do not listen (only connect out); 0: 179
	ListenAddrs []netip.Addr // none: every address
	// GracefulRestart applies to every session. The Speaker is then also the helper of
	// peers that restart: it keeps their routes meanwhile.
	GracefulRestart GracefulRestart
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
	// notification, the hold timer, a broken connection, max-prefixes, BFD. "" if it
	// never did.
	LastError string

	// BFD is the state of the peer's BFD session: "disabled" (the peer has none), "down",
	// "init", "up", or "admin-down" (the peer turned its BFD session off, which leaves
	// the BGP session up). BFD runs only while the BGP session is established, so it is
	// "down" while the session is not.
	BFD string
	// Unprotected is true when the peer has BFD, the session is established and BFD is
	// not up: a failure of the peer is found by the hold timer only.
	Unprotected bool
	// GracefulRestart is true when both sides advertised graceful restart: the peer
	// keeps the appliance's routes while the appliance restarts. The appliance keeps
	// the peer's routes while the peer restarts if the peer also listed the session's
	// address family, which a peer that is only "aware" of graceful restart does not.
	GracefulRestart bool
	// Restarting is true while the peer restarts gracefully: its session went down
	// without a notification, it had listed the session's address family, and the
	// Speaker keeps its routes, marked stale, until it comes back and sends End-of-RIB
	// or its restart time ends.
	Restarting bool
	// Stale counts the received prefixes that are kept from before the peer restarted.
	Stale int
}

// Speaker is the appliance's BGP speaker. Run must be running for Set to work; Routes and
// Neighbors may be called at any time, from any goroutine.
type Speaker struct {
	log      *slog.Logger
	onChange func()
	sets     chan setRequest
	done     chan struct{} // closed when Run returns

	mu sync.Mutex // guards the snapshot below, which Run's goroutine publishes
	// routes are the learned routes but for the changes in pending, which RouteList
	// makes: a burst of updates brings many changes between two reads.
	routes    *route.List
	pending   []route.Route // in order; no next hops: the prefix's route is gone
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
// returns nil when ctx ends, after stopping the server. Without graceful restart every
// session is then closed with a Cease notification. With it, the sessions that
// negotiated graceful restart are closed without one, as if the appliance had crashed,
// so that their peers keep its routes for the restart time; the next Speaker's sessions
// tell them that it restarted. Run must be called once.
func (s *Speaker) Run(ctx context.Context) error {
	defer close(s.done)
	o := newOwner(s)
	defer func() { o.stopServer(o.global.GracefulRestart.Enabled) }()
	poll := time.NewTicker(bfdPoll)
	defer poll.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case req := <-s.sets:
			req.err <- o.set(ctx, req.cfg)
		case ev := <-o.events:
			o.handle(ctx, ev)
		case <-o.spy.state.wake:
			o.handle(ctx, event{})
		case <-poll.C:
			o.poll(ctx)
		case <-o.relistC():
			o.refresh(ctx, true)
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
	var out []Learned
	for r := range s.RouteList().All() {
		l := Learned{Prefix: r.Prefix, NextHops: make([]netip.Addr, len(r.NextHops))}
		for i, nh := range r.NextHops {
			l.NextHops[i] = nh.Addr
		}
		out = append(out, l)
	}
	return out
}

// RouteList returns the routes of Routes as kernel routes, each next hop of weight 1.
// Each List is made from the one before with what changed, so that comparing the two
// costs in proportion to the changes (route.List).
func (s *Speaker) RouteList() *route.List {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.pending) > 0 {
		s.routes, s.pending = s.routes.With(s.pending), nil
	}
	return s.routes
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
