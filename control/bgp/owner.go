package bgp

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"time"

	"github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/apiutil"
	"github.com/osrg/gobgp/v4/pkg/packet/bgp"
	"github.com/osrg/gobgp/v4/pkg/server"
	"google.golang.org/protobuf/proto"

	"portico.dev/appliance/datapath/route"
)

// owner is the state of Run's goroutine: the gobgp server and what the Speaker knows of
// its peers. Only that goroutine touches it.
type owner struct {
	s      *Speaker
	log    *slog.Logger
	events chan event // from gobgp's watcher to Run
	spy    resetSpy   // gobgp logs through it; it counts the resets gobgp is asked for
	guard  *adminDownGuard

	srv       *server.BgpServer // nil while BGP is off
	stopWatch context.CancelFunc
	started   bool                    // a server was started before in this Run
	global    Global                  // that srv runs with
	policy    *api.SetPoliciesRequest // in srv
	peers     map[string]*peerState   // in srv, by name
	addrs     map[netip.Addr]*peerState
	advs      map[netip.Prefix]bool // announced in srv

	// What Routes returns, kept up to date one prefix at a time (see rib.go): each
	// learned prefix's next hops, shared with every other prefix of the same.
	learned map[netip.Prefix][]netip.Addr
	dirty   map[netip.Prefix]bool // prefixes whose paths changed since the last relearn
	hops    hopSets
	scratch []netip.Addr // relearn's

	// What gobgp last listed of its peers, when, and a timer that lists them again
	// after a refresh that reused it (see refresh).
	states   map[netip.Addr]*api.Peer
	listedAt time.Time
	relist   *time.Timer
}

// listEvery is how often at most a burst of route updates makes the owner list
// gobgp's peers: listing counts every peer's Adj-RIB-In by walking it, which at
// 100,000 prefixes cost more than the updates themselves.
const listEvery = time.Second

// peerState is what the owner knows of one peer in gobgp.
type peerState struct {
	Peer
	up        bool // established, as gobgp last said
	lastError string
	shutdown  bool // the max-prefixes shutdown has been logged
	// addedRestarting: the peer was added by the Set that started gobgp in this Run,
	// with graceful restart on, so its first session tells the peer that the appliance
	// restarted (see startServer).
	addedRestarting bool
	// A node's routes, as gobgp's Adj-RIB-In holds them (see rib.go):
	rib      map[netip.Prefix]ribPath
	accepted int                   // paths in rib that Accept allows
	stale    int                   // paths in rib kept from before the node restarted
	refused  map[netip.Prefix]bool // refused and logged, each once while Accept stays

	// BFD (see bfd.go):
	bfdOn     bool   // gobgp has the peer's BFD configuration
	bfd       string // the state of gobgp's BFD session while bfdOn
	adminDown bool   // the peer set its BFD session AdminDown
	// resetsPending counts the hard resets gobgp was asked for that no session has gone
	// down with yet; one pending while the session is down is queued.
	resetsPending    int
	unprotectedSince time.Time // since when the established session is not protected by BFD
	warned           bool      // that it is unprotected has been logged
}

// event is a change that gobgp reports about the peer at addr: its new session state,
// paths that it sent or that gobgp dropped, or its End-of-RIB.
type event struct {
	addr  netip.Addr
	state *apiutil.PeerState
	paths []*apiutil.Path
	eor   bool
}

func newOwner(s *Speaker) *owner {
	return &owner{
		s:       s,
		log:     s.log,
		events:  make(chan event, 256),
		spy:     newResetSpy(s.log.Handler()),
		guard:   newAdminDownGuard(),
		peers:   map[string]*peerState{},
		addrs:   map[netip.Addr]*peerState{},
		advs:    map[netip.Prefix]bool{},
		learned: map[netip.Prefix][]netip.Addr{},
		dirty:   map[netip.Prefix]bool{},
	}
}

// set makes gobgp match c, which is valid, and publishes the result.
func (o *owner) set(ctx context.Context, c Config) error {
	err := o.reconcile(ctx, c)
	o.guardWant(o.hasBFD())
	if o.srv != nil {
		o.gate(ctx)
	}
	o.refresh(ctx, true)
	return err
}

