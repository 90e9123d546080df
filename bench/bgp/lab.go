package main

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"portico.dev/appliance/test/topo"
)

//go:embed lab.clab.yml
var labFile []byte

// The lab's addresses (lab.clab.yml) and what is announced.
const (
	routerFeed  = "10.0.1.1" // the router's address toward the feeder, and its router id
	feedAddr    = "10.0.1.2"
	routerNode2 = "10.0.2.1"
	node2Addr   = "10.0.2.2"
	vip         = "203.0.113.10/32"
	routerASN   = 65000
	nodeASN     = 65001 // the feeder's and node2's, as MetalLB nodes share one
	// maxPrefixes is how many /27 prefixes 100.64.0.0/10 holds.
	maxPrefixes = 1 << 17
)

var bulkBase = netip.MustParseAddr("100.64.0.0")

// Session settings every speaker in the lab uses, so that the routers are
// compared on equal terms: BGP timers, BFD at 100 ms × 3 (300 ms to
// detect), and reconnects within seconds instead of BIRD's default minute
// of error wait.
const (
	holdTime      = 9
	keepaliveTime = 3
	bfdInterval   = 100 * time.Millisecond
	bfdMultiplier = 3
)

// bulk returns the i-th prefix the feeder announces: /27s of 100.64.0.0/10.
func bulk(i int) netip.Prefix {
	b := bulkBase.As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v += uint32(i) << 5
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), 27)
}

// build compiles the appliance into a temporary directory and returns it.
func build(ctx context.Context) (string, error) {
	dir, err := os.MkdirTemp("", "bgpbench-bin-")
	if err != nil {
		return "", err
	}
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", filepath.Join(dir, "appliance"), "portico.dev/appliance/cmd/appliance").CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return "", fmt.Errorf("build cmd/appliance: %w: %s", err, out)
	}
	return dir, nil
}

// lab is one run's namespaces and a directory for configurations and sockets.
type lab struct {
	*topo.Lab
	dir string
}

// upLab brings up a fresh lab; down deletes it and everything in it.
func upLab(ctx context.Context) (*lab, error) {
	t, err := topo.Parse(labFile)
	if err != nil {
		return nil, fmt.Errorf("lab topology: %w", err)
	}
	dir, err := os.MkdirTemp("", "bgpbench-")
	if err != nil {
		return nil, err
	}
	l, err := topo.Up(ctx, t, topo.Options{Prefix: fmt.Sprintf("bgpbench%d-", os.Getpid())})
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return &lab{Lab: l, dir: dir}, nil
}

func (l *lab) down() error {
	return errors.Join(l.Down(), os.RemoveAll(l.dir))
}

// bird is a BIRD daemon on a node of the lab.
type bird struct {
	l    *lab
	node string
	sock string
	proc *topo.Proc
}

// startBird starts BIRD on node with conf and waits until birdc answers.
func (l *lab) startBird(ctx context.Context, node, conf string) (*bird, error) {
	dir := filepath.Join(l.dir, node)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	file := filepath.Join(dir, "bird.conf")
	if err := os.WriteFile(file, []byte(conf), 0o644); err != nil {
		return nil, err
	}
	b := &bird{l: l, node: node, sock: filepath.Join(dir, "bird.ctl")}
	var err error
	if b.proc, err = l.Start(ctx, node, "bird", "-f", "-c", file, "-s", b.sock, "-P", filepath.Join(dir, "bird.pid")); err != nil {
		return nil, err
	}
	err = poll(ctx, time.Minute, func() (bool, error) {
		select {
		case <-b.proc.Done():
			return false, fmt.Errorf("bird on %s exited: %v: %s", node, b.proc.Wait(), b.proc.Output())
		default:
		}
		_, err := b.birdc(ctx, "show", "status")
		return err == nil, nil
	})
	if err != nil {
		return nil, fmt.Errorf("bird on %s: %w", node, err)
	}
	return b, nil
}

// birdc runs one birdc command and returns its output.
func (b *bird) birdc(ctx context.Context, args ...string) (string, error) {
	out, err := b.l.Exec(ctx, b.node, append([]string{"birdc", "-s", b.sock}, args...)...)
	return string(out), err
}

// routes returns how many routes BIRD's table holds, from `show route count`.
func (b *bird) routes(ctx context.Context) (int, error) {
	out, err := b.birdc(ctx, "show", "route", "count")
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(out) {
		if f := strings.Fields(line); len(f) > 3 && f[1] == "of" {
			return strconv.Atoi(f[0])
		}
	}
	return 0, fmt.Errorf("bird on %s: no count in %q", b.node, out)
}

// bfdUp reports whether BIRD's BFD session with peer is Up.
func (b *bird) bfdUp(ctx context.Context, peer string) (bool, error) {
	out, err := b.birdc(ctx, "show", "bfd", "sessions")
	if err != nil {
		return false, err
	}
	for line := range strings.Lines(out) {
		if f := strings.Fields(line); len(f) > 2 && f[0] == peer {
			return f[2] == "Up", nil
		}
	}
	return false, nil
}

// speakerConf is the configuration of a BIRD speaker on a node: it announces
// the first bulk prefixes of bulk and, if vip, the VIP, all with itself as
// next hop.
func speakerConf(addr, peer string, nbulk int, withVIP, bfd, disabled bool) string {
	var b strings.Builder
	fmt.Fprintf(&b, "router id %s;\nlog stderr { warning, error, fatal };\nprotocol device {}\n", addr)
	if bfd {
		fmt.Fprintf(&b, "protocol bfd { interface \"eth0\" { min rx interval %d ms; min tx interval %d ms; multiplier %d; }; }\n",
			bfdInterval.Milliseconds(), bfdInterval.Milliseconds(), bfdMultiplier)
	}
	b.WriteString("protocol static bulk {\n  ipv4;\n")
	for i := range nbulk {
		fmt.Fprintf(&b, "  route %s blackhole;\n", bulk(i))
	}
	b.WriteString("}\nprotocol static vip {\n  ipv4;\n")
	if withVIP {
		fmt.Fprintf(&b, "  route %s blackhole;\n", vip)
	}
	b.WriteString("}\n")
	fmt.Fprintf(&b, "protocol bgp uplink {\n  local %s as %d;\n  neighbor %s as %d;\n", addr, nodeASN, peer, routerASN)
	b.WriteString(timers(bfd))
	if disabled {
		b.WriteString("  disabled;\n")
	}
	b.WriteString("  ipv4 { import none; export where proto = \"bulk\" || proto = \"vip\"; };\n}\n")
	return b.String()
}

// timers is the BIRD session settings shared by every BIRD in the lab.
func timers(bfd bool) string {
	s := fmt.Sprintf("  hold time %d;\n  keepalive time %d;\n  connect delay time 1;\n  connect retry time 2;\n  error wait time 1, 5;\n", holdTime, keepaliveTime)
	if bfd {
		s += "  bfd on;\n"
	}
	return s
}

// poll calls f every 10 ms until it returns true or an error, or until
// timeout passes.
func poll(ctx context.Context, timeout time.Duration, f func() (bool, error)) error {
	deadline := time.Now().Add(timeout)
	for {
		ok, err := f()
		if err != nil || ok {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not within %s", timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}
