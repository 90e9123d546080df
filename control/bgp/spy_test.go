package bgp

import (
	"bytes"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/apiutil"
)

// syncBuffer is a bytes.Buffer that loggers on several goroutines write to.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestResetSpy(t *testing.T) {
	var out syncBuffer
	spy := newResetSpy(slog.NewTextHandler(&out, &slog.HandlerOptions{Level: slog.LevelWarn}))
	log := slog.New(spy)
	// As gobgp's server.go logs a ResetPeer, a ShutdownPeer and a failed second stop.
	log.Info(gobgpNotificationMsg, "Topic", "Operation", "Key", "10.0.1.2", "Op", gobgpResetOp)
	log.With("Topic", "Operation").Info(gobgpNotificationMsg, "Key", "fd00:1::2", "Op", gobgpResetOp)
	log.Info(gobgpNotificationMsg, "Topic", "Operation", "Key", "10.0.1.2", "Op", "Neighbor shutdown")
	log.Warn("Expired", "Topic", "bfd", "Peer", "10.0.1.2")

	select {
	case <-spy.state.wake:
	default:
		t.Error("no wake-up after a reset")
	}
	want := map[netip.Addr]int{netip.MustParseAddr("10.0.1.2"): 1, netip.MustParseAddr("fd00:1::2"): 1}
	if got := spy.state.take(); len(got) != len(want) || got[netip.MustParseAddr("10.0.1.2")] != 1 || got[netip.MustParseAddr("fd00:1::2")] != 1 {
		t.Errorf("resets: %v, want %v", got, want)
	}
	if got := spy.state.take(); len(got) != 0 {
		t.Errorf("resets after take: %v, want none", got)
	}
	if s := out.String(); strings.Contains(s, gobgpNotificationMsg) || !strings.Contains(s, "msg=Expired") {
		t.Errorf("the Speaker's handler got:\n%s\nwant the warning only, as its level says", s)
	}

	log.Error(gobgpStopFailedMsg, "Error", "server stopped")
	spy.state.setQuiet(true)
	log.Error(gobgpStopFailedMsg, "Error", "server stopped")
	spy.state.setQuiet(false)
	if n := strings.Count(out.String(), gobgpStopFailedMsg); n != 1 {
		t.Errorf("the failed second stop is logged %d times, want once (only when not quiet):\n%s", n, out.String())
	}
}

// TestQueuedResetRecreatesPeer asks gobgp for a hard reset of a peer whose session is
// down, as BFD does when it expires then: gobgp queues it, and the owner deletes and
// adds the peer again, which drops it. gobgp runs in the test process, without a
// listener; the peer is on loopback, where nothing answers.
func TestQueuedResetRecreatesPeer(t *testing.T) {
	var out syncBuffer
	sp := New(slog.New(slog.NewTextHandler(&out, nil)), nil)
	o := newOwner(sp)
	ctx := t.Context()
	peer := Peer{Name: "lo", Address: netip.MustParseAddr("127.0.0.2"), ASN: 64512, Role: Node}
	cfg := Config{Global: Global{ASN: 65000, RouterID: netip.MustParseAddr("10.0.0.1"), ListenPort: -1}, Peers: []Peer{peer}}
	if err := o.set(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	defer o.stopServer(false)

	if err := o.srv.ResetPeer(ctx, &api.ResetPeerRequest{Address: peer.Address.String(), Communication: "BFD is down"}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-o.spy.state.wake:
	case <-time.After(waitTimeout):
		t.Fatal("the spy did not see the reset")
	}
	o.handle(ctx, event{})
	logs := out.String()
	for _, want := range []string{"re-creating the peer", "Delete a peer configuration", "Add a peer configuration"} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %q:\n%s", want, logs)
		}
	}
	ps := o.peers["lo"]
	if ps == nil || ps.resetsPending != 0 {
		t.Fatalf("peer after the re-creation: %+v, want it there with no reset pending", ps)
	}
	if n := sp.Neighbors(); len(n) != 1 || n[0].Name != "lo" {
		t.Errorf("neighbors: %+v, want lo", n)
	}

	// A session that goes down with the reset it was sent counts it: nothing to do.
	ps.up, ps.resetsPending = true, 1
	o.noteState(ps, &apiutil.PeerState{
		DisconnectReason:  api.PeerState_DISCONNECT_REASON_NOTIFICATION_SENT,
		DisconnectMessage: "notification-sent code 6(cease) subcode 4(administrative reset)",
	})
	if ps.resetsPending != 0 || ps.up || !strings.Contains(ps.lastError, "BFD") {
		t.Errorf("after the session went down with the reset: %+v, want no reset pending and BFD as the reason", ps)
	}
}