func (o *owner) reconcile(ctx context.Context, c Config) error {
	restarting := false
	if !c.Global.equal(o.global) {
		o.stopServer(false)
		if c.Global.ASN == 0 {
			return nil
		}
		// The first sessions of a Speaker that starts with graceful restart on tell
		// their peers that the appliance restarted; see startServer.
		restarting = c.Global.GracefulRestart.Enabled && !o.started
		if err := o.startServer(ctx, c.Global); err != nil {
			return err
		}
	}
	if o.srv == nil {
		return nil
	}
	// The policy names the upstream peers, so it changes before they are added.
	if pol := policies(c); !proto.Equal(pol, o.policy) {
		if err := o.srv.SetPolicies(ctx, pol); err != nil {
			return fmt.Errorf("bgp: set routing policy: %w", err)
		}
		o.policy = pol
	}

	p := diff(o.current(), c)
	var errs []error
	for _, peer := range p.remove {
		if err := o.srv.DeletePeer(ctx, &api.DeletePeerRequest{Address: peer.Address.String()}); err != nil {
			errs = append(errs, fmt.Errorf("bgp: remove peer %q: %w", peer.Name, err))
			continue
		}
		o.dropAll(o.peers[peer.Name])
		delete(o.peers, peer.Name)
		delete(o.addrs, peer.Address)
		o.log.Info("peer removed", "peer", peer.Name)
	}
	// Advertisements change before peers are added, so that a new session's first
	// updates, and its End-of-RIB, carry all of them: after a graceful restart, an
	// upstream drops what End-of-RIB did not refresh.
	for _, pfx := range p.announce {
		if _, err := o.srv.AddPath(apiutil.AddPathRequest{Paths: []*apiutil.Path{advertisement(pfx, false)}}); err != nil {
			errs = append(errs, fmt.Errorf("bgp: announce %s: %w", pfx, err))
			continue
		}
		o.advs[pfx] = true
	}
	for _, pfx := range p.withdraw {
		if err := o.srv.DeletePath(apiutil.DeletePathRequest{Paths: []*apiutil.Path{advertisement(pfx, true)}}); err != nil {
			errs = append(errs, fmt.Errorf("bgp: withdraw %s: %w", pfx, err))
			continue
		}
		delete(o.advs, pfx)
	}
	for _, peer := range p.add {
		if o.peers[peer.Name] != nil {
			continue // its old self could not be removed, as reported above
		}
		// BFD is off until the session is established; see gate.
		if err := o.srv.AddPeer(ctx, &api.AddPeerRequest{Peer: apiPeer(peer, c.Global, false, restarting)}); err != nil {
			errs = append(errs, fmt.Errorf("bgp: add peer %q: %w", peer.Name, err))
			continue
		}
		ps := &peerState{Peer: peer, addedRestarting: restarting, rib: map[netip.Prefix]ribPath{}, refused: map[netip.Prefix]bool{}}
		o.peers[peer.Name] = ps
		o.addrs[peer.Address] = ps
		o.log.Info("peer added", "peer", peer.Name, "address", peer.Address, "asn", peer.ASN, "role", peer.Role)
	}
	for _, peer := range p.update {
		ps := o.peers[peer.Name]
		if peer.Role == Upstream {
			// The policy has the new communities; announce everything again with them.
			req := &api.ResetPeerRequest{Address: peer.Address.String(), Soft: true, Direction: api.ResetPeerRequest_DIRECTION_OUT}
			if err := o.srv.ResetPeer(ctx, req); err != nil {
				errs = append(errs, fmt.Errorf("bgp: announce again to peer %q: %w", peer.Name, err))
				continue
			}
			ps.Peer = peer
		} else {
			ps.Peer = peer
			ps.refused = map[netip.Prefix]bool{} // log what the new accept list refuses
			o.refilter(ps)
		}
	}
	return errors.Join(errs...)
}

// current returns the Config that gobgp runs now.
func (o *owner) current() Config {
	c := Config{Global: o.global}
	for _, ps := range o.peers {
		c.Peers = append(c.Peers, ps.Peer)
	}
	for pfx := range o.advs {
		c.Advertisements = append(c.Advertisements, Advertisement{Prefix: pfx})
	}
	return c
}

