package kube

import (
	"context"
	"fmt"
	"net"
	"runtime"

	"github.com/vishvananda/netns"
)

// inNetns runs fn on an OS thread inside the network namespace named ns (as ip netns
// names it), or where it is if ns is empty. Sockets fn creates stay in that namespace.
func inNetns(ns string, fn func() error) error {
	if ns == "" {
		return fn()
	}
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("kube: current network namespace: %w", err)
	}
	defer orig.Close()
	target, err := netns.GetFromName(ns)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("kube: network namespace %s: %w", ns, err)
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("kube: enter network namespace %s: %w", ns, err)
	}
	defer func() {
		// A thread that could not go back must not run other goroutines: leaving it
		// locked makes the runtime end it with this goroutine.
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
	}()
	return fn()
}

// dialIn returns a dial function whose connections start in the network namespace ns.
func dialIn(ns string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := inNetns(ns, func() error {
			var err error
			c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}

// freePorts returns n TCP ports on addr in the namespace ns that nothing listened on just
// now. Each listener stays open until all are found so that the ports differ.
func freePorts(ns, addr string, n int) ([]int, error) {
	var ports []int
	err := inNetns(ns, func() error {
		for range n {
			l, err := net.Listen("tcp", net.JoinHostPort(addr, "0"))
			if err != nil {
				return fmt.Errorf("kube: find a free port: %w", err)
			}
			defer l.Close()
			ports = append(ports, l.Addr().(*net.TCPAddr).Port)
		}
		return nil
	})
	return ports, err
}
