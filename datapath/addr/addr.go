// Package addr makes the appliance own its VIP addresses: each is put on
// the loopback device as a /32 or /128 (this kernel has no dummy device, and
// lo needs none), so the kernel answers for it and refuses flows that no
// backend takes. Only addresses this package added are ever removed.
package addr

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"iter"
	"net/netip"
	"slices"
	"syscall"
	"time"

	mdnetlink "github.com/mdlayher/netlink"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Target owns VIP addresses on lo in one network namespace. It is meant to
// be driven by one goroutine.
type Target struct {
	h *netlink.Handle
	// batch sends many address requests in one write: one request each,
	// waiting for each answer, took 4 s for 10,000 VIPs.
	batch *mdnetlink.Conn
	lo    netlink.Link
	mine  map[netip.Addr]bool
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
	b, err := mdnetlink.Dial(unix.NETLINK_ROUTE, &mdnetlink.Config{NetNS: netnsFd})
	if err == nil {
		err = forceRecvBuffer(b)
	}
	if err != nil {
		h.Close()
		if b != nil {
			b.Close()
		}
		return nil, fmt.Errorf("addr: open netlink: %w", err)
	}
	return &Target{h: h, batch: b, lo: lo, mine: map[netip.Addr]bool{}}, nil
}

// Close releases the netlink handles; the addresses stay.
func (t *Target) Close() {
	t.h.Close()
	t.batch.Close()
}

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
	var add, del []netip.Addr
	wanted := make(map[netip.Addr]bool, len(want))
	for _, a := range want {
		wanted[a] = true
		if !have[a] {
			add = append(add, a)
		}
	}
	for a := range t.mine {
		if wanted[a] {
			continue
		}
		if have[a] {
			del = append(del, a)
		} else {
			delete(t.mine, a)
		}
	}
	slices.SortFunc(del, netip.Addr.Compare)
	var errs []error
	for a, err := range t.request(unix.RTM_NEWADDR, add) {
		if err != nil && !errors.Is(err, unix.EEXIST) {
			errs = append(errs, fmt.Errorf("addr: add %s dev lo: %w", a, err))
			continue
		}
		t.mine[a] = true
	}
	for a, err := range t.request(unix.RTM_DELADDR, del) {
		if err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			errs = append(errs, fmt.Errorf("addr: delete %s dev lo: %w", a, err))
			continue
		}
		delete(t.mine, a)
	}
	return errors.Join(errs...)
}

// answerTimeout bounds the wait for the kernel's answers to one write.
const answerTimeout = 30 * time.Second

// perWrite is how many address requests go out in one write. The kernel
// queues an answer for each before the first is read, about a kilobyte of
// receive buffer each: recvBuffer holds them with room to spare.
const perWrite = 256

// recvBuffer is the batch socket's receive buffer. The default (208 KiB,
// net.core.rmem_default) would drop answers, silently but for an ENOBUFS.
// SO_RCVBUFFORCE is not capped by net.core.rmem_max, and needs
// CAP_NET_ADMIN, which adding addresses needs anyway.
const recvBuffer = 4 << 20

func forceRecvBuffer(c *mdnetlink.Conn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, recvBuffer)
	}); err != nil {
		return err
	}
	return serr
}

// request sends an RTM_NEWADDR or RTM_DELADDR for each address on lo and
// yields each address with the kernel's answer. The kernel answers every
// request of a write in turn, so a write of many costs little more than a
// write of one.
func (t *Target) request(typ uint16, addrs []netip.Addr) iter.Seq2[netip.Addr, error] {
	return func(yield func(netip.Addr, error) bool) {
		for len(addrs) > 0 {
			n := min(len(addrs), perWrite)
			answers, err := t.exchange(typ, addrs[:n])
			for i, a := range addrs[:n] {
				e := err
				if e == nil {
					e = answers[i]
				}
				if !yield(a, e) {
					return
				}
			}
			addrs = addrs[n:]
		}
	}
}

// exchange writes one request per address and reads every answer.
func (t *Target) exchange(typ uint16, addrs []netip.Addr) ([]error, error) {
	flags := uint16(unix.NLM_F_REQUEST | unix.NLM_F_ACK)
	if typ == unix.RTM_NEWADDR {
		flags |= unix.NLM_F_CREATE | unix.NLM_F_EXCL
	}
	var buf []byte
	for i, a := range addrs {
		buf = appendAddrRequest(buf, typ, flags, uint32(i+1), t.lo.Attrs().Index, a)
	}
	rc, err := t.batch.SyscallConn()
	if err != nil {
		return nil, err
	}
	var serr error
	err = rc.Write(func(fd uintptr) bool {
		serr = unix.Sendto(int(fd), buf, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
		return serr != unix.EAGAIN
	})
	if err = errors.Join(err, serr); err != nil {
		return nil, fmt.Errorf("send: %w", err)
	}
	// The kernel answers at once; a deadline keeps a lost answer from
	// hanging the daemon.
	if err := t.batch.SetReadDeadline(time.Now().Add(answerTimeout)); err != nil {
		return nil, err
	}
	answers := make([]error, len(addrs))
	got := 0
	rbuf := make([]byte, 1<<20)
	for got < len(addrs) {
		var n int
		err = rc.Read(func(fd uintptr) bool {
			n, _, serr = unix.Recvfrom(int(fd), rbuf, 0)
			return serr != unix.EAGAIN
		})
		if err = errors.Join(err, serr); err != nil {
			return nil, fmt.Errorf("receive: %w", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(rbuf[:n])
		if err != nil {
			return nil, fmt.Errorf("receive: %w", err)
		}
		for _, m := range msgs {
			seq := int(m.Header.Seq)
			if m.Header.Type != unix.NLMSG_ERROR || seq < 1 || seq > len(addrs) || len(m.Data) < 4 {
				continue
			}
			if code := int32(binary.NativeEndian.Uint32(m.Data)); code != 0 {
				answers[seq-1] = syscall.Errno(-code)
			}
			got++
		}
	}
	return answers, nil
}

// appendAddrRequest appends a request for the address a, as a /32 or
// /128 without duplicate address detection, on the interface index.
func appendAddrRequest(b []byte, typ, flags uint16, seq uint32, index int, a netip.Addr) []byte {
	fam, bits := byte(unix.AF_INET), byte(32)
	if a.Is6() {
		fam, bits = unix.AF_INET6, 128
	}
	at := len(b)
	b = binary.NativeEndian.AppendUint32(b, 0) // length, set below
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = binary.NativeEndian.AppendUint16(b, flags)
	b = binary.NativeEndian.AppendUint32(b, seq)
	b = binary.NativeEndian.AppendUint32(b, 0)
	// ifaddrmsg: family, prefix length, flags, scope, interface index.
	b = append(b, fam, bits, unix.IFA_F_NODAD&0xff, unix.RT_SCOPE_UNIVERSE)
	b = binary.NativeEndian.AppendUint32(b, uint32(index))
	attr := func(typ uint16, data []byte) {
		b = binary.NativeEndian.AppendUint16(b, uint16(4+len(data)))
		b = binary.NativeEndian.AppendUint16(b, typ)
		b = append(b, data...)
		for len(b)%4 != 0 {
			b = append(b, 0)
		}
	}
	attr(unix.IFA_LOCAL, a.AsSlice())
	attr(unix.IFA_ADDRESS, a.AsSlice())
	attr(unix.IFA_FLAGS, binary.NativeEndian.AppendUint32(nil, unix.IFA_F_NODAD))
	binary.NativeEndian.PutUint32(b[at:], uint32(len(b)-at))
	return b
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
