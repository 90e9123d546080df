package config

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/api/validate/content"
	"k8s.io/apimachinery/pkg/util/validation"
)

// Defaults for what a file leaves out.
const (
	DefaultStore      = "/var/lib/appliance/state.db"
	DefaultWeight     = 1
	DefaultInterval   = 2 * time.Second
	DefaultTimeout    = time.Second
	DefaultRise       = 2
	DefaultFall       = 3
	DefaultHealthPath = "/"

	DefaultListenPort    = 179
	DefaultHoldTime      = 9 * time.Second
	DefaultBFDInterval   = 300 * time.Millisecond
	DefaultBFDMultiplier = 3
	DefaultRestartTime   = 120 * time.Second

	// DefaultLoadBalancerClass is the kubernetes.load-balancer-class
	// when clusters are configured and the key is empty.
	DefaultLoadBalancerClass = "portico.dev/appliance"
	// DefaultForwardTo is the kubernetes.forward-to when clusters are
	// configured and the key is empty.
	DefaultForwardTo = "pods"
)

// Limits of the BGP keys.
const (
	keepaliveRatio  = 3 // keepalive ≤ hold-time/3, as RFC 4271 §10 suggests
	minHoldTime     = 3 * time.Second
	maxHoldTime     = 65535 * time.Second // 16 bits of seconds in OPEN
	maxRestartTime  = 4095 * time.Second  // 12 bits of seconds in the GR capability
	minBFDInterval  = 50 * time.Millisecond
	maxBFDInterval  = 4294967295 * time.Microsecond
	maxTCPMD5KeyLen = 80 // TCP_MD5SIG_MAXKEYLEN in linux/tcp.h
)

func (c *Config) setDefaults() {
	if c.Store == "" {
		c.Store = DefaultStore
	}
	if c.Log.Level == "" {
		c.Log.Level = "info"
	}
	if c.Log.Format == "" {
		c.Log.Format = "text"
	}
	for i := range c.VIPs {
		v := &c.VIPs[i]
		if v.Protocol == "" {
			v.Protocol = "tcp"
		}
		if v.Scheduler == "" {
			v.Scheduler = "maglev"
		}
		for j := range v.Backends {
			if v.Backends[j].Weight == nil {
				w := DefaultWeight
				v.Backends[j].Weight = &w
			}
		}
		if h := v.Health; h != nil {
			if h.Interval == 0 {
				h.Interval = DefaultInterval
			}
			if h.Timeout == 0 {
				h.Timeout = min(DefaultTimeout, h.Interval)
			}
			if h.Rise == 0 {
				h.Rise = DefaultRise
			}
			if h.Fall == 0 {
				h.Fall = DefaultFall
			}
			if h.Type == "http" && h.Path == "" {
				h.Path = DefaultHealthPath
			}
		}
	}
	c.BGP.setDefaults()
	// The kubernetes defaults apply only with clusters, so that a file
	// without them keeps the section empty (and show config says so).
	if len(c.Kubernetes.Clusters) > 0 {
		if c.Kubernetes.LoadBalancerClass == "" {
			c.Kubernetes.LoadBalancerClass = DefaultLoadBalancerClass
		}
		if c.Kubernetes.ForwardTo == "" {
			c.Kubernetes.ForwardTo = DefaultForwardTo
		}
	}
}

// setDefaults fills the BGP keys a file leaves out or sets to 0. A 0
// hold-time therefore means 9s, not "no hold timer": the field cannot tell
// an absent key from an explicit 0.
func (b *BGP) setDefaults() {
	if b.ListenPort == 0 {
		b.ListenPort = DefaultListenPort
	}
	if b.GracefulRestart.Enabled && b.GracefulRestart.RestartTime == 0 {
		b.GracefulRestart.RestartTime = DefaultRestartTime
	}
	for i := range b.Peers {
		p := &b.Peers[i]
		if p.HoldTime == 0 {
			p.HoldTime = DefaultHoldTime
		}
		if p.Keepalive == 0 {
			// A third of the hold time in whole seconds (3s for the
			// default 9s), at least 1s even when the hold time is
			// refused, so that only the hold time is reported.
			p.Keepalive = max(time.Second, (p.HoldTime / keepaliveRatio).Truncate(time.Second))
		}
		if p.BFD.Enabled {
			if p.BFD.Interval == 0 {
				p.BFD.Interval = DefaultBFDInterval
			}
			if p.BFD.Multiplier == 0 {
				p.BFD.Multiplier = DefaultBFDMultiplier
			}
		}
	}
}

