package main

import (
	"context"
	"encoding/binary"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// fib follows the routes of the main table of a namespace through netlink
// notifications, keeping for each prefix that match selects its number of
// next hops, and the time of the last change. Times are taken when a
// notification is read, a few microseconds after the kernel made the change.
//
// It reads the notifications itself, into one buffer: the netlink library's
// subscription zeroes a 64 KiB buffer and decodes every attribute for each
// notification, which at 100,000 routes took the bench a good part of a core
// beside the router it measures.
type fib struct {
	match func(netip.Prefix) bool
	s     *nl.NetlinkSocket

	mu      sync.Mutex
	hops    map[netip.Prefix]int
	last    time.Time
	err     error         // why notifications stopped, if they did
	changed chan struct{} // gets a value after each change, if it has room
	done    chan struct{}
	wg      sync.WaitGroup
}

// watchFIB starts following the namespace at nsPath; close stops it.
func watchFIB(nsPath string, match func(netip.Prefix) bool) (*fib, error) {
	ns, err := netns.GetFromPath(nsPath)
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	s, err := nl.SubscribeAt(ns, netns.None(), unix.NETLINK_ROUTE, unix.RTNLGRP_IPV4_ROUTE, unix.RTNLGRP_IPV6_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("subscribe to routes: %w", err)
	}
	// Room for every notification of a burst, so that reading them never
	// falls behind enough for the socket's buffer to overflow.
	if err := s.SetReceiveBufferSize(64<<20, true); err != nil {
		s.Close()
		return nil, fmt.Errorf("subscribe to routes: %w", err)
	}
	f := &fib{match: match, s: s, hops: map[netip.Prefix]int{}, changed: make(chan struct{}, 1), done: make(chan struct{})}
	f.wg.Go(f.read)
	return f, nil
}

// read takes in notifications until close.
func (f *fib) read() {
	buf := make([]byte, 1<<20)
	fd := f.s.GetFd() // non-blocking
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		switch {
		case err == unix.EAGAIN || err == unix.EINTR:
			select {
			case <-f.done:
				return
			default:
			}
			fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			if _, err := unix.Poll(fds, 100); err != nil && err != unix.EINTR {
				f.fail(err)
				return
			}
			continue
		case err != nil:
			f.fail(err) // ENOBUFS: notifications were lost
			return
		}
		now := time.Now()
		for m := buf[:n]; len(m) >= unix.SizeofNlMsghdr; {
			l := int(binary.NativeEndian.Uint32(m))
			if l < unix.SizeofNlMsghdr || l > len(m) {
				break
			}
			f.update(now, binary.NativeEndian.Uint16(m[4:]), m[unix.SizeofNlMsghdr:l])
			m = m[min(len(m), (l+3)&^3):]
		}
	}
}

func (f *fib) fail(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err == nil {
		f.err = fmt.Errorf("route notifications: %w", err)
	}
	f.signal()
}

// update takes in one message: an rtmsg and its attributes.
func (f *fib) update(now time.Time, typ uint16, msg []byte) {
	if (typ != unix.RTM_NEWROUTE && typ != unix.RTM_DELROUTE) || len(msg) < unix.SizeofRtMsg {
		return
	}
	family, bits, table := msg[0], int(msg[1]), uint32(msg[4])
	var dst []byte
	hops := 1
	for a := msg[unix.SizeofRtMsg:]; len(a) >= unix.SizeofRtAttr; {
		l := int(binary.NativeEndian.Uint16(a))
		if l < unix.SizeofRtAttr || l > len(a) {
			break
		}
		data := a[unix.SizeofRtAttr:l]
		switch binary.NativeEndian.Uint16(a[2:]) {
		case unix.RTA_DST:
			dst = data
		case unix.RTA_TABLE:
			if len(data) == 4 {
				table = binary.NativeEndian.Uint32(data)
			}
		case unix.RTA_MULTIPATH:
			hops = 0
			for nh := data; len(nh) >= unix.SizeofRtNexthop; hops++ {
				size := int(binary.NativeEndian.Uint16(nh))
				if size < unix.SizeofRtNexthop || size > len(nh) {
					break
				}
				nh = nh[min(len(nh), (size+3)&^3):]
			}
		}
		a = a[min(len(a), (l+3)&^3):]
	}
	ip, ok := netip.AddrFromSlice(dst)
	if table != unix.RT_TABLE_MAIN || !ok || (family == unix.AF_INET) != ip.Is4() {
		return
	}
	p := netip.PrefixFrom(ip, bits)
	if !f.match(p) {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if typ == unix.RTM_NEWROUTE {
		f.hops[p] = max(1, hops)
	} else {
		delete(f.hops, p)
	}
	f.last = now
	f.signal()
}

// signal wakes a waiter; f.mu is held.
func (f *fib) signal() {
	select {
	case f.changed <- struct{}{}:
	default:
	}
}

// wait waits until ok holds for the prefixes and their next hop counts, and
// returns the time of the change that made it hold.
func (f *fib) wait(ctx context.Context, timeout time.Duration, ok func(map[netip.Prefix]int) bool) (time.Time, error) {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		f.mu.Lock()
		if f.err != nil {
			err := f.err
			f.mu.Unlock()
			return time.Time{}, err
		}
		if ok(f.hops) {
			t := f.last
			f.mu.Unlock()
			return t, nil
		}
		f.mu.Unlock()
		select {
		case <-f.changed:
		case <-timer.C:
			return time.Time{}, fmt.Errorf("not within %s", timeout)
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		}
	}
}

func (f *fib) close() {
	close(f.done)
	f.wg.Wait()
	f.s.Close()
}
