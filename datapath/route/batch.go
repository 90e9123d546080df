package route

import (
	"encoding/binary"
	"fmt"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Limits of one batch: the messages of a batch go to the kernel in one
// write, at most batchMessages of them and batchBytes plus one message.
// Only the last asks for an acknowledgement; the kernel answers the others
// only when it refuses them, with their header alone (NETLINK_CAP_ACK), so
// that the answers to a whole batch of refusals fit the socket's receive
// buffer many times over.
const (
	batchMessages = 1024
	batchBytes    = 64 << 10
)

// batcher sends route changes to the kernel many to a write: 100,000
// routes are 100,000 messages, and a write and a read for each, or even an
// acknowledgement for each, cost more than the kernel's work on them.
type batcher struct {
	fd      int
	timeout time.Duration // the longest wait for the kernel's answers
	seq     uint32
	out     []byte // the messages of the batch being built
	in      []byte // the receive buffer
}

func newBatcher(fd int, timeout time.Duration) (*batcher, error) {
	if err := unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_CAP_ACK, 1); err != nil {
		return nil, fmt.Errorf("route: netlink socket: NETLINK_CAP_ACK: %w", err)
	}
	return &batcher{fd: fd, timeout: timeout, in: make([]byte, 64<<10)}, nil
}

// Sizes of the netlink structures that message writes.
const (
	nlmsgLen  = unix.SizeofNlMsghdr // 16
	rtaLen    = unix.SizeofRtAttr   // 4
	rtnextLen = unix.SizeofRtNexthop
)

// appendMessage appends to buf the netlink request for c, in table of
// protocol proto, with sequence number seq. It asks for no
// acknowledgement.
func appendMessage(buf []byte, c change, table int, proto uint8, seq uint32) []byte {
	var typ, flags uint16
	scope, rtype := uint8(unix.RT_SCOPE_UNIVERSE), uint8(unix.RTN_UNICAST)
	switch c.op {
	case opDelete:
		typ = unix.RTM_DELROUTE
		scope, rtype = unix.RT_SCOPE_NOWHERE, unix.RTN_UNSPEC
	case opAdd:
		// Exclusive, so that a route of another protocol keeps its prefix:
		// NLM_F_REPLACE takes over a route of any protocol. That is also
		// why a replace is sent only for a prefix that Set knows is ours.
		typ, flags = unix.RTM_NEWROUTE, unix.NLM_F_CREATE|unix.NLM_F_EXCL
	default:
		typ, flags = unix.RTM_NEWROUTE, unix.NLM_F_CREATE|unix.NLM_F_REPLACE
	}
	flags |= unix.NLM_F_REQUEST
	start := len(buf)
	ne := binary.NativeEndian
	buf = ne.AppendUint32(buf, 0) // length, set below
	buf = ne.AppendUint16(buf, typ)
	buf = ne.AppendUint16(buf, flags)
	buf = ne.AppendUint32(buf, seq)
	buf = ne.AppendUint32(buf, 0) // port: the kernel's

	p := c.route.Prefix
	family := uint8(unix.AF_INET6)
	if p.Addr().Is4() {
		family = unix.AF_INET
	}
	rtTable := uint8(unix.RT_TABLE_UNSPEC)
	if table < 256 {
		rtTable = uint8(table)
	}
	// On a delete, the protocol makes the kernel delete only our route,
	// whatever its next hops (all IPv6 siblings at once), never another
	// protocol's.
	buf = append(buf, family, uint8(p.Bits()), 0, 0, rtTable, proto, scope, rtype)
	buf = ne.AppendUint32(buf, 0) // rtm_flags

	buf = appendAttr(buf, unix.RTA_DST, p.Addr().AsSlice())
	if table >= 256 {
		buf = appendAttr(buf, unix.RTA_TABLE, ne.AppendUint32(nil, uint32(table)))
	}
	switch hops := c.route.NextHops; {
	case c.op == opDelete:
	case len(hops) == 1:
		buf = appendAttr(buf, unix.RTA_GATEWAY, hops[0].Addr.AsSlice())
	default:
		mp := len(buf)
		buf = appendAttr(buf, unix.RTA_MULTIPATH, nil)
		for _, nh := range hops {
			gw := nh.Addr.AsSlice()
			buf = ne.AppendUint16(buf, uint16(rtnextLen+rtaLen+len(gw)))
			buf = append(buf, 0, uint8(nh.Weight-1)) // flags, hops
			buf = ne.AppendUint32(buf, 0)            // ifindex: from the gateway
			buf = appendAttr(buf, unix.RTA_GATEWAY, gw)
		}
		ne.PutUint16(buf[mp:], uint16(len(buf)-mp))
	}
	ne.PutUint32(buf[start:], uint32(len(buf)-start))
	return buf
}

