package health

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"testing/synctest"
	"time"
)

// TestProberTimeline drives one prober with scripted probe results on a fake
// clock and checks when it probes and when it reports transitions.
func TestProberTimeline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		check := Check{Type: "tcp", Interval: time.Second, Timeout: 300 * time.Millisecond, Rise: 2, Fall: 3}
		// o succeeds, x fails, h hangs until the probe times out; after the
		// script the prober is stopped in the middle of a probe.
		script := "oxxhoo"

		ctx, cancel := context.WithCancel(t.Context())
		start := time.Now()
		var first time.Time
		var log strings.Builder
		at := func() time.Duration { return time.Since(first) }
		n := 0
		p := &prober{
			target: Target{ID: "t", Addr: netip.MustParseAddrPort("192.0.2.1:80"), Check: check},
			probe: func(probeCtx context.Context) error {
				if n == 0 {
					first = time.Now()
				}
				defer func() { n++ }()
				if n == len(script) {
					fmt.Fprintf(&log, "%v stop\n", at())
					cancel()
					return errors.New("probe cut short")
				}
				fmt.Fprintf(&log, "%v probe %c\n", at(), script[n])
				switch script[n] {
				case 'x':
					return errors.New("refused")
				case 'h':
					<-probeCtx.Done()
					return probeCtx.Err()
				}
				return nil
			},
			report: func(e Event) { fmt.Fprintf(&log, "%v up=%v: %s\n", at(), e.Up, e.Reason) },
			done:   make(chan struct{}),
		}
		p.up.Store(true)
		go p.run(ctx)
		<-p.done

		if jitter := first.Sub(start); jitter < 0 || jitter >= check.Interval {
			t.Errorf("first probe after %v, want within [0, %v)", jitter, check.Interval)
		}
		want := `0s probe o
1s probe x
2s probe x
3s probe h
3.3s up=false: 3 consecutive failures: context deadline exceeded
4.3s probe o
5.3s probe o
5.3s up=true: 2 consecutive successes
6.3s stop
`
		if got := log.String(); got != want {
			t.Errorf("timeline:\n%s\nwant:\n%s", got, want)
		}
		if !p.up.Load() {
			t.Error("final state down, want up")
		}
	})
}

func TestReason(t *testing.T) {
	err := errors.New("refused")
	tests := []struct {
		name string
		up   bool
		c    Check
		want string
	}{
		{"up", true, Check{Rise: 2, Fall: 3}, "2 consecutive successes"},
		{"down", false, Check{Rise: 2, Fall: 3}, "3 consecutive failures: refused"},
		{"up after one", true, Check{Rise: 1, Fall: 1}, "1 consecutive success"},
		{"down after one", false, Check{Rise: 1, Fall: 1}, "1 consecutive failure: refused"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := reason(tt.up, tt.c, err); got != tt.want {
				t.Errorf("reason = %q, want %q", got, tt.want)
			}
		})
	}
}
