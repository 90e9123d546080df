// Command demo is `make demo`: it brings up the L4 lab (test/topo/l4.clab.yml:
// a client, the appliance, three backends) in network namespaces, runs the
// appliance daemon there with one VIP, sends requests from the client,
// shows which backend answered each and what the kernel counted, and tears
// everything down. It needs root.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"portico.dev/appliance/test/topo"
)

const demoConfig = `name: demo
store: %s
vips:
  - name: web
    address: 203.0.113.10
    port: 80
    protocol: tcp
    scheduler: maglev
    health: {type: http, path: /, interval: 1s, timeout: 500ms, rise: 2, fall: 2}
    backends:
      - {address: 10.0.1.11:8080}
      - {address: 10.0.2.12:8080}
      - {address: 10.0.3.13:8080}
`

func main() {
	bin := flag.String("bin", "bin", "directory holding the appliance and backend binaries")
	lab := flag.String("topology", "test/topo/l4.clab.yml", "lab topology")
	requests := flag.Int("requests", 30, "requests to send")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *bin, *lab, *requests); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, bin, labFile string, requests int) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("needs root (network namespaces, nftables)")
	}
	bin, err := filepath.Abs(bin)
	if err != nil {
		return err
	}
	t, err := topo.Load(labFile)
	if err != nil {
		return err
	}
	step("bringing up the lab " + labFile)
	lab, err := topo.Up(ctx, t, topo.Options{Prefix: fmt.Sprintf("demo%d-", os.Getpid())})
	if err != nil {
		return err
	}
	defer func() {
		step("tearing down")
		if err := lab.Down(); err != nil {
			fmt.Fprintln(os.Stderr, "demo: down:", err)
		}
	}()
	for i, be := range []string{"be1", "be2", "be3"} {
		if _, err := lab.Start(ctx, be, filepath.Join(bin, "backend"), "-name", be, "-http", ":8080"); err != nil {
			return fmt.Errorf("start backend %d: %w", i+1, err)
		}
	}
	dir, err := os.MkdirTemp("", "portico-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	cfg := filepath.Join(dir, "appliance.yaml")
	if err := os.WriteFile(cfg, fmt.Appendf(nil, demoConfig, filepath.Join(dir, "state.db")), 0o600); err != nil {
		return err
	}
	step("starting the appliance with VIP 203.0.113.10:80 → 3 backends")
	fmt.Print(indent(fmt.Sprintf(demoConfig, filepath.Join(dir, "state.db"))))
	app, err := lab.Start(ctx, "appliance", filepath.Join(bin, "appliance"), "run", "--config", cfg)
	if err != nil {
		return err
	}
	if err := waitServing(ctx, lab); err != nil {
		fmt.Print(indent(app.Output()))
		return err
	}
	step(fmt.Sprintf("%d new connections from the client to http://203.0.113.10/", requests))
	hits := map[string]int{}
	for range requests {
		out, err := lab.Exec(ctx, "client", "curl", "-s", "-m", "2", "http://203.0.113.10/")
		if err != nil {
			return err
		}
		f := strings.Fields(string(out))
		if len(f) == 2 {
			hits[f[0]]++
			fmt.Printf("    %s answered, and saw the client as %s\n", f[0], f[1])
		}
	}
	step("backends reached")
	names := make([]string, 0, len(hits))
	for n := range hits {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Printf("    %-4s %3d  %s\n", n, hits[n], strings.Repeat("#", hits[n]))
	}
	step("what the kernel counted (nft list set inet portico backend_counters4)")
	out, err := lab.Exec(ctx, "appliance", "nft", "list", "set", "inet", "portico", "backend_counters4")
	if err != nil {
		return err
	}
	fmt.Print(indent(string(out)))
	if err := app.Stop(5 * time.Second); err != nil {
		return err
	}
	step("appliance log")
	fmt.Print(indent(app.Output()))
	if len(hits) != 3 {
		return fmt.Errorf("only %d of 3 backends answered", len(hits))
	}
	return nil
}

// waitServing waits until the VIP answers from the client.
func waitServing(ctx context.Context, lab *topo.Lab) error {
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := lab.Exec(ctx, "client", "curl", "-s", "-m", "1", "http://203.0.113.10/"); err == nil {
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("the VIP did not answer within 15s")
}

func step(s string) { fmt.Printf("\n==> %s\n", s) }

func indent(s string) string {
	var b strings.Builder
	for l := range strings.Lines(s) {
		b.WriteString("    " + l)
	}
	return b.String()
}
