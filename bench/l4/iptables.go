package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"time"
)

// iptablesPath programs the services as kube-proxy does with iptables-nft:
// nat PREROUTING jumps to a SERVICES chain holding one rule per VIP, which
// jumps to that VIP's chain; there statistic rules pick a backend (with
// probability 1/4, then 1/3 of the rest, 1/2, then the last) and DNAT to
// it. The whole table is one iptables-nft-restore, a change one
// iptables-nft-restore --noflush that rewrites the VIP's chain.
type iptablesPath struct {
	router *os.File
	// rules is the restore input prepare rendered.
	rules string
}

func (p *iptablesPath) prepare(services []service) error {
	var b strings.Builder
	b.WriteString("*nat\n:PREROUTING ACCEPT [0:0]\n:SERVICES - [0:0]\n")
	for i := range services {
		fmt.Fprintf(&b, ":%s - [0:0]\n", vipChain(i))
	}
	b.WriteString("-A PREROUTING -j SERVICES\n")
	for i, s := range services {
		fmt.Fprintf(&b, "-A SERVICES -d %s/32 -p tcp -m tcp --dport %d -j %s\n", s.vip, vipPort, vipChain(i))
	}
	for i, s := range services {
		writeVIPChain(&b, i, s.backends)
	}
	b.WriteString("COMMIT\n")
	p.rules = b.String()
	return nil
}

func (p *iptablesPath) apply(ctx context.Context) error {
	return p.restore(ctx, p.rules)
}

// change declares the VIP's chain, which empties it even with --noflush,
// and fills it again, in one transaction.
func (p *iptablesPath) change(ctx context.Context, i int, backends []netip.AddrPort) (time.Duration, error) {
	start := time.Now()
	var b strings.Builder
	fmt.Fprintf(&b, "*nat\n:%s - [0:0]\n", vipChain(i))
	writeVIPChain(&b, i, backends)
	b.WriteString("COMMIT\n")
	err := p.restore(ctx, b.String(), "--noflush")
	return time.Since(start), err
}

func (p *iptablesPath) close() error { return nil }

func (p *iptablesPath) restore(ctx context.Context, rules string, args ...string) error {
	cmd := exec.CommandContext(ctx, "iptables-nft-restore", args...)
	cmd.Stdin = strings.NewReader(rules)
	return runIn(p.router, cmd)
}

func vipChain(i int) string { return fmt.Sprintf("SVC-%05d", i) }

func writeVIPChain(b *strings.Builder, i int, backends []netip.AddrPort) {
	for j, be := range backends {
		fmt.Fprintf(b, "-A %s -p tcp", vipChain(i))
		if left := len(backends) - j; left > 1 {
			fmt.Fprintf(b, " -m statistic --mode random --probability %.11f", 1/float64(left))
		}
		fmt.Fprintf(b, " -j DNAT --to-destination %s\n", be)
	}
}
