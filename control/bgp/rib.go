package bgp

import (
	"maps"
	"net/netip"
	"slices"

	"github.com/osrg/gobgp/v4/pkg/apiutil"
	"github.com/osrg/gobgp/v4/pkg/packet/bgp"

	"portico.dev/appliance/datapath/route"
)

// The Speaker keeps its own copy of each node's Adj-RIB-In, built from gobgp's events
// (the paths of every update the node sends, those that gobgp drops, End-of-RIB and
// session states), and learns again only the prefixes that an event touched. Reading
// gobgp's Adj-RIB-In instead (ListPath) costs the whole table per update and races
// with gobgp marking paths stale when a node restarts gracefully (gobgp v4.8.0 reads
// the paths outside its locks).
//
// The copy follows gobgp's own rules: a path replaces the node's earlier path for its
// prefix and a withdrawal removes it; a session that goes down for graceful restart
// keeps its paths, marked stale, and End-of-RIB drops the stale paths that were not
// sent again; any other end of the session, or of the restart time, drops them all.
// gobgp does not report paths that it refuses before they reach the Adj-RIB-In (an AS
// path with the appliance's own AS in it): a node that replaces a path with such a
// path keeps the earlier one here until it withdraws it.

// ribPath is a path a node sent, as the Speaker keeps it.
type ribPath struct {
	candidate
	stale    bool // kept from before the node restarted
	accepted bool // inside the node's accept list
}

// apply takes in the paths of one update of ps, or the paths gobgp dropped.
func (o *owner) apply(ps *peerState, paths []*apiutil.Path) {
	if ps.Role != Node {
		return // an upstream's routes are not learned
	}
	ibgp := ps.ASN == o.global.ASN
	for _, p := range paths {
		nlri, ok := p.Nlri.(*bgp.IPAddrPrefix)
		if !ok {
			continue
		}
		if p.Withdrawal {
			o.remove(ps, nlri.Prefix)
			continue
		}
		c, ok := candidateOf(p, ibgp)
		if !ok {
			continue
		}
		o.remove(ps, c.prefix)
		o.put(ps, ribPath{candidate: c, accepted: o.check(ps, c)})
	}
}

// check reports whether ps's accept list allows c, and logs, once per prefix, a refusal.
func (o *owner) check(ps *peerState, c candidate) bool {
	why := refusal(ps.Accept, c.prefix, c.nextHop)
	if why != "" && !ps.refused[c.prefix] {
		ps.refused[c.prefix] = true
		o.log.Warn("route refused", "peer", ps.Name, "prefix", c.prefix, "next-hop", c.nextHop, "reason", why)
	}
	return why == ""
}

func (o *owner) put(ps *peerState, rp ribPath) {
	ps.rib[rp.prefix] = rp
	if rp.accepted {
		ps.accepted++
	}
	if rp.stale {
		ps.stale++
	}
	o.dirty[rp.prefix] = true
}

func (o *owner) remove(ps *peerState, prefix netip.Prefix) {
	rp, ok := ps.rib[prefix]
	if !ok {
		return
	}
	delete(ps.rib, prefix)
	if rp.accepted {
		ps.accepted--
	}
	if rp.stale {
		ps.stale--
	}
	o.dirty[prefix] = true
}

// markStale marks every path of ps stale: its session went down for graceful restart.
func (o *owner) markStale(ps *peerState) {
	for pfx, rp := range ps.rib {
		if !rp.stale {
			rp.stale = true
			ps.rib[pfx] = rp
			ps.stale++
		}
	}
}

// dropStale drops the stale paths of ps, which it did not send again before its
// End-of-RIB.
func (o *owner) dropStale(ps *peerState) {
	if ps.stale == 0 {
		return
	}
	for pfx, rp := range ps.rib {
		if rp.stale {
			o.remove(ps, pfx)
		}
	}
	o.log.Info("the peer is back from its graceful restart", "peer", ps.Name, "routes", len(ps.rib))
}

// dropAll drops every path of ps.
func (o *owner) dropAll(ps *peerState) {
	for pfx := range ps.rib {
		o.remove(ps, pfx)
	}
}

// refilter checks every path of ps against its accept list again.
func (o *owner) refilter(ps *peerState) {
	for _, rp := range slices.Collect(maps.Values(ps.rib)) {
		o.remove(ps, rp.prefix)
		rp.accepted = o.check(ps, rp.candidate)
		o.put(ps, rp)
	}
}

// relearn learns again each dirty prefix from the accepted paths of every node, and
// returns the routes of the prefixes whose routes that changed: each with its next hops
// now, none if it is no longer learned.
func (o *owner) relearn() []route.Route {
	if len(o.dirty) == 0 {
		return nil
	}
	var nodes []*peerState
	for _, ps := range o.peers {
		if ps.Role == Node {
			nodes = append(nodes, ps)
		}
	}
	changes := make([]route.Route, 0, len(o.dirty))
	var cands []candidate
	for pfx := range o.dirty {
		cands = cands[:0]
		for _, ps := range nodes {
			if rp, ok := ps.rib[pfx]; ok && rp.accepted {
				cands = append(cands, rp.candidate)
			}
		}
		var hops []netip.Addr
		switch len(cands) {
		case 0:
		case 1: // most prefixes: one node announces each
			o.scratch = append(o.scratch[:0], cands[0].nextHop)
			hops = o.scratch
		default:
			hops = learn(cands)[0].NextHops
		}
		shared := o.hops.of(hops)
		if cur := o.learned[pfx]; !slices.Equal(cur, shared.addrs) {
			changes = append(changes, route.Route{Prefix: pfx, NextHops: shared.route})
			if len(hops) == 0 {
				delete(o.learned, pfx)
			} else {
				o.learned[pfx] = shared.addrs
			}
		}
	}
	clear(o.dirty)
	return changes
}

// hopSets shares the next hops of learned routes: a few sets of nodes are the next hops
// of every prefix, and a route's next hops are never changed once made.
type hopSets struct {
	sets map[string]hopSet
	key  []byte
}

// hopSet is one set of next hops, as the Speaker keeps it and as a kernel route has it.
type hopSet struct {
	addrs []netip.Addr
	route []route.NextHop // each of weight 1
}

// maxHopSets bounds hopSets: past it, the sets are made again as routes need them.
const maxHopSets = 4096

// of returns the shared copies of addrs (nil ones for none); addrs may be changed
// afterwards.
func (h *hopSets) of(addrs []netip.Addr) hopSet {
	if len(addrs) == 0 {
		return hopSet{}
	}
	h.key = h.key[:0]
	for _, a := range addrs {
		b := a.As16()
		h.key = append(append(h.key, byte(a.BitLen())), b[:]...)
	}
	if set, ok := h.sets[string(h.key)]; ok {
		return set
	}
	if h.sets == nil || len(h.sets) >= maxHopSets {
		h.sets = map[string]hopSet{}
	}
	set := hopSet{addrs: slices.Clone(addrs), route: make([]route.NextHop, len(addrs))}
	for i, a := range addrs {
		set.route[i] = route.NextHop{Addr: a, Weight: 1}
	}
	h.sets[string(h.key)] = set
	return set
}