// Validate checks every field and returns all problems found.
func (c *Config) Validate() Errors {
	var errs Errors
	bad := func(path, format string, args ...any) {
		errs = append(errs, FieldError{path, fmt.Sprintf(format, args...)})
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		bad("log.level", "must be debug, info, warn or error, not %q", c.Log.Level)
	}
	if c.Log.Format != "text" && c.Log.Format != "json" {
		bad("log.format", "must be text or json, not %q", c.Log.Format)
	}
	names := map[string]string{}
	keys := map[string]string{}
	for i, v := range c.VIPs {
		p := fmt.Sprintf("vips[%d]", i)
		switch {
		case v.Name == "":
			bad(p+".name", "required")
		case names[v.Name] != "":
			bad(p+".name", "%q is already the name of %s", v.Name, names[v.Name])
		default:
			names[v.Name] = p
		}
		addr, err := netip.ParseAddr(v.Address)
		switch {
		case err != nil:
			bad(p+".address", "not an IP address: %q", v.Address)
		case addr.Zone() != "" || addr.IsUnspecified() || addr.IsMulticast() || addr.IsLoopback() || addr.Is4In6():
			bad(p+".address", "%s cannot be a VIP (unspecified, multicast, loopback, zoned or v4-mapped)", addr)
		}
		if v.Port < 1 || v.Port > 65535 {
			bad(p+".port", "must be 1..65535, not %d", v.Port)
		}
		if v.Protocol != "tcp" && v.Protocol != "udp" {
			bad(p+".protocol", "must be tcp or udp, not %q", v.Protocol)
		}
		if v.Scheduler != "maglev" && v.Scheduler != "round-robin" {
			bad(p+".scheduler", "must be maglev or round-robin, not %q", v.Scheduler)
		}
		if err == nil && v.Port >= 1 && v.Port <= 65535 {
			k := fmt.Sprintf("%s/%s", netip.AddrPortFrom(addr, uint16(v.Port)), v.Protocol)
			if other := keys[k]; other != "" {
				bad(p, "%s is already served by %s", k, other)
			} else {
				keys[k] = p
			}
		}
		if h := v.Health; h != nil {
			validateHealth(p+".health", h, bad)
		}
		seen := map[netip.AddrPort]string{}
		for j, b := range v.Backends {
			bp := fmt.Sprintf("%s.backends[%d]", p, j)
			ap, perr := netip.ParseAddrPort(b.Address)
			ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
			switch {
			case perr != nil:
				bad(bp+".address", "not address:port ([v6]:port for IPv6): %q", b.Address)
			case ap.Port() == 0:
				bad(bp+".address", "port must be 1..65535, not 0")
			case err == nil && ap.Addr() == addr:
				bad(bp+".address", "is the VIP itself")
			case err == nil && ap.Addr().Is4() != addr.Is4():
				bad(bp+".address", "%s is not of the VIP's address family", ap.Addr())
			case ap.Addr().IsUnspecified() || ap.Addr().IsMulticast() || ap.Addr().Zone() != "":
				bad(bp+".address", "%s cannot be a backend", ap.Addr())
			case seen[ap] != "":
				bad(bp+".address", "%s is already %s", ap, seen[ap])
			default:
				seen[ap] = bp
			}
			if b.Weight != nil && (*b.Weight < 1 || *b.Weight > 1000) {
				bad(bp+".weight", "must be 1..1000, not %d", *b.Weight)
			}
		}
	}
	validatePools(c.Pools, bad)
	validateBGP(&c.BGP, bad)
	validateKubernetes(&c.Kubernetes, bad)
	if s := c.Management.GNMI.Socket; s != "" && !filepath.IsAbs(s) {
		bad("management.gnmi.socket", "must be an absolute path, not %q", s)
	}
	if m := c.Management.Metrics; m != "" {
		if _, err := netip.ParseAddrPort(m); err != nil {
			bad("management.metrics", "not address:port: %q", m)
		}
	}
	return errs
}

