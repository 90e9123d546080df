// Command l4 benchmarks the L4 datapath (datapath/nft, driven by the
// daemon's own loop) side by side with kube-proxy-style linear iptables
// rules (iptables-nft) at 1, 1,000 and 10,000 VIPs of 4 backends each, in
// network namespaces it makes and always deletes. For each datapath and
// scale it measures the cold programming time, the time of one backend
// change, new connections per second through the last VIP (the worst case
// for linear rules) against two direct paths (no rules at all, and only
// conntrack), and the kernel and daemon memory; it writes a markdown
// report. `make bench` runs it; it needs root, nft, conntrack,
// iptables-nft-restore and wrk.
//
//	go run ./bench/l4 -out bench/results/l4.md
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const (
	// changes is how many backend changes are timed at each scale.
	changes = 20
	// vipPort is every VIP's TCP port, and every backend's.
	vipPort = 80
)

var (
	// scales are the numbers of VIPs measured.
	scales = []int{1, 1000, 10000}
	// reps is how many wrk runs each connection rate is the median of: a
	// single 5 s run varies by ±15% on a small shared machine.
	reps = 5
)

// Addresses of the lab (lab.clab.yml). Every VIP balances over backends;
// a backend change swaps spare in for the last of them, or back.
var (
	backends = []netip.AddrPort{
		netip.MustParseAddrPort("10.0.1.11:80"),
		netip.MustParseAddrPort("10.0.1.12:80"),
		netip.MustParseAddrPort("10.0.1.13:80"),
		netip.MustParseAddrPort("10.0.1.14:80"),
	}
	spare = netip.MustParseAddrPort("10.0.1.15:80")
)

func main() {
	out := flag.String("out", "bench/results/l4.md", "markdown report to write")
	flag.Func("scales", "comma-separated numbers of VIPs to measure (default 1,1000,10000)", func(v string) error {
		scales = nil
		for f := range strings.SplitSeq(v, ",") {
			n, err := strconv.Atoi(f)
			if err != nil || n < 1 || n > 65000 {
				return fmt.Errorf("%q: not a number of VIPs from 1 to 65000", f)
			}
			scales = append(scales, n)
		}
		return nil
	})
	flag.IntVar(&reps, "reps", reps, "wrk runs per connection rate")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	err := run(ctx, log, *out)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "l4:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, log *slog.Logger, out string) (err error) {
	if os.Geteuid() != 0 {
		return fmt.Errorf("needs root (network namespaces, nftables)")
	}
	rep := &report{command: "go run ./bench/l4 " + strings.Join(os.Args[1:], " "), started: time.Now(), source: source(ctx), loadStart: loadAverage()}
	if rep.machine, err = describeMachine(ctx); err != nil {
		return err
	}
	l, err := upLab(ctx, log)
	if err != nil {
		return err
	}
	defer func() {
		if derr := l.down(); derr != nil {
			log.Error("tear down the lab", "err", derr)
			if err == nil {
				err = derr
			}
		}
	}()
	for _, kind := range []string{"nft", "iptables"} {
		for _, n := range scales {
			rep.results = append(rep.results, runCase(ctx, log, l, kind, n))
			if err := ctx.Err(); err != nil {
				return err
			}
		}
	}
	rep.elapsed = time.Since(rep.started)
	rep.loadEnd = loadAverage()
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(out, []byte(rep.markdown()), 0o644); err != nil {
		return err
	}
	log.Info("report written", "out", out, "took", rep.elapsed.Round(time.Second))
	return nil
}

// source names the last commit of datapath/nft and says whether the
// package differs from it: it changes while it is benchmarked.
func source(ctx context.Context) string {
	out, err := exec.CommandContext(ctx, "git", "log", "-1", "--format=%h (%cs)", "--", "datapath/nft").Output()
	if err != nil || len(out) == 0 {
		return "unknown (no git history)"
	}
	s := "commit " + strings.TrimSpace(string(out))
	if dirty, _ := exec.CommandContext(ctx, "git", "status", "--porcelain", "--", "datapath/nft").Output(); len(dirty) > 0 {
		s += " with uncommitted changes"
	}
	return s
}

// service is one VIP and its backends, whatever the datapath.
type service struct {
	vip      netip.Addr
	backends []netip.AddrPort
}

// makeServices returns n services on consecutive VIPs from 198.18.0.1.
func makeServices(n int) []service {
	out := make([]service, n)
	for i := range out {
		v := i + 1
		out[i] = service{
			vip:      netip.AddrFrom4([4]byte{198, 18, byte(v >> 8), byte(v)}),
			backends: append([]netip.AddrPort(nil), backends...),
		}
	}
	return out
}

// A datapath is one way of programming the services into the router.
type datapath interface {
	// prepare turns the services into the datapath's own form in user
	// space (Maglev tables, rule text) and keeps it for apply.
	prepare(services []service) error
	// apply programs what prepare made into the router's empty namespace.
	apply(ctx context.Context) error
	// change gives service i the backends and updates the kernel; it
	// returns the time the update took (see the report for what is in it).
	change(ctx context.Context, i int, backends []netip.AddrPort) (time.Duration, error)
	// close releases what this process holds; the kernel keeps the rules.
	close() error
}