// sorted returns the peers sorted by name.
func (o *owner) sorted() []*peerState {
	out := make([]*peerState, 0, len(o.peers))
	for _, ps := range o.peers {
		out = append(out, ps)
	}
	slices.SortFunc(out, func(a, b *peerState) int { return cmp.Compare(a.Name, b.Name) })
	return out
}

// startServer starts gobgp with g, its policy and a watcher that feeds o.events.
//
// With graceful restart on, the peers that the first Set of a Run adds say in their
// first OPEN that the appliance restarted (the R and F bits of RFC 4724): an upstream
// that kept the routes of the appliance's last run then keeps them, stale, until this
// run's End-of-RIB, instead of dropping them when the session comes up. gobgp holds
// back its updates meanwhile until every peer with graceful restart has sent its own
// End-of-RIB, or for deferralTime at most.
func (o *owner) startServer(ctx context.Context, g Global) error {
	srv := server.NewBgpServer(server.LoggerOption(slog.New(o.spy), nil))
	go srv.Serve()
	watchCtx, stopWatch := context.WithCancel(ctx)
	fail := func(err error) error {
		stopWatch()
		srv.Stop()
		return fmt.Errorf("bgp: start (asn %d, router-id %s): %w", g.ASN, g.RouterID, err)
	}
	if err := srv.StartBgp(ctx, &api.StartBgpRequest{Global: apiGlobal(g)}); err != nil {
		return fail(err)
	}
	pol := policies(Config{})
	if err := srv.SetPolicies(ctx, pol); err != nil {
		return fail(err)
	}
	for _, a := range assignments() {
		if err := srv.SetPolicyAssignment(ctx, &api.SetPolicyAssignmentRequest{Assignment: a}); err != nil {
			return fail(err)
		}
	}
	// gobgp calls these from a goroutine of its own, through an unbounded queue, so
	// waiting here for Run never holds up gobgp itself.
	send := func(ev event) {
		select {
		case o.events <- ev:
		case <-watchCtx.Done():
		}
	}
	callbacks := server.WatchEventMessageCallbacks{
		OnPeerUpdate: func(m *apiutil.WatchEventMessage_PeerEvent, _ time.Time) {
			if m.Type == apiutil.PEER_EVENT_STATE {
				send(event{addr: m.Peer.State.NeighborAddress, state: &m.Peer.State})
			}
		},
		// The paths of each update a peer sends, and those that gobgp drops from its
		// Adj-RIB-In (session down, restart time over, peer deleted).
		OnPathUpdate: func(paths []*apiutil.Path, _ time.Time) {
			if len(paths) > 0 {
				send(event{addr: paths[0].PeerAddress, paths: paths})
			}
		},
		// End-of-RIB from a peer that restarted drops its stale routes, which no
		// update reports.
		OnPathEor: func(path *apiutil.Path, _ time.Time) {
			send(event{addr: path.PeerAddress, eor: true})
		},
	}
	watch := []server.WatchOption{server.WatchPeer(), server.WatchUpdate(false, "", ""), server.WatchAdjInWithdraw(), server.WatchEor(false)}
	if err := srv.WatchEvent(watchCtx, callbacks, watch...); err != nil {
		return fail(err)
	}
	o.srv, o.stopWatch, o.global, o.policy, o.started = srv, stopWatch, g, pol, true
	o.log.Info("started", "asn", g.ASN, "router-id", g.RouterID, "graceful-restart", g.GracefulRestart.Enabled)
	return nil
}

// stopServer stops gobgp, if it runs, and forgets all it held. Unless graceful, every
// session is closed with a Cease notification; if graceful, those that negotiated
// graceful restart are closed without one, so that their peers keep the appliance's
// routes for its restart time.
func (o *owner) stopServer(graceful bool) {
	if o.srv == nil {
		return
	}
	o.stopWatch()
	if graceful {
		// Stop, which also stops BFD, calls StopBgp again; gobgp's complaint that it
		// is stopped already is not news.
		o.spy.state.setQuiet(true)
		defer o.spy.state.setQuiet(false)
		if err := o.srv.StopBgp(context.Background(), &api.StopBgpRequest{AllowGracefulRestart: true}); err != nil {
			o.log.Error("graceful stop", "err", err)
		}
	}
	o.srv.Stop()
	o.log.Info("stopped", "asn", o.global.ASN, "router-id", o.global.RouterID, "graceful", graceful)
	o.srv, o.stopWatch, o.global, o.policy, o.states = nil, nil, Global{}, nil, nil
	for _, ps := range o.peers {
		o.dropAll(ps)
	}
	clear(o.peers)
	clear(o.addrs)
	clear(o.advs)
	o.guardWant(false)
}

