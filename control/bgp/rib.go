package bgp

import (
	"maps"
	"net/netip"
	"portico.dev/appliance/datapath/route"
	"slices"

	"github.com/osrg/gobgp/v4/pkg/apiutil"
	"github.com/osrg/gobgp/v4/pkg/packet/bgp"
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
// returns the prefixes whose routes that changed: each with its next hops now, none if
// it is no longer learned. nil if none changed.
func (o *owner) relearn() map[netip.Prefix]route.Route {
	if len(o.dirty) == 0 {
		return nil
	}
	var nodes []*peerState
	for _, ps := range o.peers {
		if ps.Role == Node {
			nodes = append(nodes, ps)
		}
	}
	changes := make(map[netip.Prefix]route.Route, len(o.dirty))
	var cands []candidate
	for pfx := range o.dirty {
		cands = cands[:0]
		for _, ps := range nodes {
			if rp, ok := ps.rib[pfx]; ok && rp.accepted {
				cands = append(cands, rp.candidate)
			}
		}
		next := Learned{Prefix: pfx}
		if l := learn(cands); len(l) == 1 {
			next = l[0]
		}
		if cur := o.learned[pfx]; !slices.Equal(cur.NextHops, next.NextHops) {
			changes[pfx] = next.route()
			if len(next.NextHops) == 0 {
				delete(o.learned, pfx)
			} else {
				o.learned[pfx] = next
			}
		}
	}
	clear(o.dirty)
	if len(changes) == 0 {
		return nil
	}
	return changes
}