func newDatapath(kind string, l *lab, log *slog.Logger) (datapath, error) {
	if kind == "nft" {
		return newDaemonPath(l.router, log)
	}
	return &iptablesPath{router: l.router}, nil
}

// result is what one datapath measured at one scale. A phase that failed
// has its error set and, after a failed programming, later phases are
// not measured.
type result struct {
	kind string
	vips int

	prep, apply time.Duration
	// coldSpent and changeSpent are where the daemon's time went (nft).
	coldSpent   spent
	coldErr     error
	changeSpent []spent

	changes   []time.Duration
	changeErr error

	// conns are the connection rates through the last VIP, direct those
	// to a backend through the same router just before, its ruleset
	// empty, and directCT the same with a ruleset that only tracks
	// connections.
	conns, direct, directCT []float64
	connsErr                error

	// kernel is the growth of kernel memory over the cold programming,
	// addrs the part of it the VIP addresses on lo hold (nft).
	kernel, addrs int64
	addrsErr      error
	// heapApplied is this process's live heap grown by the cold
	// programming: what the daemon holds (nft).
	heapApplied int64
}

// spender is a datapath that says where its last apply's time went.
type spender interface{ lastSpent() spent }

// runCase measures one datapath at one scale, in a router it empties first.
func runCase(ctx context.Context, log *slog.Logger, l *lab, kind string, n int) *result {
	log = log.With("datapath", kind, "vips", n)
	r := &result{kind: kind, vips: n}
	if r.coldErr = l.reset(ctx); r.coldErr != nil {
		return r
	}
	r.direct, r.connsErr = l.connRate(ctx, backends[0])
	log.Info("direct connections", "per_second", r.direct, "err", r.connsErr)
	if r.connsErr == nil {
		r.directCT, r.connsErr = l.connRateTracked(ctx, backends[0])
		log.Info("direct connections, tracked", "per_second", r.directCT, "err", r.connsErr)
	}
	dp, err := newDatapath(kind, l, log)
	if err != nil {
		r.coldErr = err
		return r
	}
	defer func() {
		if err := dp.close(); err != nil {
			log.Warn("close datapath", "err", err)
		}
	}()
	services := makeServices(n)
	kernelBefore, err := settledKernelMem(ctx)
	if err != nil {
		r.coldErr = err
		return r
	}
	heap0 := liveHeap()
	start := time.Now()
	if r.coldErr = dp.prepare(services); r.coldErr != nil {
		return r
	}
	r.prep = time.Since(start)
	start = time.Now()
	r.coldErr = dp.apply(ctx)
	r.apply = time.Since(start)
	if sp, ok := dp.(spender); ok {
		r.coldSpent = sp.lastSpent()
	}
	log.Info("cold programming", "prepare", r.prep, "apply", r.apply, "spent", r.coldSpent, "err", r.coldErr)
	if r.coldErr != nil {
		return r
	}
	heap1 := liveHeap()
	kernelAfter, err := settledKernelMem(ctx)
	if err != nil {
		r.coldErr = err
		return r
	}
	r.kernel, r.heapApplied = kernelAfter-kernelBefore, heap1-heap0

	for k := range changes {
		i := k * n / changes
		s := services[i].backends
		if s[3] == spare {
			s[3] = backends[3]
		} else {
			s[3] = spare
		}
		took, err := dp.change(ctx, i, s)
		if r.changeErr = err; err != nil {
			break
		}
		r.changes = append(r.changes, took)
		if sp, ok := dp.(spender); ok {
			r.changeSpent = append(r.changeSpent, sp.lastSpent())
		}
	}
	log.Info("backend changes", "n", len(r.changes), "err", r.changeErr)

	if r.connsErr == nil {
		r.conns, r.connsErr = l.connRate(ctx, netip.AddrPortFrom(services[n-1].vip, vipPort))
	}
	log.Info("connections through the last VIP", "per_second", r.conns, "err", r.connsErr)

	if d, ok := dp.(*daemonPath); ok {
		r.addrs, r.addrsErr = addressMemory(ctx, d)
		log.Info("kernel memory of the VIP addresses", "bytes", r.addrs, "err", r.addrsErr)
	}
	return r
}

// addressMemory takes the daemon's VIP addresses off lo and returns how
// much kernel memory that gave back.
func addressMemory(ctx context.Context, d *daemonPath) (int64, error) {
	withAddrs, err := settledKernelMem(ctx)
	if err != nil {
		return 0, err
	}
	if err := d.removeAddresses(ctx); err != nil {
		return 0, err
	}
	without, err := settledKernelMem(ctx)
	if err != nil {
		return 0, err
	}
	return withAddrs - without, nil
}
