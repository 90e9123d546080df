// Command bgp benchmarks the appliance's BGP routing, the daemon with its
// embedded speaker (control/bgp) and kernel route target (datapath/route),
// side by side with BIRD 2 acting as the same router (its kernel protocol
// installing what it learns), in network namespaces it makes and always
// deletes. For each router it measures:
//
//   - ingestion: a BIRD feeder announces -prefixes prefixes over one
//     session; the time from enabling that session until the last of them
//     is in the router's kernel FIB, the router's memory then, and the time
//     until all are gone after the feeder withdraws them; -ingest-trials
//     times, the routers taking turns, reported as min, median and max;
//   - failover: two BIRD nodes announce one VIP, so the router installs it
//     with two next hops; over -trials trials, one node is made silent with
//     nftables drops in its namespace, and the time until its next hop
//     leaves the kernel route is taken, with BFD on both sides.
//
// It writes a markdown report. `make bench` runs it; it needs root and bird2.
//
//	go run ./bench/bgp -out bench/results/bgp.md
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	out := flag.String("out", "bench/results/bgp.md", "markdown report to write")
	prefixes := flag.Int("prefixes", 100_000, "prefixes the feeder announces (at most 131072)")
	trials := flag.Int("trials", 20, "failover trials per router")
	ingestTrials := flag.Int("ingest-trials", 5, "ingestion trials per router, taken in turns")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	err := run(ctx, log, *out, *prefixes, *trials, *ingestTrials)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bgp:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, log *slog.Logger, out string, prefixes, trials, ingestTrials int) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("needs root (network namespaces, routes, nftables)")
	}
	if prefixes < 1 || prefixes > maxPrefixes {
		return fmt.Errorf("-prefixes: want 1 to %d, got %d", maxPrefixes, prefixes)
	}
	if trials < 1 {
		return fmt.Errorf("-trials: want at least 1, got %d", trials)
	}
	if ingestTrials < 1 {
		return fmt.Errorf("-ingest-trials: want at least 1, got %d", ingestTrials)
	}
	bins, err := build(ctx)
	if err != nil {
		return err
	}
	defer os.RemoveAll(bins)
	rep := &report{
		command:      fmt.Sprintf("go run ./bench/bgp -out %s -prefixes %d -trials %d -ingest-trials %d", out, prefixes, trials, ingestTrials),
		started:      time.Now(),
		prefixes:     prefixes,
		trials:       trials,
		ingestTrials: ingestTrials,
		loadStart:    loadAverage(),
		source:       source(ctx),
	}
	if rep.machine, err = describeMachine(ctx); err != nil {
		return err
	}
	routers := []router{appliance{bin: bins}, birdRouter{}}
	// The routers take turns, so that a slow spell of these shared cores
	// falls on both.
	for t := range ingestTrials {
		for _, r := range routers {
			log.Info("ingestion", "router", r.name(), "prefixes", prefixes, "trial", t+1)
			in := ingest(ctx, log, r, prefixes)
			if in.err != nil {
				log.Error("ingestion", "router", r.name(), "err", in.err)
			}
			rep.ingest = append(rep.ingest, in)
			if ctx.Err() != nil {
				return ctx.Err()
			}
		}
	}
	for _, r := range routers {
		log.Info("failover", "router", r.name(), "trials", trials)
		fo := failover(ctx, log, r, trials)
		if fo.err != nil {
			log.Error("failover", "router", r.name(), "err", fo.err)
		}
		rep.failover = append(rep.failover, fo)
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	rep.took = time.Since(rep.started)
	rep.loadEnd = loadAverage()
	if err := os.WriteFile(out, []byte(rep.markdown()), 0o644); err != nil {
		return err
	}
	log.Info("report written", "file", out)
	return nil
}
