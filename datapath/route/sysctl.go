// Package route holds what the appliance sets in the kernel's routing
// layer: the sysctls that forwarding and multipath need, and, through
// Target, the routes learned from BGP, installed as multipath (ECMP)
// routes over the cluster nodes that announce them and marked with a
// protocol of their own so that no other route is ever touched.
package route

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Sysctls are the settings the datapath needs, by /proc/sys path:
// forwarding for both families; multipath next hops chosen by a hash of
// the L4 5-tuple (policy 1) rather than of the addresses only, so that the
// flows of one client spread over ECMP paths; and loose reverse-path
// filtering, since with ECMP a reply may come back on another link.
var Sysctls = map[string]string{
	"net/ipv4/ip_forward":                "1",
	"net/ipv6/conf/all/forwarding":       "1",
	"net/ipv4/fib_multipath_hash_policy": "1",
	"net/ipv6/fib_multipath_hash_policy": "1",
	"net/ipv4/conf/all/rp_filter":        "2",
	"net/ipv4/conf/default/rp_filter":    "2",
}

// ApplySysctls writes every setting under root (normally /proc/sys, which
// shows the calling thread's network namespace). It writes them all and
// reports every failure.
func ApplySysctls(root string, settings map[string]string) error {
	var errs []error
	for path, val := range settings {
		p := filepath.Join(root, path)
		if cur, err := os.ReadFile(p); err == nil && strings.TrimSpace(string(cur)) == val {
			continue
		}
		if err := os.WriteFile(p, []byte(val), 0o644); err != nil {
			errs = append(errs, fmt.Errorf("route: sysctl %s=%s: %w", strings.ReplaceAll(path, "/", "."), val, err))
		}
	}
	return errors.Join(errs...)
}
