package main

import (
	"context"
	"log/slog"
	"net/netip"
	"os"
	"slices"

	"portico.dev/appliance/control/maglev"
	"portico.dev/appliance/datapath/nft"
)

// nftPath programs the services as the daemon does: a Maglev table per VIP
// sized for its configured backends, then one Target.Set with every
// service, cold and for each change.
type nftPath struct {
	target   *nft.Target
	services []nft.Service
}

func newNFTPath(router *os.File, log *slog.Logger) (*nftPath, error) {
	t, err := nft.New(nft.Options{NetNS: int(router.Fd()), Log: log.With("component", "nft")})
	if err != nil {
		return nil, err
	}
	return &nftPath{target: t}, nil
}

func (p *nftPath) prepare(services []service) error {
	p.services = make([]nft.Service, len(services))
	for i, s := range services {
		var err error
		if p.services[i], err = nftService(s.vip, s.backends); err != nil {
			return err
		}
	}
	return nil
}

func (p *nftPath) apply(ctx context.Context) error {
	return p.target.Set(ctx, p.services)
}

func (p *nftPath) change(ctx context.Context, i int, backends []netip.AddrPort) error {
	s, err := nftService(p.services[i].Key.Addr, backends)
	if err != nil {
		return err
	}
	p.services[i] = s
	return p.target.Set(ctx, p.services)
}

func (p *nftPath) close() error { return p.target.Close() }

// nftService is a hash-scheduled VIP whose slots are a Maglev table of its
// backends, all of weight 1.
func nftService(vip netip.Addr, backends []netip.AddrPort) (nft.Service, error) {
	mb := make([]maglev.Backend, len(backends))
	for i, b := range backends {
		mb[i] = maglev.Backend{ID: b.String(), Weight: 1}
	}
	table, err := maglev.Build(mb, maglev.Size(len(mb)))
	if err != nil {
		return nft.Service{}, err
	}
	slots := make([]netip.AddrPort, len(table))
	for i, j := range table {
		slots[i] = backends[j]
	}
	return nft.Service{
		Key:       nft.Key{Addr: vip, Proto: nft.TCP, Port: vipPort},
		Scheduler: nft.Hash,
		Backends:  slices.Clone(backends),
		Slots:     slots,
	}, nil
}
