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
)

// owner is the state of Run's goroutine: the gobgp server and what the Speaker knows of
// its peers. Only that goroutine touches it.
type owner struct {
	s      *Speaker
	log    *slog.Logger
	events chan event // from gobgp's watcher to Run

	srv       *server.BgpServer // nil while BGP is off
	stopWatch context.CancelFunc
	global    Global                  // that srv runs with
	policy    *api.SetPoliciesRequest // in srv
	peers     map[string]*peerState   // in srv, by name
	addrs     map[netip.Addr]*peerState
	advs      map[netip.Prefix]bool // announced in srv
}

// peerState is what the owner knows of one peer in gobgp.
type peerState struct {
	Peer
	up        bool // established, as gobgp last said
	lastError string
	shutdown  bool // the max-prefixes shutdown has been logged
	// From the last read of a node's Adj-RIB-In:
	received int
	accepted []candidate
	refused  map[netip.Prefix]bool // refused and logged, each once while Accept stays
}

// event is a change that gobgp reports about the peer at addr: its new session state, or
// if state is nil, routes that it sent.
type event struct {
	addr  netip.Addr
	state *apiutil.PeerState
}

func newOwner(s *Speaker) *owner {
	return &owner{
		s:      s,
		log:    s.log,
		events: make(chan event, 256),
		peers:  map[string]*peerState{},
		addrs:  map[netip.Addr]*peerState{},
		advs:   map[netip.Prefix]bool{},
	}
}

// set makes gobgp match c, which is valid, and publishes the result.
func (o *owner) set(ctx context.Context, c Config) error {
	err := o.reconcile(ctx, c)
	o.refresh(ctx, nil)
	return err
}

func (o *owner) reconcile(ctx context.Context, c Config) error {
	if !c.Global.equal(o.global) {
		o.stopServer()
		if c.Global.ASN == 0 {
			return nil
		}
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
		delete(o.peers, peer.Name)
		delete(o.addrs, peer.Address)
		o.log.Info("peer removed", "peer", peer.Name)
	}
	for _, peer := range p.add {
		if o.peers[peer.Name] != nil {
			continue // its old self could not be removed, as reported above
		}
		if err := o.srv.AddPeer(ctx, &api.AddPeerRequest{Peer: apiPeer(peer)}); err != nil {
			errs = append(errs, fmt.Errorf("bgp: add peer %q: %w", peer.Name, err))
			continue
		}
		ps := &peerState{Peer: peer, refused: map[netip.Prefix]bool{}}
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
		} else {
			ps.refused = map[netip.Prefix]bool{} // log what the new accept list refuses
		}
		ps.Peer = peer
	}
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

// startServer starts gobgp with g, its policy and a watcher that feeds o.events.
func (o *owner) startServer(ctx context.Context, g Global) error {
	srv := server.NewBgpServer(server.LoggerOption(o.log, nil))
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
		OnPathUpdate: func(paths []*apiutil.Path, _ time.Time) {
			if len(paths) > 0 {
				send(event{addr: paths[0].PeerAddress})
			}
		},
	}
	if err := srv.WatchEvent(watchCtx, callbacks, server.WatchPeer(), server.WatchUpdate(false, "", "")); err != nil {
		return fail(err)
	}
	o.srv, o.stopWatch, o.global, o.policy = srv, stopWatch, g, pol
	o.log.Info("started", "asn", g.ASN, "router-id", g.RouterID)
	return nil
}

// stopServer stops gobgp, if it runs, which closes every session with a Cease
// notification, and forgets all it held.
func (o *owner) stopServer() {
	if o.srv == nil {
		return
	}
	o.stopWatch()
	o.srv.Stop()
	o.log.Info("stopped", "asn", o.global.ASN, "router-id", o.global.RouterID)
	o.srv, o.stopWatch, o.global, o.policy = nil, nil, Global{}, nil
	clear(o.peers)
	clear(o.addrs)
	clear(o.advs)
}

// handle takes ev and every other event already queued, then publishes the result.
func (o *owner) handle(ctx context.Context, ev event) {
	dirty := map[netip.Addr]bool{}
	for more := true; more; {
		o.note(ev)
		dirty[ev.addr] = true
		select {
		case ev = <-o.events:
		default:
			more = false
		}
	}
	o.refresh(ctx, dirty)
}

