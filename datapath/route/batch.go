package route

import (
	"encoding/binary"
	"fmt"
	"syscall"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// Limits of one batch: the messages of a batch go to the kernel in one
// write and are answered by one acknowledgement each, which must fit the
// socket's receive buffer (an error's acknowledgement carries the request
// back).
const (
	batchMessages = 256
	batchBytes    = 64 << 10
)

// batcher sends route changes to the kernel many to a write: 100,000
// routes are 100,000 messages, and a write and a read for each cost more
// than the kernel's work on it.
type batcher struct {
	s *nl.NetlinkSocket
}

// message is the netlink request for c, in table of protocol proto.
func message(c change, table int, proto uint8) []byte {
	var req *nl.NetlinkRequest
	var msg *nl.RtMsg
	switch c.op {
	case opDelete:
		req = nl.NewNetlinkRequest(unix.RTM_DELROUTE, unix.NLM_F_ACK)
		msg = nl.NewRtDelMsg()
	case opAdd:
		// Exclusive, so that a route of another protocol keeps its prefix:
		// NLM_F_REPLACE takes over a route of any protocol. That is also
		// why a replace is sent only for a prefix that Set knows is ours.
		req = nl.NewNetlinkRequest(unix.RTM_NEWROUTE, unix.NLM_F_ACK|unix.NLM_F_CREATE|unix.NLM_F_EXCL)
		msg = nl.NewRtMsg()
	default:
		req = nl.NewNetlinkRequest(unix.RTM_NEWROUTE, unix.NLM_F_ACK|unix.NLM_F_CREATE|unix.NLM_F_REPLACE)
		msg = nl.NewRtMsg()
	}
	p := c.route.Prefix
	msg.Family = unix.AF_INET6
	if p.Addr().Is4() {
		msg.Family = unix.AF_INET
	}
	msg.Dst_len = uint8(p.Bits())
	// On a delete, the protocol makes the kernel delete only our route,
	// whatever its next hops (all IPv6 siblings at once), never another
	// protocol's.
	msg.Protocol = proto
	attrs := []nl.NetlinkRequestData{nl.NewRtAttr(unix.RTA_DST, p.Addr().AsSlice())}
	if table < 256 {
		msg.Table = uint8(table)
	} else {
		msg.Table = unix.RT_TABLE_UNSPEC
		attrs = append(attrs, nl.NewRtAttr(unix.RTA_TABLE, binary.NativeEndian.AppendUint32(nil, uint32(table))))
	}
	if hops := c.route.NextHops; c.op != opDelete && len(hops) == 1 {
		attrs = append(attrs, nl.NewRtAttr(unix.RTA_GATEWAY, hops[0].Addr.AsSlice()))
	} else if c.op != opDelete {
		var mp []byte
		for _, nh := range hops {
			rtnh := &nl.RtNexthop{
				RtNexthop: unix.RtNexthop{Hops: uint8(nh.Weight - 1)},
				Children:  []nl.NetlinkRequestData{nl.NewRtAttr(unix.RTA_GATEWAY, nh.Addr.AsSlice())},
			}
			mp = append(mp, rtnh.Serialize()...)
		}
		attrs = append(attrs, nl.NewRtAttr(unix.RTA_MULTIPATH, mp))
	}
	req.AddData(msg)
	for _, a := range attrs {
		req.AddData(a)
	}
	return req.Serialize()
}

// send sends msgs, at most batchMessages of at most batchBytes in all, in
// one write, and returns the kernel's answer to each: nil, or the errno it
// refused the message with.
func (b *batcher) send(msgs [][]byte) ([]error, error) {
	var buf []byte
	want := make(map[uint32]int, len(msgs))
	for i, m := range msgs {
		want[binary.NativeEndian.Uint32(m[8:12])] = i
		buf = append(buf, m...)
	}
	if err := unix.Sendto(b.s.GetFd(), buf, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, fmt.Errorf("route: send %d messages: %w", len(msgs), err)
	}
	errs := make([]error, len(msgs))
	for left := len(msgs); left > 0; {
		answers, _, err := b.s.Receive()
		if err != nil {
			return nil, fmt.Errorf("route: read the acknowledgements of %d messages: %w", len(msgs), err)
		}
		for _, a := range answers {
			i, ok := want[a.Header.Seq]
			if !ok || a.Header.Type != unix.NLMSG_ERROR || len(a.Data) < 4 {
				continue
			}
			delete(want, a.Header.Seq)
			left--
			if errno := -int32(binary.NativeEndian.Uint32(a.Data[:4])); errno != 0 {
				errs[i] = syscall.Errno(errno)
			}
		}
	}
	return errs, nil
}

// applyAll sends cs in order, as few writes as the batch limits allow, and
// returns the kernel's answer to each.
func (b *batcher) applyAll(cs []change, table int, proto uint8) ([]error, error) {
	errs := make([]error, 0, len(cs))
	var msgs [][]byte
	size := 0
	flush := func() error {
		if len(msgs) == 0 {
			return nil
		}
		got, err := b.send(msgs)
		if err != nil {
			return err
		}
		errs = append(errs, got...)
		msgs, size = msgs[:0], 0
		return nil
	}
	for _, c := range cs {
		m := message(c, table, proto)
		if len(msgs) == batchMessages || size+len(m) > batchBytes {
			if err := flush(); err != nil {
				return errs, err
			}
		}
		msgs = append(msgs, m)
		size += len(m)
	}
	if err := flush(); err != nil {
		return errs, err
	}
	return errs, nil
}
