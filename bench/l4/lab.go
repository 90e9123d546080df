package main

import (
	"bytes"
	"context"
	_ "embed"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	"portico.dev/appliance/test/topo"
)

//go:embed lab.clab.yml
var labFile []byte

// lab is the benchmark's namespaces with the backend server running.
type lab struct {
	*topo.Lab
	// router is the router's namespace, open for netlink and setns.
	router *os.File
	dir    string
}

// upLab builds test/backend, brings the lab up and starts the backend
// server. On failure it leaves nothing behind.
func upLab(ctx context.Context, log *slog.Logger) (l *lab, err error) {
	t, err := topo.Parse(labFile)
	if err != nil {
		return nil, fmt.Errorf("lab topology: %w", err)
	}
	dir, err := os.MkdirTemp("", "l4bench-")
	if err != nil {
		return nil, err
	}
	l = &lab{dir: dir}
	defer func() {
		if err != nil {
			err = errors.Join(err, l.down())
		}
	}()
	bin := filepath.Join(dir, "backend")
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "portico.dev/appliance/test/backend").CombinedOutput(); err != nil {
		return l, fmt.Errorf("build test/backend: %w: %s", err, out)
	}
	log.Info("bringing up the lab")
	if l.Lab, err = topo.Up(ctx, t, topo.Options{Prefix: fmt.Sprintf("l4bench%d-", os.Getpid())}); err != nil {
		return l, err
	}
	if l.router, err = os.Open("/var/run/netns/" + l.Namespace("router")); err != nil {
		return l, err
	}
	p, err := l.Start(ctx, "backend", bin, "-name", "backend", "-http", fmt.Sprintf(":%d", vipPort))
	if err != nil {
		return l, err
	}
	for !strings.Contains(p.Output(), "ready") {
		select {
		case <-p.Done():
			return l, fmt.Errorf("backend exited: %v: %s", p.Wait(), p.Output())
		case <-ctx.Done():
			return l, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return l, nil
}

// down stops the backend, deletes the namespaces and the build directory.
func (l *lab) down() error {
	var errs []error
	if l.router != nil {
		errs = append(errs, l.router.Close())
	}
	if l.Lab != nil {
		errs = append(errs, l.Lab.Down())
	}
	return errors.Join(append(errs, os.RemoveAll(l.dir))...)
}

// reset empties the router: no nftables or iptables rules, no conntrack
// entries.
func (l *lab) reset(ctx context.Context) error {
	if _, err := l.Exec(ctx, "router", "nft", "flush", "ruleset"); err != nil {
		return err
	}
	_, err := l.Exec(ctx, "router", "conntrack", "-F")
	return err
}

// trackOnly is a ruleset that makes the router track every connection and
// do nothing else: one forward rule with a conntrack expression, which is
// what loads conntrack into the namespace. Any NAT datapath pays for
// conntrack; this shows how much of its cost is that.
const trackOnly = "add table inet bench_ct; " +
	"add chain inet bench_ct forward { type filter hook forward priority filter; policy accept; }; " +
	"add rule inet bench_ct forward ct state established,related accept"

// connRateTracked is connRate with the router tracking connections and
// doing nothing else; the router's ruleset is empty again afterwards.
func (l *lab) connRateTracked(ctx context.Context, dst netip.AddrPort) ([]float64, error) {
	if _, err := l.Exec(ctx, "router", "nft", trackOnly); err != nil {
		return nil, err
	}
	rates, err := l.connRate(ctx, dst)
	return rates, errors.Join(err, l.reset(ctx))
}

var (
	wrkRequests = regexp.MustCompile(`(\d+) requests in`)
	wrkRate     = regexp.MustCompile(`Requests/sec:\s+([\d.]+)`)
	wrkSocket   = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
	wrkNon2xx   = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`)
)

// connRate runs wrk from the client against dst reps times and returns its
// requests per second; with "Connection: close" each request is a new
// connection. A run with any failed request is an error.
func (l *lab) connRate(ctx context.Context, dst netip.AddrPort) ([]float64, error) {
	var rates []float64
	for range reps {
		ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		out, err := l.Exec(ctx, "client", "wrk", "-c", "32", "-t", "2", "-d", "5s",
			"-H", "Connection: close", "http://"+dst.String()+"/")
		cancel()
		if err != nil {
			return rates, err
		}
		m, r := wrkRequests.FindSubmatch(out), wrkRate.FindSubmatch(out)
		if m == nil || r == nil {
			return rates, fmt.Errorf("wrk %s: unexpected output: %s", dst, out)
		}
		failed := 0
		for _, m := range append(wrkSocket.FindAllSubmatch(out, -1), wrkNon2xx.FindAllSubmatch(out, -1)...) {
			for _, n := range m[1:] {
				v, _ := strconv.Atoi(string(n))
				failed += v
			}
		}
		if requests, _ := strconv.Atoi(string(m[1])); requests == 0 || failed > 0 {
			return rates, fmt.Errorf("wrk %s: %d of %s requests failed: %s", dst, failed, m[1], bytes.TrimSpace(out))
		}
		rate, _ := strconv.ParseFloat(string(r[1]), 64)
		rates = append(rates, rate)
	}
	return rates, nil
}

// runIn runs cmd to completion in the network namespace ns. A child inherits
// the namespace of the thread that forks it, so a goroutine locks a thread,
// moves it into ns and starts cmd there. It never unlocks the thread: Go
// then ends the thread rather than reuse it in the wrong namespace. This
// costs no extra exec, unlike ip netns exec or nsenter, so a timed command
// is timed as kube-proxy would run it.
func runIn(ns *os.File, cmd *exec.Cmd) error {
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			started <- fmt.Errorf("setns: %w", err)
			return
		}
		started <- cmd.Start()
	}()
	err := <-started
	if err == nil {
		err = cmd.Wait()
	}
	if err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(cmd.Args, " "), err, bytes.TrimSpace(out.Bytes()))
	}
	return nil
}
