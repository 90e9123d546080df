package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"
)

// ingestResult is one router's ingestion run.
type ingestResult struct {
	router string
	// in is from enabling the feeder's session to the last prefix in the
	// FIB; out from disabling it to the last prefix gone.
	in, out time.Duration
	// rssBefore is the router's resident memory before the session, rss
	// and peak after every prefix is in (VmRSS, VmHWM).
	rssBefore, rss, peak int64
	err                  error
}

var bulkRange = netip.MustParsePrefix("100.64.0.0/10")

// inLab runs f in a fresh lab and deletes the lab after.
func inLab(ctx context.Context, f func(*lab) error) error {
	l, err := upLab(ctx)
	if err != nil {
		return err
	}
	return errors.Join(f(l), l.down())
}

func ingest(ctx context.Context, log *slog.Logger, r router, n int) ingestResult {
	res := ingestResult{router: r.name()}
	res.err = inLab(ctx, func(l *lab) error { return res.measure(ctx, log, l, r, n) })
	return res
}

func (res *ingestResult) measure(ctx context.Context, log *slog.Logger, l *lab, r router, n int) error {
	feed, err := l.startBird(ctx, "feed", speakerConf(feedAddr, routerFeed, n, false, false, true))
	if err != nil {
		return err
	}
	if err := poll(ctx, 5*time.Minute, func() (bool, error) {
		c, err := feed.routes(ctx)
		return c == n, err
	}); err != nil {
		return fmt.Errorf("feeder loading %d routes: %w", n, err)
	}
	p, err := r.start(ctx, l, false)
	if err != nil {
		return err
	}
	f, err := watchFIB("/var/run/netns/"+l.Namespace("router"), bulkRange.Overlaps)
	if err != nil {
		return err
	}
	defer f.close()
	if res.rssBefore, _, err = memory(p.PID()); err != nil {
		return err
	}
	log.Info("enabling the feeder's session", "router", r.name())
	start := time.Now()
	if _, err := feed.birdc(ctx, "enable", "uplink"); err != nil {
		return err
	}
	end, err := f.wait(ctx, 15*time.Minute, func(h map[netip.Prefix]int) bool { return len(h) == n })
	if err != nil {
		return fmt.Errorf("%d prefixes in the FIB: %w", n, err)
	}
	res.in = end.Sub(start)
	if res.rss, res.peak, err = memory(p.PID()); err != nil {
		return err
	}
	log.Info("all in; disabling the feeder's session", "router", r.name(), "took", res.in)
	start = time.Now()
	if _, err := feed.birdc(ctx, "disable", "uplink"); err != nil {
		return err
	}
	end, err = f.wait(ctx, 15*time.Minute, func(h map[netip.Prefix]int) bool { return len(h) == 0 })
	if err != nil {
		return fmt.Errorf("prefixes gone from the FIB: %w", err)
	}
	res.out = end.Sub(start)
	return nil
}

// memory returns a process's VmRSS and VmHWM in bytes.
func memory(pid int) (rss, peak int64, err error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for line := range strings.Lines(string(data)) {
		k, v, _ := strings.Cut(line, ":")
		var into *int64
		switch k {
		case "VmRSS":
			into = &rss
		case "VmHWM":
			into = &peak
		default:
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("/proc/%d/status: %s: %w", pid, k, err)
		}
		*into = kb << 10
	}
	return rss, peak, nil
}

// failoverResult is one router's failover trials.
type failoverResult struct {
	router string
	// detect is, per trial, from the command that silences node2 starting to its next hop leaving
	// the kernel route; recover from node2 speaking again to its next hop
	// being back.
	detect, recover []time.Duration
	err             error
}

var vipPrefix = netip.MustParsePrefix(vip)

// silence drops every packet to and from node2's link in its namespace:
// BGP and BFD alike, as if the node had hung.
const silence = `table inet silence {
	chain in { type filter hook input priority -300; policy accept; iifname "eth0" drop; }
	chain out { type filter hook output priority -300; policy accept; oifname "eth0" drop; }
}
`

func failover(ctx context.Context, log *slog.Logger, r router, trials int) failoverResult {
	res := failoverResult{router: r.name()}
	res.err = inLab(ctx, func(l *lab) error { return res.measure(ctx, log, l, r, trials) })
	return res
}

func (res *failoverResult) measure(ctx context.Context, log *slog.Logger, l *lab, r router, trials int) error {
	if _, err := l.startBird(ctx, "feed", speakerConf(feedAddr, routerFeed, 0, true, true, false)); err != nil {
		return err
	}
	node2, err := l.startBird(ctx, "node2", speakerConf(node2Addr, routerNode2, 0, true, true, false))
	if err != nil {
		return err
	}
	if _, err := r.start(ctx, l, true); err != nil {
		return err
	}
	f, err := watchFIB("/var/run/netns/"+l.Namespace("router"), func(p netip.Prefix) bool { return p == vipPrefix })
	if err != nil {
		return err
	}
	defer f.close()
	hops := func(n int) func(map[netip.Prefix]int) bool {
		return func(h map[netip.Prefix]int) bool { return h[vipPrefix] == n }
	}
	rules := l.dir + "/silence.nft"
	if err := os.WriteFile(rules, []byte(silence), 0o644); err != nil {
		return err
	}
	for i := range trials {
		// A trial starts with both next hops in and node2's BFD session up,
		// so that it measures BFD rather than the hold timer.
		if _, err := f.wait(ctx, 2*time.Minute, hops(2)); err != nil {
			return fmt.Errorf("trial %d: two next hops: %w", i+1, err)
		}
		if err := poll(ctx, time.Minute, func() (bool, error) { return node2.bfdUp(ctx, routerNode2) }); err != nil {
			return fmt.Errorf("trial %d: node2's BFD session up: %w", i+1, err)
		}
		// step runs argv on node2 and returns how long until the VIP has n
		// next hops, counted from just before the command.
		step := func(what string, n int, argv ...string) (time.Duration, error) {
			start := time.Now()
			if _, err := l.Exec(ctx, "node2", argv...); err != nil {
				return 0, err
			}
			at, err := f.wait(ctx, 2*time.Minute, hops(n))
			if err != nil {
				return 0, fmt.Errorf("trial %d: %s: %w", i+1, what, err)
			}
			return at.Sub(start), nil
		}
		detect, err := step("node2's next hop leaving", 1, "nft", "-f", rules)
		if err != nil {
			return err
		}
		res.detect = append(res.detect, detect)
		back, err := step("node2's next hop back", 2, "nft", "delete", "table", "inet", "silence")
		if err != nil {
			return err
		}
		res.recover = append(res.recover, back)
		log.Info("failover trial", "router", r.name(), "trial", i+1, "detect", res.detect[i], "recover", res.recover[i])
	}
	return nil
}
