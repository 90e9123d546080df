package main

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// fib follows the routes of the main table of a namespace through netlink
// notifications, keeping for each prefix that match selects its number of
// next hops, and the time of the last change. Times are taken when a
// notification is read, a few microseconds after the kernel made the change.
type fib struct {
	match func(netip.Prefix) bool

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
	f := &fib{match: match, hops: map[netip.Prefix]int{}, changed: make(chan struct{}, 1), done: make(chan struct{})}
	// Room for every notification of a burst, so that reading them never
	// falls behind enough for the socket's buffer to overflow.
	ch := make(chan netlink.RouteUpdate, 1<<18)
	err = netlink.RouteSubscribeWithOptions(ch, f.done, netlink.RouteSubscribeOptions{
		Namespace:              &ns,
		ReceiveBufferSize:      64 << 20,
		ReceiveBufferForceSize: true,
		ErrorCallback:          f.fail,
	})
	if err != nil {
		return nil, fmt.Errorf("subscribe to routes: %w", err)
	}
	f.wg.Go(func() {
		for u := range ch {
			f.update(u)
		}
	})
	return f, nil
}

func (f *fib) fail(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err == nil {
		f.err = fmt.Errorf("route notifications: %w", err)
	}
	f.signal()
}

func (f *fib) update(u netlink.RouteUpdate) {
	now := time.Now()
	if u.Table != unix.RT_TABLE_MAIN || u.Dst == nil {
		return
	}
	ip, ok := netip.AddrFromSlice(u.Dst.IP)
	if !ok {
		return
	}
	ones, _ := u.Dst.Mask.Size()
	p := netip.PrefixFrom(ip.Unmap(), ones)
	if !f.match(p) {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	switch u.Type {
	case unix.RTM_NEWROUTE:
		f.hops[p] = max(1, len(u.MultiPath))
	case unix.RTM_DELROUTE:
		delete(f.hops, p)
	default:
		return
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
}
