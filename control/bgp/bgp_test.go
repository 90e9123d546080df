package bgp

import (
	"context"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
)

// TestSpeakerWithoutPeers runs gobgp in the test process, with no peers and no listener,
// so that it sends nothing and needs no root: Set starts, changes, restarts and stops it.
func TestSpeakerWithoutPeers(t *testing.T) {
	sp := New(slog.New(slog.NewTextHandler(t.Output(), nil)), nil)
	ctx, cancel := context.WithCancel(t.Context())
	ran := make(chan error, 1)
	go func() { ran <- sp.Run(ctx) }()

	bad := Config{Global: Global{ASN: 65000}}
	if err := sp.Set(ctx, bad); err == nil || !strings.Contains(err.Error(), "router-id") {
		t.Errorf("Set(%+v) = %v, want the router-id refused", bad, err)
	}
	if err := sp.Set(ctx, Config{}); err != nil {
		t.Errorf("Set with BGP off: %v", err)
	}
	cfg := Config{
		Global:         Global{ASN: 65000, RouterID: netip.MustParseAddr("10.0.0.1"), ListenPort: -1},
		Advertisements: []Advertisement{{netip.MustParsePrefix("192.0.2.0/24")}, {netip.MustParsePrefix("2001:db8::/64")}},
	}
	for _, step := range []string{"start", "again", "withdraw one", "restart", "off"} {
		switch step {
		case "withdraw one":
			cfg.Advertisements = cfg.Advertisements[1:]
		case "restart":
			cfg.Global.RouterID = netip.MustParseAddr("10.0.0.2")
		case "off":
			cfg = Config{}
		}
		if err := sp.Set(ctx, cfg); err != nil {
			t.Errorf("%s: Set: %v", step, err)
		}
		if r, n := sp.Routes(), sp.Neighbors(); len(r) != 0 || len(n) != 0 {
			t.Errorf("%s: routes %v, neighbors %v; want none", step, r, n)
		}
	}
	cancel()
	if err := <-ran; err != nil {
		t.Errorf("Run: %v", err)
	}
	if err := sp.Set(t.Context(), cfg); err == nil || !strings.Contains(err.Error(), "not running") {
		t.Errorf("Set after Run returned: %v, want an error", err)
	}
}