// handle takes ev and every other event already queued, and the resets gobgp was asked
// for, then runs BFD as the sessions' states want and publishes the result.
func (o *owner) handle(ctx context.Context, ev event) {
	// What gobgp lists changes with a session's state, with End-of-RIB (a restart
	// ends) and with the routes of an upstream (gobgp counts them), but not with the
	// routes of a node, which the Speaker counts itself: listing takes gobgp's lock
	// for a walk of every Adj-RIB-In (100 ms and more at 100,000 routes), during
	// which no update is handled, so a burst of node routes lists nothing.
	list, upstreamRoutes := false, false
	for more := true; more; {
		if ev.state != nil || ev.paths == nil {
			list = true
		}
		if ps := o.addrs[ev.addr]; ps != nil {
			upstreamRoutes = upstreamRoutes || (ev.paths != nil && ps.Role != Node)
			o.note(ps, ev)
		}
		select {
		case ev = <-o.events:
		default:
			more = false
		}
	}
	// A reset is logged before gobgp queues it, so before the event of the session
	// that goes down with it is sent: taking them after the events has counted the
	// reset of every session that went down with one.
	for addr, n := range o.spy.state.take() {
		if ps := o.addrs[addr]; ps != nil {
			ps.resetsPending += n
		}
	}
	if o.srv != nil {
		o.gate(ctx)
	}
	switch {
	case list || o.states == nil:
		o.refresh(ctx, true)
	case upstreamRoutes:
		o.refresh(ctx, false)
	default:
		o.publish(o.relearn(), o.neighbors(o.states))
	}
}

// note takes in one event about ps.
func (o *owner) note(ps *peerState, ev event) {
	switch {
	case ev.eor:
		o.dropStale(ps)
	case ev.paths != nil:
		o.apply(ps, ev.paths)
	case ev.state != nil:
		o.noteState(ps, ev.state)
	}
}

// noteState logs a session that comes up or goes down, keeps why it went down, and
// marks the peer's routes stale or drops them, as gobgp does.
func (o *owner) noteState(ps *peerState, st *apiutil.PeerState) {
	up := st.SessionState == bgp.BGP_FSM_ESTABLISHED
	switch reason, msg := st.DisconnectReason, st.DisconnectMessage; {
	case up:
	case ps.shutdown:
		// Stays down for max-prefixes, which says why better than what follows.
	case ps.up && isBFDReset(reason, msg):
		ps.resetsPending--
		ps.lastError = "BFD session down (" + msg + ")"
	case isFailure(reason) || reason == api.PeerState_DISCONNECT_REASON_GRACEFUL_RESTART:
		ps.lastError = msg
	}
	switch reason := st.DisconnectReason; {
	case up && !ps.up:
		o.log.Info("session established", "peer", ps.Name)
	case !up && ps.up && reason == api.PeerState_DISCONNECT_REASON_GRACEFUL_RESTART && len(ps.rib) > 0:
		// gobgp has dropped the routes of the families the peer did not list.
		o.log.Warn("session down; the peer restarts gracefully, its routes are kept until it is back or its restart time ends",
			"peer", ps.Name, "routes", len(ps.rib))
		o.markStale(ps)
	case !up && ps.up:
		o.log.Warn("session down", "peer", ps.Name, "reason", ps.lastError)
		// gobgp has dropped the routes, and said so path by path; this is in case.
		o.dropAll(ps)
	case !up && reason == api.PeerState_DISCONNECT_REASON_RESTART_TIMER_EXPIRED:
		o.log.Warn("the peer did not come back within its restart time; its routes are dropped", "peer", ps.Name, "routes", len(ps.rib))
		o.dropAll(ps)
	}
	ps.up = up
}

