package bgp

import (
	"net/netip"
	"testing"
	"time"
)

func TestAPIPeer(t *testing.T) {
	p := Peer{Name: "node1", Address: netip.MustParseAddr("10.0.1.2"), ASN: 64512, Role: Node,
		BFD: BFD{Interval: 300 * time.Millisecond, Multiplier: 3}}
	g := Global{ASN: 65000, RouterID: netip.MustParseAddr("10.0.0.1")}

	if a := apiPeer(p, g, false, true); a.Bfd != nil || a.GracefulRestart != nil || a.AfiSafis[0].MpGracefulRestart != nil {
		t.Errorf("without bfd and graceful restart: %v", a)
	}
	a := apiPeer(p, g, true, false)
	if b := a.GetBfd(); !b.GetEnabled() || b.GetDesiredMinimumTxInterval() != 300000 || b.GetRequiredMinimumReceive() != 300000 || b.GetDetectionMultiplier() != 3 {
		t.Errorf("BFD: %v, want enabled, 300000 µs both ways, multiplier 3", b)
	}
	if a := apiPeer(Peer{Name: "up", Address: p.Address, ASN: 65100, Role: Upstream}, g, true, false); a.Bfd != nil {
		t.Errorf("BFD of a peer without BFD: %v", a.Bfd)
	}

	g.GracefulRestart = GracefulRestart{Enabled: true, RestartTime: 120 * time.Second}
	for _, restarting := range []bool{false, true} {
		a := apiPeer(p, g, false, restarting)
		gr := a.GetGracefulRestart()
		if !gr.GetEnabled() || gr.GetRestartTime() != 120 || gr.GetDeferralTime() != 1 || gr.GetLocalRestarting() != restarting || gr.GetHelperOnly() {
			t.Errorf("graceful restart (restarting %v): %v", restarting, gr)
		}
		if !a.AfiSafis[0].GetMpGracefulRestart().GetConfig().GetEnabled() {
			t.Errorf("graceful restart not on for the session's family: %v", a.AfiSafis[0])
		}
	}
}
