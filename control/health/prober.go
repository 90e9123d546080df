package health

import (
	"cmp"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"sync/atomic"
	"time"
)

// prober probes one target until its context is cancelled.
type prober struct {
	target Target
	probe  func(context.Context) error // one probe; run bounds it by Check.Timeout
	report func(Event)                 // called on every transition
	up     atomic.Bool                 // written only by run
	cancel context.CancelFunc
	done   chan struct{} // closed when run returns
}

func (p *prober) run(ctx context.Context) {
	defer close(p.done)
	c := p.target.Check
	state := hysteresis{up: p.up.Load(), rise: c.Rise, fall: c.Fall}

	// A random first delay spreads thousands of probers over the interval
	// rather than probing every backend in lockstep.
	timer := time.NewTimer(rand.N(c.Interval))
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		probeCtx, cancel := context.WithTimeout(ctx, c.Timeout)
		err := p.probe(probeCtx)
		cancel()
		if ctx.Err() != nil {
			return // stopped mid-probe: the result says nothing about the backend
		}
		if state.observe(err == nil) {
			p.up.Store(state.up)
			p.report(Event{ID: p.target.ID, Addr: p.target.Addr, Up: state.up, Reason: reason(state.up, c, err)})
		}
		timer.Reset(c.Interval)
	}
}

// reason explains a transition to the state up; err is the last probe's error.
func reason(up bool, c Check, err error) string {
	if up {
		return fmt.Sprintf("%d consecutive %s", c.Rise, plural(c.Rise, "success", "successes"))
	}
	return fmt.Sprintf("%d consecutive %s: %v", c.Fall, plural(c.Fall, "failure", "failures"), err)
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// probeFunc returns the probe for t's check type, which validate has checked.
func (m *Manager) probeFunc(t Target) func(context.Context) error {
	if t.Check.Type == "http" {
		url := "http://" + t.Addr.String() + cmp.Or(t.Check.Path, "/")
		return func(ctx context.Context) error { return m.probeHTTP(ctx, url) }
	}
	return func(ctx context.Context) error { return probeTCP(ctx, t.Addr.String()) }
}

func probeTCP(ctx context.Context, addr string) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err // already "dial tcp <addr>: ..."
	}
	return conn.Close()
}

func (m *Manager) probeHTTP(ctx context.Context, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("GET %s: %w", url, err)
	}
	req.Header.Set("User-Agent", "portico-health/1")
	resp, err := m.client.Do(req)
	if err != nil {
		return err // already `Get "<url>": ...`
	}
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 399 {
		return fmt.Errorf("GET %s: status %s", url, resp.Status)
	}
	return nil
}
