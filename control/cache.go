package control

import (
	"net/netip"
	"slices"

	"portico.dev/appliance/control/config"
)

// Cache remembers each VIP compile built, until the VIP's configuration or
// the health of one of its checked backends changes (for a Kubernetes VIP:
// until its key or its backends change). Building the Maglev
// tables of 10,000 VIPs takes tens of milliseconds, and even parsing their
// addresses again takes milliseconds: more than the rest of a backend change
// costs. Handing back the very same VIP, slices included, also lets the
// reconciler and the L4 target see at once that it did not change.
//
// Compile gives the same Desired with a Cache as without; only the time
// differs. The zero value is ready to use; a nil *Cache compiles every VIP.
// Not safe for concurrent use: the daemon's goroutine owns it.
type Cache struct {
	byName map[string]*cachedVIP
	// compiles counts Compile calls, to forget the VIPs a compile did not
	// see; seen counts the VIPs of this one.
	compiles uint64
	seen     int
	// k8s are the Kubernetes VIPs by name; k8sSeen counts those of this
	// compile.
	k8s     map[string]*cachedK8s
	k8sSeen int
}

// cachedK8s is a Kubernetes VIP with its lookup table: compile builds its
// backends anew every time (cheap), and reuses the VIP while they, its key
// and its scheduler stay the same.
type cachedK8s struct {
	vip  VIP
	err  error
	used uint64
}

type cachedVIP struct {
	// cfg is the configuration the VIP was compiled from, with its
	// backends and weights copied: a new configuration may reuse neither
	// the slice nor the pointers.
	cfg      config.VIP
	backends []config.Backend
	weights  []int
	checked  bool // cv.Health != nil
	health   config.Health
	// ids are the HealthIDs of the backends, in the order of cfg's, and up
	// what the state said of each, for a VIP with a health check.
	ids []string
	up  []bool

	vip  VIP
	err  error
	used uint64
}

// begin starts a compile.
func (c *Cache) begin() {
	if c != nil {
		c.compiles++
		c.seen, c.k8sSeen = 0, 0
	}
}

// vip is compileVIP(cv, state), from the cache when neither cv nor the state
// of its checked backends changed.
func (c *Cache) vip(cv config.VIP, state map[string]bool) (VIP, error) {
	if c == nil {
		return compileVIP(cv, state)
	}
	if c.byName == nil {
		c.byName = map[string]*cachedVIP{}
	}
	e := c.byName[cv.Name]
	if e == nil || !e.holds(cv, state) {
		e = newCachedVIP(cv, state)
		c.byName[cv.Name] = e
	}
	if e.used != c.compiles {
		e.used = c.compiles
		c.seen++
	}
	return e.vip, e.err
}

// k8sVIP returns v with its lookup table, from the cache when a VIP of
// the same name, key, scheduler and backends was compiled before; the
// error says why it has no table.
func (c *Cache) k8sVIP(v VIP) (VIP, error) {
	if c == nil {
		slots, err := table(v)
		v.Slots = slots
		return v, err
	}
	if c.k8s == nil {
		c.k8s = map[string]*cachedK8s{}
	}
	e := c.k8s[v.Name]
	if e == nil || e.vip.Key != v.Key || e.vip.Scheduler != v.Scheduler || e.vip.SNAT != v.SNAT ||
		!slices.Equal(e.vip.Backends, v.Backends) {
		e = &cachedK8s{vip: v}
		e.vip.Slots, e.err = table(v)
		c.k8s[v.Name] = e
	}
	if e.used != c.compiles {
		e.used = c.compiles
		c.k8sSeen++
	}
	return e.vip, e.err
}

// end forgets the VIPs the compile did not see.
func (c *Cache) end() {
	if c == nil {
		return
	}
	if c.seen != len(c.byName) {
		for name, e := range c.byName {
			if e.used != c.compiles {
				delete(c.byName, name)
			}
		}
	}
	if c.k8sSeen != len(c.k8s) {
		for name, e := range c.k8s {
			if e.used != c.compiles {
				delete(c.k8s, name)
			}
		}
	}
}

func newCachedVIP(cv config.VIP, state map[string]bool) *cachedVIP {
	e := &cachedVIP{cfg: cv, backends: append([]config.Backend(nil), cv.Backends...)}
	e.cfg.Backends, e.cfg.Health = nil, nil
	for _, b := range cv.Backends {
		e.weights = append(e.weights, weight(b))
	}
	if cv.Health != nil {
		e.checked, e.health = true, *cv.Health
		for _, b := range cv.Backends {
			ap := netip.MustParseAddrPort(b.Address)
			id := HealthID(cv.Name, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()))
			e.ids = append(e.ids, id)
			e.up = append(e.up, upIn(state, id))
		}
	}
	e.vip, e.err = compileVIP(cv, state)
	return e
}

// holds reports whether e was compiled from cv and the same health state.
func (e *cachedVIP) holds(cv config.VIP, state map[string]bool) bool {
	if cv.Name != e.cfg.Name || cv.Address != e.cfg.Address || cv.Port != e.cfg.Port ||
		cv.Protocol != e.cfg.Protocol || cv.Scheduler != e.cfg.Scheduler || cv.SNAT != e.cfg.SNAT ||
		len(cv.Backends) != len(e.backends) || (cv.Health != nil) != e.checked {
		return false
	}
	if cv.Health != nil && *cv.Health != e.health {
		return false
	}
	for i, b := range cv.Backends {
		if b.Address != e.backends[i].Address || weight(b) != e.weights[i] {
			return false
		}
	}
	for i, id := range e.ids {
		if upIn(state, id) != e.up[i] {
			return false
		}
	}
	return true
}

func weight(b config.Backend) int {
	if b.Weight == nil {
		return 0
	}
	return *b.Weight
}

// upIn is a checked backend's state: up unless the state says otherwise, as
// compileVIP takes it.
func upIn(state map[string]bool, id string) bool {
	up, ok := state[id]
	return up || !ok
}