// refresh reads from gobgp the state of every peer, learns again the prefixes whose
// paths changed, and publishes Routes and Neighbors.
func (o *owner) refresh(ctx context.Context, list bool) {
	changes := o.relearn()
	if o.srv == nil {
		o.publish(changes, nil)
		return
	}
	// An upstream's route updates change only counters that gobgp lists: while they
	// come in a burst, list at most every listEvery, and once more when the burst is
	// over.
	if wait := listEvery - time.Since(o.listedAt); !list && o.states != nil && wait > 0 {
		if o.relist == nil {
			o.relist = time.NewTimer(wait)
		}
		o.publish(changes, o.neighbors(o.states))
		return
	}
	if o.relist != nil {
		o.relist.Stop()
		o.relist = nil
	}
	states := map[netip.Addr]*api.Peer{}
	err := o.srv.ListPeer(ctx, &api.ListPeerRequest{EnableAdvertised: true}, func(p *api.Peer) {
		if a, err := netip.ParseAddr(p.GetState().GetNeighborAddress()); err == nil {
			states[a] = p
		}
	})
	if err != nil {
		o.log.Error("list peers", "err", err)
	}
	o.states, o.listedAt = states, time.Now()
	for _, ps := range o.peers {
		if states[ps.Address].GetState().GetAdminState() == api.PeerState_ADMIN_STATE_PFX_CT && !ps.shutdown {
			ps.shutdown = true
			ps.lastError = fmt.Sprintf("sent more than max-prefixes %d", ps.MaxPrefixes)
			o.log.Error("session shut down: the peer sent more prefixes than max-prefixes allows; it stays down until the peer is configured again",
				"peer", ps.Name, "max-prefixes", ps.MaxPrefixes)
		}
	}
	o.publish(changes, o.neighbors(states))
}

// relistC delivers when refresh owes a listing of gobgp's peers; nil when it
// owes none.
func (o *owner) relistC() <-chan time.Time {
	if o.relist == nil {
		return nil
	}
	return o.relist.C
}

// neighbors returns the state of every peer, given what gobgp lists.
func (o *owner) neighbors(states map[netip.Addr]*api.Peer) []neighbor {
	out := make([]neighbor, 0, len(o.peers))
	for _, ps := range o.peers {
		n := neighbor{NeighborState: NeighborState{
			Name: ps.Name, Address: ps.Address, ASN: ps.ASN, Role: ps.Role,
			State: "idle", LastError: ps.lastError, BFD: ps.bfdName(),
		}}
		if st := states[ps.Address]; st != nil {
			n.State = sessionState(st.GetState().GetSessionState())
			if n.State == "established" {
				n.since = st.GetTimers().GetState().GetUptime().AsTime()
			}
			listed := false // the peer listed the session's family in its graceful-restart capability
			for _, af := range st.GetAfiSafis() {
				n.Advertised += int(af.GetState().GetAdvertised())
				n.Received += int(af.GetState().GetReceived())
				listed = listed || af.GetMpGracefulRestart().GetState().GetReceived()
			}
			n.GracefulRestart = o.global.GracefulRestart.Enabled && slices.ContainsFunc(st.GetState().GetRemoteCap(), func(c *api.Capability) bool {
				return c.GetGracefulRestart() != nil
			})
			// gobgp says restarting of a peer that listed no family too, and keeps
			// none of its routes.
			n.Restarting = st.GetGracefulRestart().GetPeerRestarting() && listed
		}
		if ps.Role == Node {
			n.Received, n.Accepted, n.Rejected = len(ps.rib), ps.accepted, len(ps.rib)-ps.accepted
			n.Stale = ps.stale
		}
		n.Unprotected = ps.BFD.Enabled() && n.State == "established" && n.BFD != "up"
		out = append(out, n)
	}
	slices.SortFunc(out, func(a, b neighbor) int { return cmp.Compare(a.Name, b.Name) })
	return out
}

// publish hands changes to routes, and neighbors, to RouteList and Neighbors.
func (o *owner) publish(changes []route.Route, neighbors []neighbor) {
	s := o.s
	s.mu.Lock()
	changed := len(changes) > 0 || !slices.Equal(s.neighbors, neighbors)
	s.pending = append(s.pending, changes...)
	s.neighbors = neighbors
	s.mu.Unlock()
	if changed && s.onChange != nil {
		s.onChange()
	}
}
