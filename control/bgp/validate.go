package bgp

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Limits of what gobgp and the BGP messages can carry.
const (
	minHoldTime     = 3 * time.Second     // 1 s and 2 s are not allowed (RFC 4271 §4.2)
	maxHoldTime     = 65535 * time.Second // 16 bits of seconds in OPEN
	maxTCPMD5KeyLen = 80                  // TCP_MD5SIG_MAXKEYLEN in linux/tcp.h
	maxRestartTime  = 4095 * time.Second  // 12 bits of seconds in the graceful-restart capability
	// BFD carries intervals in 32 bits of microseconds. Below 10 ms gobgp, which runs
	// BFD in a goroutine per peer, cannot keep time.
	minBFDInterval = 10 * time.Millisecond
	maxBFDInterval = 4294967295 * time.Microsecond
)

// validate returns an error naming every bad field of c, or nil.
func validate(c Config) error {
	var errs []error
	bad := func(where, format string, args ...any) {
		errs = append(errs, fmt.Errorf("bgp: %s: %s", where, fmt.Sprintf(format, args...)))
	}
	g := c.Global
	if g.ASN == 0 {
		if len(c.Peers) > 0 {
			bad("global asn", "required when there are peers")
		}
	} else if !g.RouterID.Is4() || g.RouterID.IsUnspecified() {
		bad("global router-id", "must be an IPv4 address other than 0.0.0.0, not %s", g.RouterID)
	}
	if g.ListenPort < -1 || g.ListenPort > 65535 {
		bad("global listen-port", "must be -1..65535, not %d", g.ListenPort)
	}
	for _, a := range g.ListenAddrs {
		if !a.IsValid() {
			bad("global listen-addrs", "an address is missing")
		}
	}
	if gr := g.GracefulRestart; gr.Enabled {
		checkSeconds("global", "graceful-restart restart-time", gr.RestartTime, time.Second, maxRestartTime, bad)
	} else if gr.RestartTime != 0 {
		bad("global", "graceful-restart restart-time: set, but graceful restart is off")
	}

	names := map[string]bool{}
	addrs := map[netip.Addr]string{}
	for i, p := range c.Peers {
		where := fmt.Sprintf("peer %q", p.Name)
		switch {
		case p.Name == "":
			where = fmt.Sprintf("peer #%d", i)
			bad(where, "name: required")
		case names[p.Name]:
			bad(where, "name: used by another peer")
		}
		names[p.Name] = true
		validatePeer(where, p, bad)
		if other, ok := addrs[p.Address]; ok && p.Address.IsValid() {
			bad(where, "address: %s is the address of peer %q too", p.Address, other)
		}
		addrs[p.Address] = p.Name
	}

	advs := map[netip.Prefix]bool{}
	for _, a := range c.Advertisements {
		switch {
		case !a.Prefix.IsValid():
			bad("advertisement", "a prefix is missing")
		case a.Prefix != a.Prefix.Masked():
			bad(fmt.Sprintf("advertisement %s", a.Prefix), "not a network prefix (bits past the length are set)")
		case advs[a.Prefix]:
			bad(fmt.Sprintf("advertisement %s", a.Prefix), "listed twice")
		}
		advs[a.Prefix] = true
	}
	return errors.Join(errs...)
}

// validatePeer checks the fields of p that do not depend on other peers.
func validatePeer(where string, p Peer, bad func(string, string, ...any)) {
	a := p.Address
	switch {
	case !a.IsValid():
		bad(where, "address: required")
	case a.Zone() != "" || a.IsLinkLocalUnicast():
		bad(where, "address: %s is link-local or has a zone, which is not supported", a)
	case a.IsUnspecified() || a.IsMulticast() || a.Is4In6():
		bad(where, "address: %s cannot be a peer (unspecified, multicast or v4-mapped)", a)
	}
	if p.ASN == 0 {
		bad(where, "asn: required")
	}
	if p.Role != Node && p.Role != Upstream {
		bad(where, "role: must be node or upstream, not %v", p.Role)
	}
	if len(p.Password) > maxTCPMD5KeyLen {
		bad(where, "password: at most %d bytes (the TCP MD5 key limit)", maxTCPMD5KeyLen)
	}
	if p.Multihop < 0 || p.Multihop > 255 {
		bad(where, "multihop: must be 0..255, not %d", p.Multihop)
	}
	holdOK := p.HoldTime == 0 || checkSeconds(where, "hold-time", p.HoldTime, minHoldTime, maxHoldTime, bad)
	keepaliveOK := p.Keepalive == 0 || checkSeconds(where, "keepalive", p.Keepalive, time.Second, maxHoldTime, bad)
	if holdOK && keepaliveOK && p.HoldTime > 0 && p.Keepalive*3 > p.HoldTime {
		bad(where, "keepalive: must be at most a third of the hold time %s, not %s", p.HoldTime, p.Keepalive)
	}
	if b := p.BFD; b.Enabled() {
		switch {
		case b.Interval < minBFDInterval || b.Interval > maxBFDInterval:
			bad(where, "bfd interval: must be %s..%s, not %s", minBFDInterval, maxBFDInterval, b.Interval)
		case b.Interval%time.Microsecond != 0:
			bad(where, "bfd interval: must be a whole number of microseconds, not %s", b.Interval)
		}
		if b.Multiplier < 1 || b.Multiplier > 255 {
			bad(where, "bfd multiplier: must be 1..255, not %d", b.Multiplier)
		}
	}
	if p.MaxPrefixes < 0 {
		bad(where, "max-prefixes: must be 0 (no limit) or more, not %d", p.MaxPrefixes)
	}
	if p.Role == Upstream && len(p.Accept) > 0 {
		bad(where, "accept: only for role node")
	}
	for _, pfx := range p.Accept {
		if !pfx.IsValid() || pfx != pfx.Masked() {
			bad(where, "accept: %s is not a network prefix", pfx)
		}
	}
	if p.Role == Node && len(p.Communities) > 0 {
		bad(where, "communities: only for role upstream")
	}
	for _, c := range p.Communities {
		if _, ok := parseCommunity(c); !ok {
			bad(where, "communities: %q is neither ASN:VALUE (each 0..65535) nor A:B:C (each 0..4294967295)", c)
		}
	}
}

// checkSeconds reports d unless it is a whole number of seconds within lo..hi, and says
// whether it is: BGP carries these times in seconds.
func checkSeconds(where, field string, d, lo, hi time.Duration, bad func(string, string, ...any)) bool {
	switch {
	case d%time.Second != 0:
		bad(where, "%s: must be a whole number of seconds, not %s", field, d)
	case d < lo || d > hi:
		bad(where, "%s: must be %d..%d seconds, not %s", field, lo/time.Second, hi/time.Second, d)
	default:
		return true
	}
	return false
}

// parseCommunity reports whether s is a standard community (RFC 1997, "65000:100") or a
// large one (RFC 8092, "4200000000:1:2"), and which.
func parseCommunity(s string) (large, ok bool) {
	parts := strings.Split(s, ":")
	bits := 16
	switch len(parts) {
	case 2:
	case 3:
		large, bits = true, 32
	default:
		return false, false
	}
	for _, p := range parts {
		if _, err := strconv.ParseUint(p, 10, bits); err != nil {
			return false, false
		}
	}
	return large, true
}