// validatePools checks the pools' names and prefixes. No address may be in
// two prefixes, of one pool or of two, because the address manager must know
// which pool, and so which auto-assign setting, an address belongs to.
func validatePools(pools []Pool, bad func(string, string, ...any)) {
	type seenPrefix struct {
		pfx  netip.Prefix
		path string
		pool string
	}
	var seen []seenPrefix
	poolNames := map[string]bool{}
	for i, pl := range pools {
		p := fmt.Sprintf("pools[%d]", i)
		if pl.Name == "" {
			bad(p+".name", "required")
		} else if poolNames[pl.Name] {
			bad(p+".name", "%q is already a pool", pl.Name)
		}
		poolNames[pl.Name] = true
		if len(pl.CIDRs) == 0 {
			bad(p+".cidrs", "at least one prefix required")
		}
		for j, cidr := range pl.CIDRs {
			cp := fmt.Sprintf("%s.cidrs[%d]", p, j)
			pfx, err := netip.ParsePrefix(cidr)
			switch {
			case err != nil || pfx.Masked() != pfx:
				bad(cp, "not a network prefix (address bits past the length must be zero): %q", cidr)
				continue
			case pfx.Addr().Is4In6():
				bad(cp, "%s is IPv4-mapped; write the IPv4 prefix instead", pfx)
				continue
			}
			overlap := false
			for _, o := range seen {
				if o.pfx.Overlaps(pfx) {
					bad(cp, "%s overlaps %s of pool %q (%s)", pfx, o.pfx, o.pool, o.path)
					overlap = true
					break
				}
			}
			if !overlap {
				seen = append(seen, seenPrefix{pfx, cp, pl.Name})
			}
		}
	}
}

// validateKubernetes checks the kubernetes keys. The class and the ingress
// class are checked whenever they are set, cluster or not.
func validateKubernetes(k *Kubernetes, bad func(string, string, ...any)) {
	names := map[string]string{}
	for i, cl := range k.Clusters {
		p := fmt.Sprintf("kubernetes.clusters[%d]", i)
		switch {
		case cl.Name == "":
			bad(p+".name", "required")
		case len(validation.IsDNS1123Label(cl.Name)) > 0:
			// The name is the first part of a Service's key
			// (cluster/namespace/name) in leases, logs and Events.
			bad(p+".name", "must be a DNS label (lower case letters, digits and '-', at most 63), not %q", cl.Name)
		case names[cl.Name] != "":
			bad(p+".name", "%q is already the name of %s", cl.Name, names[cl.Name])
		default:
			names[cl.Name] = p
		}
		switch {
		case cl.Kubeconfig == "":
			bad(p+".kubeconfig", "required")
		case !filepath.IsAbs(cl.Kubeconfig):
			bad(p+".kubeconfig", "must be an absolute path, not %q", cl.Kubeconfig)
		}
	}
	if c := k.LoadBalancerClass; c != "" {
		if msgs := content.IsLabelKey(c); len(msgs) > 0 {
			bad("kubernetes.load-balancer-class", "must be a qualified name with a domain prefix, like %s, not %q: %s", DefaultLoadBalancerClass, c, strings.Join(msgs, "; "))
		} else if !strings.Contains(c, "/") {
			bad("kubernetes.load-balancer-class", "must have a domain prefix, like %s, not %q", DefaultLoadBalancerClass, c)
		}
	}
	switch k.ForwardTo {
	case "", "pods", "nodeports":
	default:
		bad("kubernetes.forward-to", "must be pods or nodeports, not %q", k.ForwardTo)
	}
	if ic := k.IngressClass; ic != "" && len(validation.IsDNS1123Label(ic)) > 0 {
		bad("kubernetes.ingress-class", "must be a DNS label (lower case letters, digits and '-', at most 63), not %q", ic)
	}
}

