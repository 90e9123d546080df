package bgp

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// A peer that sets its BFD session AdminDown says that it stopped BFD on purpose, not
// that the path failed, and RFC 5882 §3.2 says that its BGP session must then stay up.
// gobgp v4.8.0 takes AdminDown as a failure and resets the session at once, the moment
// it reads the packet, so the Speaker keeps such packets from gobgp: a table of its own
// in the appliance's nftables drops every BFD packet whose state is AdminDown before
// gobgp's socket gets it, and notes its source in a set. The Speaker reads the set
// (poll), removes the peer's BFD from gobgp before gobgp's detection time runs out
// (gobgp gets no packets from the peer any more), and reports BFD "admin-down" and the
// session unprotected. Another set notes the sources of all other BFD packets; when
// the peer's latest packet is no longer AdminDown, the Speaker gives gobgp the peer's
// BFD again, and a new BFD session comes up.
//
// The table holds no datapath state: it is created when the first peer has BFD and
// deleted with the last one, and when Run returns.

const (
	bfdPort        = 3784 // single-hop BFD control packets (RFC 5881)
	guardTable     = "portico-bfd"
	guardChain     = "input"
	guardAdmin4    = "admin-down4"
	guardAdmin6    = "admin-down6"
	guardLive4     = "live4"
	guardLive6     = "live6"
	guardMemory    = 3 * time.Second // how long a set keeps a source that sends nothing more
	bfdStateMask   = 0xc0            // the state field: the top 2 bits of a BFD packet's second byte
	bfdStateOffset = 8 + 1           // of that byte in the UDP datagram
)

// adminDownGuard is the nftables table that keeps AdminDown packets from gobgp.
type adminDownGuard struct {
	conn   *nftables.Conn // nil while the table is not there
	table  *nftables.Table
	sets   map[string]*nftables.Set
	failed bool // the last attempt to create the table failed, and said so
}

func newAdminDownGuard() *adminDownGuard { return &adminDownGuard{} }

// guardWant creates the guard's table if on, or deletes it; it logs what fails.
func (o *owner) guardWant(on bool) {
	g := o.guard
	switch {
	case on && g.conn == nil:
		err := g.create()
		switch {
		case err != nil && !g.failed:
			o.log.Error("BFD: cannot keep AdminDown packets from gobgp, which resets the session of a peer that sets BFD AdminDown",
				"err", err)
		case err == nil && g.failed:
			o.log.Info("BFD: AdminDown packets are now kept from gobgp")
		}
		g.failed = err != nil
	case !on && g.conn != nil:
		if err := g.delete(); err != nil {
			o.log.Error("BFD: delete the AdminDown table", "err", err)
		}
	}
}

