package bgp

import (
	"context"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/osrg/gobgp/v4/api"
)

// How the Speaker runs gobgp's BFD.
//
// gobgp v4.8.0 runs a peer's BFD session from AddPeer to DeletePeer, whatever its BGP
// session does, and when BFD goes down it asks for a hard reset of the BGP session
// (ResetPeer). A reset asked for while the session is down is not dropped: gobgp queues
// the Cease notification, and the next session sends it the moment it is established
// and dies with it (gobgp#3561). With BIRD this never ends: BIRD gives each new BGP
// session a new BFD session, with a new discriminator, which gobgp's BFD session, still
// bound to the old one, takes as invalid; it expires while BGP is down, queues a reset,
// and that reset kills the next session, and so on.
//
// So the Speaker gives gobgp a peer's BFD configuration only while the peer's BGP
// session is established (gate): when the session comes up, an UpdatePeer adds it,
// which starts a fresh BFD session; when the session goes down, another removes it,
// which stops BFD before it can expire. Neither touches the BGP session. What is left
// is a reset that BFD asks for in the moment between the session going down and the
// Speaker removing BFD. gobgp logs every reset it is asked for, and nothing but BFD
// asks for one, so the Speaker reads those records (resetSpy): a reset asked for that
// no session went down with is queued, and the Speaker deletes and adds the peer
// again, which drops the queue with gobgp's old session state.

const (
	// bfdPoll is how often the Speaker reads the state of BFD sessions; gobgp reports
	// no BFD events.
	bfdPoll = 50 * time.Millisecond
	// bfdGrace is how long an established session may wait for BFD to come up before
	// a warning says that it is unprotected. gobgp waits 1 s before its first packet.
	bfdGrace = 5 * time.Second
)

// Records of gobgp's that the Speaker reads: server.go logs every ResetPeer this way.
const (
	gobgpNotificationMsg = "Send operation notification"
	gobgpResetOp         = "Neighbor reset"
	gobgpStopFailedMsg   = "failed to stop BGP server"
)

// resetSpy is the slog.Handler that gobgp logs to. It passes every record on to the
// Speaker's handler and counts, per peer, the hard resets that gobgp is asked for.
type resetSpy struct {
	next  slog.Handler
	state *spyState
}

type spyState struct {
	wake chan struct{} // one token: resets were asked for since the last take
	mu   sync.Mutex
	asks map[netip.Addr]int
	// quiet drops gobgp's complaint that it was stopped twice: a graceful stop calls
	// StopBgp itself, then Stop, which calls StopBgp again.
	quiet bool
}

func newResetSpy(next slog.Handler) resetSpy {
	return resetSpy{next: next, state: &spyState{wake: make(chan struct{}, 1), asks: map[netip.Addr]int{}}}
}

// Enabled is true at Info, whatever the Speaker's level, so that the records of
// resets reach Handle.
func (h resetSpy) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelInfo || h.next.Enabled(ctx, l)
}

func (h resetSpy) Handle(ctx context.Context, r slog.Record) error {
	switch r.Message {
	case gobgpNotificationMsg:
		var op, key string
		r.Attrs(func(a slog.Attr) bool {
			switch a.Key {
			case "Op":
				op = a.Value.String()
			case "Key":
				key = a.Value.String()
			}
			return true
		})
		if addr, err := netip.ParseAddr(key); err == nil && op == gobgpResetOp {
			h.state.ask(addr)
		}
	case gobgpStopFailedMsg:
		h.state.mu.Lock()
		quiet := h.state.quiet
		h.state.mu.Unlock()
		if quiet {
			return nil
		}
	}
	if !h.next.Enabled(ctx, r.Level) {
		return nil
	}
	return h.next.Handle(ctx, r)
}

func (h resetSpy) WithAttrs(attrs []slog.Attr) slog.Handler {
	return resetSpy{next: h.next.WithAttrs(attrs), state: h.state}
}

func (h resetSpy) WithGroup(name string) slog.Handler {
	return resetSpy{next: h.next.WithGroup(name), state: h.state}
}

func (s *spyState) ask(addr netip.Addr) {
	s.mu.Lock()
	s.asks[addr]++
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// take returns the resets asked for since the last take, by peer address.
func (s *spyState) take() map[netip.Addr]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	asks := s.asks
	s.asks = map[netip.Addr]int{}
	return asks
}

func (s *spyState) setQuiet(q bool) {
	s.mu.Lock()
	s.quiet = q
	s.mu.Unlock()
}

// isBFDReset reports whether a session that went down for r with message msg went down
// because the Speaker's gobgp sent the Cease of a hard reset, which only BFD asks for.
func isBFDReset(r api.PeerState_DisconnectReason, msg string) bool {
	return r == api.PeerState_DISCONNECT_REASON_NOTIFICATION_SENT && strings.Contains(msg, "administrative reset")
}