// note logs a session that comes up or goes down, and keeps why it went down.
func (o *owner) note(ev event) {
	ps := o.addrs[ev.addr]
	if ev.state == nil || ps == nil {
		return
	}
	up := ev.state.SessionState == bgp.BGP_FSM_ESTABLISHED
	if !up && isFailure(ev.state.DisconnectReason) {
		ps.lastError = ev.state.DisconnectMessage
	}
	switch {
	case up && !ps.up:
		o.log.Info("session established", "peer", ps.Name)
	case !up && ps.up:
		o.log.Warn("session down", "peer", ps.Name, "reason", ev.state.DisconnectMessage)
	}
	ps.up = up
}

// refresh reads from gobgp the state of every peer and the routes of the nodes in dirty
// (of every node if dirty is nil), then publishes Routes and Neighbors.
func (o *owner) refresh(ctx context.Context, dirty map[netip.Addr]bool) {
	if o.srv == nil {
		o.publish(nil, nil)
		return
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
	var cands []candidate
	for _, ps := range o.peers {
		if ps.Role == Node {
			if dirty == nil || dirty[ps.Address] {
				o.read(ps)
			}
			cands = append(cands, ps.accepted...)
		}
		if states[ps.Address].GetState().GetAdminState() == api.PeerState_ADMIN_STATE_PFX_CT && !ps.shutdown {
			ps.shutdown = true
			ps.lastError = fmt.Sprintf("sent more than max-prefixes %d", ps.MaxPrefixes)
			o.log.Error("session shut down: the peer sent more prefixes than max-prefixes allows; it stays down until the peer is configured again",
				"peer", ps.Name, "max-prefixes", ps.MaxPrefixes)
		}
	}
	o.publish(learn(cands), o.neighbors(states))
}

// read reads a node's Adj-RIB-In, keeps what its accept list allows and logs, once per
// prefix, what it refuses.
func (o *owner) read(ps *peerState) {
	ibgp := ps.ASN == o.global.ASN
	received := 0
	var accepted []candidate
	req := apiutil.ListPathRequest{TableType: api.TableType_TABLE_TYPE_ADJ_IN, Name: ps.Address.String(), Family: family(ps.Address)}
	err := o.srv.ListPath(req, func(_ bgp.NLRI, paths []*apiutil.Path) {
		for _, p := range paths {
			c, ok := candidateOf(p, ibgp)
			if !ok {
				continue
			}
			received++
			why := refusal(ps.Accept, c.prefix, c.nextHop)
			if why == "" {
				accepted = append(accepted, c)
				continue
			}
			if !ps.refused[c.prefix] {
				ps.refused[c.prefix] = true
				o.log.Warn("route refused", "peer", ps.Name, "prefix", c.prefix, "next-hop", c.nextHop, "reason", why)
			}
		}
	})
	if err != nil {
		o.log.Error("read routes", "peer", ps.Name, "err", err)
		return
	}
	ps.received, ps.accepted = received, accepted
}

// neighbors returns the state of every peer, given what gobgp lists.
func (o *owner) neighbors(states map[netip.Addr]*api.Peer) []neighbor {
	out := make([]neighbor, 0, len(o.peers))
	for _, ps := range o.peers {
		n := neighbor{NeighborState: NeighborState{
			Name: ps.Name, Address: ps.Address, ASN: ps.ASN, Role: ps.Role,
			State: "idle", LastError: ps.lastError,
		}}
		if st := states[ps.Address]; st != nil {
			n.State = sessionState(st.GetState().GetSessionState())
			if n.State == "established" {
				n.since = st.GetTimers().GetState().GetUptime().AsTime()
			}
			for _, af := range st.GetAfiSafis() {
				n.Advertised += int(af.GetState().GetAdvertised())
				n.Received += int(af.GetState().GetReceived())
			}
		}
		if ps.Role == Node {
			n.Received, n.Accepted, n.Rejected = ps.received, len(ps.accepted), ps.received-len(ps.accepted)
		}
		out = append(out, n)
	}
	slices.SortFunc(out, func(a, b neighbor) int { return cmp.Compare(a.Name, b.Name) })
	return out
}

// publish makes routes and neighbors what Routes and Neighbors return, and calls
// onChange if that changes anything.
func (o *owner) publish(routes []Learned, neighbors []neighbor) {
	s := o.s
	s.mu.Lock()
	changed := !slices.EqualFunc(s.routes, routes, func(a, b Learned) bool {
		return a.Prefix == b.Prefix && slices.Equal(a.NextHops, b.NextHops)
	}) || !slices.Equal(s.neighbors, neighbors)
	if changed {
		s.routes, s.neighbors = routes, neighbors
	}
	s.mu.Unlock()
	if changed && s.onChange != nil {
		s.onChange()
	}
}
