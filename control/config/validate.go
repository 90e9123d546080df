package config

import (
	"fmt"
	"net/netip"
	"strings"
	"time"
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
	poolNames := map[string]bool{}
	for i, pl := range c.Pools {
		p := fmt.Sprintf("pools[%d]", i)
		if pl.Name == "" {
			bad(p+".name", "required")
		} else if poolNames[pl.Name] {
			bad(p+".name", "%q is already a pool", pl.Name)
		}
		poolNames[pl.Name] = true
		for j, cidr := range pl.CIDRs {
			if pfx, err := netip.ParsePrefix(cidr); err != nil || pfx.Masked() != pfx {
				bad(fmt.Sprintf("%s.cidrs[%d]", p, j), "not a network prefix (address bits past the length must be zero): %q", cidr)
			}
		}
	}
	if m := c.Management.Metrics; m != "" {
		if _, err := netip.ParseAddrPort(m); err != nil {
			bad("management.metrics", "not address:port: %q", m)
		}
	}
	return errs
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