// appendAttr appends a route attribute, padded to 4 bytes: the addresses
// and numbers written here are all 4 or 16 bytes long.
func appendAttr(buf []byte, typ uint16, data []byte) []byte {
	buf = binary.NativeEndian.AppendUint16(buf, uint16(rtaLen+len(data)))
	buf = binary.NativeEndian.AppendUint16(buf, typ)
	return append(buf, data...)
}

// applyAll sends cs in order, in as few writes as the batch limits allow,
// and returns the kernel's answer to each: nil, or the errno it refused the
// change with. On an error the answers so far are returned with it.
func (b *batcher) applyAll(cs []change, table int, proto uint8) ([]error, error) {
	errs := make([]error, len(cs))
	for start := 0; start < len(cs); {
		b.out = b.out[:0]
		first := b.seq + 1
		n, last := 0, 0
		for start+n < len(cs) && n < batchMessages && len(b.out) < batchBytes {
			last = len(b.out)
			b.out = appendMessage(b.out, cs[start+n], table, proto, first+uint32(n))
			n++
		}
		flags := b.out[last+6:]
		binary.NativeEndian.PutUint16(flags, binary.NativeEndian.Uint16(flags)|unix.NLM_F_ACK)
		b.seq += uint32(n)
		if err := b.send(errs[start:start+n], first); err != nil {
			return errs[:start], err
		}
		start += n
	}
	return errs, nil
}

// send writes the batch in b.out, whose messages have sequence numbers
// first onwards, one per element of answers, and fills answers with the
// kernel's refusals. The last message's acknowledgement says that the
// kernel has dealt with all of them: it handles a write's messages in order.
func (b *batcher) send(answers []error, first uint32) error {
	n := uint32(len(answers))
	if err := unix.Sendto(b.fd, b.out, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("route: send %d messages: %w", n, err)
	}
	deadline := time.Now().Add(b.timeout)
	for {
		got, err := b.receive(deadline)
		if err != nil {
			return fmt.Errorf("route: read the answers to %d messages: %w", n, err)
		}
		for len(got) >= nlmsgLen {
			l := int(binary.NativeEndian.Uint32(got))
			if l < nlmsgLen || l > len(got) {
				return fmt.Errorf("route: read the answers to %d messages: malformed message", n)
			}
			m := got[:l]
			got = got[min(len(got), (l+3)&^3):]
			seq := binary.NativeEndian.Uint32(m[8:])
			if binary.NativeEndian.Uint16(m[4:]) != unix.NLMSG_ERROR || seq-first >= n || l < nlmsgLen+4 {
				continue // an answer to an earlier batch that gave up
			}
			if errno := -int32(binary.NativeEndian.Uint32(m[nlmsgLen:])); errno != 0 {
				answers[seq-first] = syscall.Errno(errno)
			}
			if seq-first == n-1 {
				return nil
			}
		}
	}
}

// receive reads one datagram of answers, waiting for it until deadline.
func (b *batcher) receive(deadline time.Time) ([]byte, error) {
	for {
		n, _, err := unix.Recvfrom(b.fd, b.in, unix.MSG_DONTWAIT)
		switch {
		case err == nil:
			return b.in[:n], nil
		case err == unix.EINTR:
			continue
		case err != unix.EAGAIN:
			return nil, err
		}
		wait := time.Until(deadline)
		if wait <= 0 {
			return nil, unix.ETIMEDOUT
		}
		fds := []unix.PollFd{{Fd: int32(b.fd), Events: unix.POLLIN}}
		if _, err := unix.Poll(fds, int(wait.Milliseconds())+1); err != nil && err != unix.EINTR {
			return nil, err
		}
	}
}