func validateHealth(p string, h *Health, bad func(string, string, ...any)) {
	if h.Type != "tcp" && h.Type != "http" {
		bad(p+".type", "must be tcp or http, not %q", h.Type)
	}
	if h.Type == "http" && !strings.HasPrefix(h.Path, "/") {
		bad(p+".path", "must start with /: %q", h.Path)
	}
	if h.Type == "tcp" && h.Path != "" {
		bad(p+".path", "only for type http")
	}
	if h.Interval < 10*time.Millisecond {
		bad(p+".interval", "must be at least 10ms, not %s", h.Interval)
	}
	if h.Timeout <= 0 || h.Timeout > h.Interval {
		bad(p+".timeout", "must be more than 0 and at most the interval (%s), not %s", h.Interval, h.Timeout)
	}
	if h.Rise < 1 || h.Rise > 100 {
		bad(p+".rise", "must be 1..100, not %d", h.Rise)
	}
	if h.Fall < 1 || h.Fall > 100 {
		bad(p+".fall", "must be 1..100, not %d", h.Fall)
	}
}

func validateBGP(b *BGP, bad func(string, string, ...any)) {
	// Without peers the appliance runs no BGP, so asn and router-id may
	// be left out; a router-id that is given is still checked.
	if b.ASN == 0 && len(b.Peers) > 0 {
		bad("bgp.asn", "required when peers are configured")
	}
	if b.RouterID == "" {
		if len(b.Peers) > 0 {
			bad("bgp.router-id", "required when peers are configured")
		}
	} else if id, err := netip.ParseAddr(b.RouterID); err != nil || !id.Is4() {
		bad("bgp.router-id", "not an IPv4 address: %q", b.RouterID)
	} else if id.IsUnspecified() {
		bad("bgp.router-id", "must not be 0.0.0.0")
	}
	if b.ListenPort < 0 || b.ListenPort > 65535 {
		bad("bgp.listen-port", "must be 0..65535, not %d", b.ListenPort)
	}
	if gr := b.GracefulRestart; gr.Enabled {
		// The restart time travels in a 12-bit field of the
		// graceful-restart capability (RFC 4724 §3).
		checkSeconds("bgp.graceful-restart.restart-time", gr.RestartTime, time.Second, maxRestartTime, bad)
	}
	names := map[string]string{}
	addrs := map[netip.Addr]string{}
	for i := range b.Peers {
		validatePeer(fmt.Sprintf("bgp.peers[%d]", i), &b.Peers[i], names, addrs, bad)
	}
}

