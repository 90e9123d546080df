// Package addr makes the appliance own its VIP addresses: each is put on
// the loopback device as a /32 or /128 (this kernel has no dummy device, and
// lo needs none), so the kernel answers for it and refuses flows that no
// backend takes. Only addresses this package added are ever removed.
package addr

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Target owns VIP addresses on lo in one network namespace. It is meant to
// be driven by one goroutine.
type Target struct {
	h    *netlink.Handle
	lo   netlink.Link
	mine map[netip.Addr]bool
}

// New opens a netlink handle in the namespace of the descriptor netnsFd
// (0: the caller's own).
func New(netnsFd int) (*Target, error) {
	var h *netlink.Handle
	var err error
	if netnsFd != 0 {
		h, err = netlink.NewHandleAt(netns.NsHandle(netnsFd))
	} else {
		h, err = netlink.NewHandle()
	}
	if err != nil {
		return nil, fmt.Errorf("addr: open netlink: %w", err)
	}
	lo, err := h.LinkByName("lo")
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("addr: find lo: %w", err)
	}
	return &Target{h: h, lo: lo, mine: map[netip.Addr]bool{}}, nil
}

// Close releases the netlink handle; the addresses stay.
func (t *Target) Close() { t.h.Close() }

// Adopt tells the target which addresses an earlier run added, so that Set
// may remove them when they are no longer wanted.
func (t *Target) Adopt(addrs []netip.Addr) {
	for _, a := range addrs {
		t.mine[a] = true
	}
}

// Set makes lo hold every wanted address and no longer hold the ones this
// target added that are not wanted. An address that was on lo before the
// target wanted it (put there by the operator) is left alone, now and
// later. Adding is done before removing. Calling Set twice with the same
// list changes nothing.
func (t *Target) Set(ctx context.Context, want []netip.Addr) error {
	have, err := t.present()
	if err != nil {
		return err
	}
	var errs []error
	wanted := map[netip.Addr]bool{}
	for _, a := range want {
		wanted[a] = true
		if have[a] {
			continue
		}
		if err := t.h.AddrAdd(t.lo, nlAddr(a)); err != nil && !errors.Is(err, unix.EEXIST) {
			errs = append(errs, fmt.Errorf("addr: add %s dev lo: %w", a, err))
			continue
		}
		t.mine[a] = true
	}
	for a := range t.mine {
		if wanted[a] {
			continue
		}
		if have[a] {
			if err := t.h.AddrDel(t.lo, nlAddr(a)); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
				errs = append(errs, fmt.Errorf("addr: delete %s dev lo: %w", a, err))
				continue
			}
		}
		delete(t.mine, a)
	}
	return errors.Join(errs...)
}

// Owned lists the addresses this target added that are on lo now, sorted.
func (t *Target) Owned() ([]netip.Addr, error) {
	have, err := t.present()
	if err != nil {
		return nil, err
	}
	var out []netip.Addr
	for a := range t.mine {
		if have[a] {
			out = append(out, a)
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out, nil
}

// present reads the host addresses (/32, /128) on lo.
func (t *Target) present() (map[netip.Addr]bool, error) {
	list, err := t.h.AddrList(t.lo, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("addr: list lo: %w", err)
	}
	out := map[netip.Addr]bool{}
	for _, a := range list {
		ones, bits := a.Mask.Size()
		if ip, ok := netip.AddrFromSlice(a.IP); ok && ones == bits {
			out[ip.Unmap()] = true
		}
	}
	return out, nil
}

func nlAddr(a netip.Addr) *netlink.Addr {
	bits := a.BitLen()
	return &netlink.Addr{
		IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(bits, bits)},
		Flags: unix.IFA_F_NODAD,
	}
}
