package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"portico.dev/appliance/test/topo"
)

// router is a router under test, run in the lab's router namespace.
type router interface {
	// name names the router in the report.
	name() string
	// start starts the router peering with the feeder and, if withNode2,
	// with node2 too, BFD on every session, installing what it accepts
	// (100.64.0.0/10 and 203.0.113.0/24 and longer) in the kernel's main
	// table; it returns once the router listens for BGP. The lab stops it.
	start(ctx context.Context, l *lab, withNode2 bool) (*topo.Proc, error)
}

// appliance is the daemon, cmd/appliance, built into bin.
type appliance struct{ bin string }

func (appliance) name() string { return "appliance" }

func (a appliance) start(ctx context.Context, l *lab, withNode2 bool) (*topo.Proc, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "name: bgpbench\nstore: %s\nlog: {level: warn}\nmanagement: {gnmi: {socket: %s}}\n",
		filepath.Join(l.dir, "state.db"), filepath.Join(l.dir, "gnmi.sock"))
	fmt.Fprintf(&b, "bgp:\n  asn: %d\n  router-id: %s\n  peers:\n", routerASN, routerFeed)
	peer := func(name, addr string) {
		fmt.Fprintf(&b, "    - {name: %s, address: %s, asn: %d, role: node, hold-time: %ds, keepalive: %ds,\n", name, addr, nodeASN, holdTime, keepaliveTime)
		fmt.Fprintf(&b, "       accept: [100.64.0.0/10, 203.0.113.0/24], bfd: {enabled: true, interval: %s, multiplier: %d}}\n", bfdInterval, bfdMultiplier)
	}
	peer("feed", feedAddr)
	if withNode2 {
		peer("node2", node2Addr)
	}
	conf := filepath.Join(l.dir, "appliance.yaml")
	if err := os.WriteFile(conf, []byte(b.String()), 0o644); err != nil {
		return nil, err
	}
	p, err := l.Start(ctx, "router", filepath.Join(a.bin, "appliance"), "run", "--config", conf)
	if err != nil {
		return nil, err
	}
	return p, listening(ctx, l, p)
}

// birdRouter is BIRD 2 acting as the same router: BGP sessions with the
// same settings, and its kernel protocol exporting the best routes, equal
// paths merged into one multipath route.
type birdRouter struct{}

func (birdRouter) name() string { return "BIRD" }

func (birdRouter) start(ctx context.Context, l *lab, withNode2 bool) (*topo.Proc, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "router id %s;\nlog stderr { warning, error, fatal };\nprotocol device {}\n", routerFeed)
	b.WriteString("protocol kernel { ipv4 { import none; export all; }; merge paths on; }\n")
	fmt.Fprintf(&b, "protocol bfd { interface \"eth*\" { min rx interval %d ms; min tx interval %d ms; multiplier %d; }; }\n",
		bfdInterval.Milliseconds(), bfdInterval.Milliseconds(), bfdMultiplier)
	fmt.Fprintf(&b, "template bgp node {\n  local as %d;\n%s  ipv4 { import where net ~ [100.64.0.0/10+, 203.0.113.0/24+]; export none; };\n}\n", routerASN, timers(true))
	fmt.Fprintf(&b, "protocol bgp feed from node { neighbor %s as %d; }\n", feedAddr, nodeASN)
	if withNode2 {
		fmt.Fprintf(&b, "protocol bgp node2 from node { neighbor %s as %d; }\n", node2Addr, nodeASN)
	}
	r, err := l.startBird(ctx, "router", b.String())
	if err != nil {
		return nil, err
	}
	return r.proc, listening(ctx, l, r.proc)
}

// listening waits until something in the router namespace listens on the
// BGP port, or p exits.
func listening(ctx context.Context, l *lab, p *topo.Proc) error {
	return poll(ctx, time.Minute, func() (bool, error) {
		select {
		case <-p.Done():
			return false, fmt.Errorf("router exited: %v: %s", p.Wait(), p.Output())
		default:
		}
		out, err := l.Exec(ctx, "router", "ss", "-Hltn", "sport = :179")
		return err == nil && len(strings.TrimSpace(string(out))) > 0, nil
	})
}