func (g *adminDownGuard) create() error {
	conn, err := nftables.New(nftables.AsLasting())
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	table := &nftables.Table{Family: nftables.TableFamilyINet, Name: guardTable}
	// A table left by a Speaker that did not stop cleanly goes first.
	conn.AddTable(table)
	conn.DelTable(table)
	conn.AddTable(table)
	sets := map[string]*nftables.Set{}
	for _, s := range []struct {
		name string
		typ  nftables.SetDatatype
	}{{guardAdmin4, nftables.TypeIPAddr}, {guardAdmin6, nftables.TypeIP6Addr}, {guardLive4, nftables.TypeIPAddr}, {guardLive6, nftables.TypeIP6Addr}} {
		set := &nftables.Set{Table: table, Name: s.name, KeyType: s.typ, HasTimeout: true, Dynamic: true, Timeout: guardMemory}
		if err := conn.AddSet(set, nil); err != nil {
			conn.CloseLasting()
			return fmt.Errorf("nftables: set %s: %w", s.name, err)
		}
		sets[s.name] = set
	}
	chain := conn.AddChain(&nftables.Chain{
		Table: table, Name: guardChain,
		Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter,
	})
	for _, r := range []struct {
		proto  byte
		saddr  uint32 // offset and length of the source address in the network header
		length uint32
		admin  bool
		set    string
	}{
		{unix.NFPROTO_IPV4, 12, 4, true, guardAdmin4},
		{unix.NFPROTO_IPV4, 12, 4, false, guardLive4},
		{unix.NFPROTO_IPV6, 8, 16, true, guardAdmin6},
		{unix.NFPROTO_IPV6, 8, 16, false, guardLive6},
	} {
		state := expr.CmpOpNeq
		if r.admin {
			state = expr.CmpOpEq
		}
		exprs := []expr.Any{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{r.proto}},
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_UDP}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(bfdPort)},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: bfdStateOffset, Len: 1},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 1, Mask: []byte{bfdStateMask}, Xor: []byte{0}},
			&expr.Cmp{Op: state, Register: 1, Data: []byte{0}}, // AdminDown is 0
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: r.saddr, Len: r.length},
			&expr.Dynset{SrcRegKey: 1, SetName: r.set, SetID: sets[r.set].ID, Operation: unix.NFT_DYNSET_OP_UPDATE, Timeout: guardMemory},
		}
		if r.admin {
			exprs = append(exprs, &expr.Verdict{Kind: expr.VerdictDrop})
		}
		conn.AddRule(&nftables.Rule{Table: table, Chain: chain, Exprs: exprs})
	}
	if err := conn.Flush(); err != nil {
		conn.CloseLasting()
		return fmt.Errorf("nftables: create table inet %s: %w", guardTable, err)
	}
	g.conn, g.table, g.sets = conn, table, sets
	return nil
}

func (g *adminDownGuard) delete() error {
	g.conn.DelTable(g.table)
	err := g.conn.Flush()
	err = errors.Join(err, g.conn.CloseLasting())
	g.conn, g.table, g.sets = nil, nil, nil
	return err
}

// latest returns, for each source of BFD packets in the last guardMemory, whether its
// latest packet was AdminDown.
func (g *adminDownGuard) latest() (map[netip.Addr]bool, error) {
	left := func(name string) (map[netip.Addr]time.Duration, error) {
		elems, err := g.conn.GetSetElements(g.sets[name])
		if err != nil {
			return nil, fmt.Errorf("nftables: read set %s: %w", name, err)
		}
		out := map[netip.Addr]time.Duration{}
		for _, e := range elems {
			if a, ok := netip.AddrFromSlice(e.Key); ok {
				out[a] = e.Expires
			}
		}
		return out, nil
	}
	out := map[netip.Addr]bool{}
	for _, names := range [][2]string{{guardAdmin4, guardLive4}, {guardAdmin6, guardLive6}} {
		admin, err := left(names[0])
		if err != nil {
			return nil, err
		}
		live, err := left(names[1])
		if err != nil {
			return nil, err
		}
		// Both sets keep a source for guardMemory after its last packet, so the one
		// with more time left saw the latest.
		for a, t := range live {
			out[a] = false
			if ta, ok := admin[a]; ok && ta > t {
				out[a] = true
			}
		}
		for a := range admin {
			if _, ok := live[a]; !ok {
				out[a] = true
			}
		}
	}
	return out, nil
}

// guardPoll notes which peers' BFD is AdminDown, and runs gate if that changed, which
// it reports. A peer that sends nothing keeps what it was.
func (o *owner) guardPoll(ctx context.Context) bool {
	if o.guard.conn == nil {
		return false
	}
	latest, err := o.guard.latest()
	if err != nil {
		o.log.Error("BFD: read AdminDown sources", "err", err)
		return false
	}
	changed := false
	for _, ps := range o.peers {
		admin, seen := latest[ps.Address]
		if !ps.BFD.Enabled() || !seen || admin == ps.adminDown {
			continue
		}
		ps.adminDown, changed = admin, true
		if !admin {
			o.log.Info("the peer's BFD session is no longer AdminDown: BFD starts again", "peer", ps.Name)
		}
	}
	if changed {
		o.gate(ctx)
	}
	return changed
}