// gate gives gobgp each peer's BFD configuration while, and only while, its session is
// established and the peer has not set BFD AdminDown, and re-creates each peer for
// which a reset is queued.
func (o *owner) gate(ctx context.Context) {
	for _, ps := range o.sorted() {
		if ps.resetsPending > 0 && !ps.up {
			o.recreate(ctx, ps)
			continue
		}
		want := ps.BFD.Enabled() && ps.up && !ps.adminDown
		if want == ps.bfdOn {
			continue
		}
		req := &api.UpdatePeerRequest{Peer: apiPeer(ps.Peer, o.global, want, ps.addedRestarting)}
		if _, err := o.srv.UpdatePeer(ctx, req); err != nil {
			o.log.Error("BFD: update peer", "peer", ps.Name, "bfd", want, "err", err)
			continue
		}
		ps.bfdOn, ps.bfd = want, "down"
	}
}

// recreate deletes and adds again ps's peer in gobgp, whose session is down, so that
// the reset queued for it is dropped instead of killing its next session.
func (o *owner) recreate(ctx context.Context, ps *peerState) {
	o.log.Warn("BFD asked for a reset while the session was down; re-creating the peer so that the reset does not kill its next session (gobgp#3561)",
		"peer", ps.Name)
	if err := o.srv.DeletePeer(ctx, &api.DeletePeerRequest{Address: ps.Address.String()}); err != nil {
		o.log.Error("re-create peer: delete", "peer", ps.Name, "err", err)
		return
	}
	ps.resetsPending, ps.bfdOn, ps.bfd, ps.addedRestarting = 0, false, "down", false
	if err := o.srv.AddPeer(ctx, &api.AddPeerRequest{Peer: apiPeer(ps.Peer, o.global, false, false)}); err != nil {
		// The peer is gone from gobgp: the next Set adds it again.
		o.log.Error("re-create peer: add", "peer", ps.Name, "err", err)
		o.dropAll(ps)
		delete(o.peers, ps.Name)
		delete(o.addrs, ps.Address)
	}
}

// poll reads the state of every BFD session, warns about established sessions that BFD
// does not protect, and publishes what changed.
func (o *owner) poll(ctx context.Context) {
	if o.srv == nil || !o.hasBFD() {
		return
	}
	states := map[netip.Addr]string{}
	o.srv.ListBfdPeer(ctx, func(addr string, st *api.BfdPeerState) {
		if a, err := netip.ParseAddr(addr); err == nil {
			states[a] = bfdStateName(st.GetSessionState())
		}
	})
	changed := o.guardPoll(ctx)
	now := time.Now()
	for _, ps := range o.sorted() {
		if !ps.BFD.Enabled() {
			continue
		}
		if st, ok := states[ps.Address]; ok && ps.bfdOn && st != ps.bfd {
			ps.bfd = st
			changed = true
		}
		o.warnUnprotected(ps, now)
	}
	if changed {
		o.refresh(ctx, true)
	}
}

// warnUnprotected logs, once each time, that an established session with BFD is not
// protected by it: at once when the peer set BFD AdminDown, or after bfdGrace; and logs
// when it is protected again.
func (o *owner) warnUnprotected(ps *peerState, now time.Time) {
	switch {
	case !ps.up:
		ps.unprotectedSince, ps.warned = time.Time{}, false
		return
	case ps.bfdName() == "up":
		if ps.warned {
			o.log.Info("session protected by BFD again", "peer", ps.Name)
		}
		ps.unprotectedSince, ps.warned = time.Time{}, false
		return
	case ps.unprotectedSince.IsZero():
		ps.unprotectedSince = now
	}
	if ps.warned || (!ps.adminDown && now.Sub(ps.unprotectedSince) < bfdGrace) {
		return
	}
	ps.warned = true
	if ps.adminDown {
		o.log.Warn("the peer set its BFD session AdminDown: the session stays up, unprotected by BFD; failures are found by the hold timer only",
			"peer", ps.Name)
		return
	}
	o.log.Warn("session established but BFD is not up: failures are found by the hold timer only",
		"peer", ps.Name, "bfd", ps.bfdName(), "for", now.Sub(ps.unprotectedSince).Truncate(time.Second))
}

func (o *owner) hasBFD() bool {
	for _, ps := range o.peers {
		if ps.BFD.Enabled() {
			return true
		}
	}
	return false
}

// bfdName is the peer's BFD state as NeighborState.BFD says it.
func (ps *peerState) bfdName() string {
	switch {
	case !ps.BFD.Enabled():
		return "disabled"
	case ps.adminDown:
		return "admin-down"
	case !ps.bfdOn:
		return "down"
	}
	return ps.bfd
}

func bfdStateName(s api.BfdSessionState) string {
	switch s {
	case api.BfdSessionState_BFD_SESSION_STATE_UP:
		return "up"
	case api.BfdSessionState_BFD_SESSION_STATE_INIT:
		return "init"
	case api.BfdSessionState_BFD_SESSION_STATE_ADMIN_DOWN:
		return "admin-down"
	}
	return "down"
}