// validatePeer checks one peer; names and addrs hold the peers seen so far.
func validatePeer(p string, peer *Peer, names map[string]string, addrs map[netip.Addr]string, bad func(string, string, ...any)) {
	switch {
	case peer.Name == "":
		bad(p+".name", "required")
	case names[peer.Name] != "":
		bad(p+".name", "%q is already the name of %s", peer.Name, names[peer.Name])
	default:
		names[peer.Name] = p
	}
	addr, err := netip.ParseAddr(peer.Address)
	switch {
	case err != nil:
		bad(p+".address", "not an IP address: %q", peer.Address)
	case addr.Zone() != "":
		bad(p+".address", "%s has a zone, which is not supported yet; use a global or unique-local address", addr)
	case addr.Is6() && addr.IsLinkLocalUnicast():
		bad(p+".address", "%s is link-local and would need a zone, which is not supported yet; use a global or unique-local address", addr)
	case addr.IsUnspecified() || addr.IsMulticast() || addr.Is4In6() || addr == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		bad(p+".address", "%s cannot be a peer (unspecified, multicast, broadcast or v4-mapped)", addr)
	case addrs[addr] != "":
		bad(p+".address", "%s is already the address of %s", addr, addrs[addr])
	default:
		addrs[addr] = p
	}
	if peer.ASN == 0 {
		bad(p+".asn", "required")
	}
	switch peer.Role {
	case "node", "upstream":
	case "":
		bad(p+".role", "required (node or upstream)")
	default:
		bad(p+".role", "must be node or upstream, not %q", peer.Role)
	}
	if n := len(peer.Password); n > maxTCPMD5KeyLen {
		bad(p+".password", "must be at most %d bytes (the TCP MD5 key limit), not %d", maxTCPMD5KeyLen, n)
	}
	if peer.Multihop < 0 || peer.Multihop > 255 {
		bad(p+".multihop", "must be 0..255, not %d", peer.Multihop)
	}
	// The hold time is a 16-bit count of seconds in the OPEN message,
	// and 1s and 2s are not allowed (RFC 4271 §4.2).
	holdOK := checkSeconds(p+".hold-time", peer.HoldTime, minHoldTime, maxHoldTime, bad)
	keepaliveOK := checkSeconds(p+".keepalive", peer.Keepalive, time.Second, maxHoldTime, bad)
	if holdOK && keepaliveOK && peer.Keepalive*keepaliveRatio > peer.HoldTime {
		bad(p+".keepalive", "must be at most a third of hold-time %ds, not %ds", peer.HoldTime/time.Second, peer.Keepalive/time.Second)
	}
	if bfd := peer.BFD; bfd.Enabled {
		// BFD carries the interval as a 32-bit count of microseconds.
		switch {
		case bfd.Interval < minBFDInterval:
			bad(p+".bfd.interval", "must be at least 50ms, not %s", bfd.Interval)
		case bfd.Interval > maxBFDInterval:
			bad(p+".bfd.interval", "must be at most %s, not %s", maxBFDInterval, bfd.Interval)
		case bfd.Interval%time.Microsecond != 0:
			bad(p+".bfd.interval", "must be a whole number of microseconds, not %s", bfd.Interval)
		}
		if bfd.Multiplier < 1 || bfd.Multiplier > 255 {
			bad(p+".bfd.multiplier", "must be 1..255, not %d", bfd.Multiplier)
		}
	}
	// accept and max-prefixes filter what a node announces; communities
	// go on what the appliance announces to an upstream. Checked against
	// the role only when the role itself is valid.
	switch {
	case peer.Role == "upstream" && len(peer.Accept) > 0:
		bad(p+".accept", "only for role node")
	default:
		for j, a := range peer.Accept {
			if pfx, err := netip.ParsePrefix(a); err != nil || pfx.Masked() != pfx {
				bad(fmt.Sprintf("%s.accept[%d]", p, j), "not a network prefix (address bits past the length must be zero): %q", a)
			}
		}
	}
	switch {
	case peer.MaxPrefixes < 0:
		bad(p+".max-prefixes", "must be 0 (no limit) or more, not %d", peer.MaxPrefixes)
	case peer.Role == "upstream" && peer.MaxPrefixes > 0:
		bad(p+".max-prefixes", "only for role node")
	}
	switch {
	case peer.Role == "node" && len(peer.Communities) > 0:
		bad(p+".communities", "only for role upstream")
	default:
		for j, c := range peer.Communities {
			if !isCommunity(c) {
				bad(fmt.Sprintf("%s.communities[%d]", p, j), "not a community (ASN:VALUE, each 0..65535) or large community (A:B:C, each 0..4294967295): %q", c)
			}
		}
	}
}

// checkSeconds reports d unless it is a whole number of seconds within
// lo..hi, and says whether it is: BGP carries these times in seconds, so a
// fraction would be dropped silently further down.
func checkSeconds(path string, d, lo, hi time.Duration, bad func(string, string, ...any)) bool {
	switch {
	case d%time.Second != 0:
		bad(path, "must be a whole number of seconds, not %s", d)
	case d < lo || d > hi:
		bad(path, "must be %ds..%ds, not %ds", lo/time.Second, hi/time.Second, d/time.Second)
	default:
		return true
	}
	return false
}

// isCommunity reports whether s is a standard community (RFC 1997,
// "65000:100") or a large community (RFC 8092, "4200000000:1:2").
func isCommunity(s string) bool {
	parts := strings.Split(s, ":")
	bits := 0
	switch len(parts) {
	case 2:
		bits = 16
	case 3:
		bits = 32
	default:
		return false
	}
	for _, part := range parts {
		// ParseUint refuses signs, spaces and empty parts.
		if _, err := strconv.ParseUint(part, 10, bits); err != nil {
			return false
		}
	}
	return true
}
