package nft

import (
	"encoding/binary"
	"errors"
	"fmt"
	"iter"
	"net/netip"
	"slices"
	"syscall"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// dumped is the table as the kernel holds it.
type dumped struct {
	// services sorted by key, normalized.
	services []Service
	// foreign are the services whose dispatch entry names something other
	// than the pick chain this version writes for them (a table an older
	// version wrote, or an edit by hand): they are rewritten whatever they
	// hold. The value is the chain named, "" for another verdict.
	foreign map[Key]string
	// refs counts the users of each pick chain and slot map; idle are the
	// ones no service uses.
	refs map[string]int
	idle []string
	// badChains are pick chains whose rules are not the one they should
	// have, with the one they should.
	badChains map[string]pickParams
	// orphanChains and orphanSets are objects this version does not write;
	// orphanElems elements of no service.
	orphanChains []string
	orphanSets   []string
	orphanElems  []*elemStep
}

// adoption is what adopting a table left by an earlier run takes: a plan to
// run before the changes (base objects, repairs, orphan elements) and plans
// to run after them (orphan chains, once no dispatch entry names them, and
// orphan sets).
type adoption struct {
	pre, postChains, postSets *plan
	*dumped
}

// adopt reads the table an earlier run left and plans what makes it a table
// this version would have written, keeping what already is.
func (t *Target) adopt() (*adoption, error) {
	d, err := t.dump()
	if err != nil {
		return nil, err
	}
	a := &adoption{pre: basePlan(t.o), postChains: &plan{}, postSets: &plan{}, dumped: d}
	names := make([]string, 0, len(d.badChains))
	for name := range d.badChains {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		rewritePickChain(a.pre, t.o, name, d.badChains[name])
	}
	for _, e := range d.orphanElems {
		a.pre.steps = append(a.pre.steps, step{elems: e, unit: true})
	}
	for _, name := range d.orphanChains {
		ch := &nftables.Chain{Table: t.o.table, Name: name}
		a.postChains.add(1, "delete chain inet "+TableName+" "+name, func(c *nftables.Conn) error { c.DelChain(ch); return nil })
		a.postChains.endUnit()
	}
	for _, name := range d.orphanSets {
		s := &nftables.Set{Table: t.o.table, Name: name}
		a.postSets.add(1, "delete set inet "+TableName+" "+name, func(c *nftables.Conn) error { c.DelSet(s); return nil })
		a.postSets.endUnit()
	}
	if n := len(d.services); n > 0 {
		t.log.Info("nft: adopted existing table", "services", n,
			"orphans", len(d.orphanChains)+len(d.orphanSets)+len(d.orphanElems), "foreign", len(d.foreign))
	}
	return a, nil
}

// dump reads the table.
func (t *Target) dump() (*dumped, error) {
	d := &dumped{foreign: map[Key]string{}, refs: map[string]int{}, badChains: map[string]pickParams{}}
	if _, err := t.conn.ListTableOfFamily(TableName, nftables.TableFamilyINet); err != nil {
		if isNotExist(err) {
			return d, nil
		}
		return nil, fmt.Errorf("nft: list table inet %s: %w", TableName, err)
	}
	sets, err := t.conn.GetSets(t.o.table)
	if err != nil {
		return nil, fmt.Errorf("nft: list sets of inet %s: %w", TableName, err)
	}
	known := map[string]bool{}
	for _, s := range []*nftables.Set{t.o.services4, t.o.services6, t.o.vipCounters4, t.o.vipCounters6, t.o.backendCounters4, t.o.backendCounters6} {
		known[s.Name] = true
	}
	have := map[string]bool{}
	var slotSets []string
	for _, s := range sets {
		have[s.Name] = true
		switch _, _, ok := parseSlotSetName(s.Name); {
		case ok:
			slotSets = append(slotSets, s.Name)
			d.refs[s.Name] = 0
		case !known[s.Name]:
			d.orphanSets = append(d.orphanSets, s.Name)
		}
	}
	chains, err := t.conn.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, fmt.Errorf("nft: list chains: %w", err)
	}
	chainNames := map[string]bool{}
	for _, c := range chains {
		if c.Table.Name == TableName {
			chainNames[c.Name] = true
		}
	}

	// Services, from their dispatch entries.
	byKey := map[Key]*Service{}
	params := map[Key]pickParams{}
	for _, svc := range []*nftables.Set{t.o.services4, t.o.services6} {
		if !have[svc.Name] {
			continue
		}
		v6 := svc == t.o.services6
		type entry struct {
			k Key
			v *verdict
		}
		var entries []entry
		err := t.readSet(svc, func() { entries = entries[:0] }, func(key, val []byte) error {
			k, err := decodeServiceKey(key, v6)
			if err != nil {
				return err
			}
			// A value that is no verdict is kept as nil: foreign.
			v, _ := decodeVerdict(val)
			entries = append(entries, entry{k, v})
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("nft: list map %s: %w", svc.Name, err)
		}
		for _, e := range entries {
			k, v := e.k, e.v
			s := &Service{Key: k}
			byKey[k] = s
			switch {
			case v == nil:
				d.foreign[k] = ""
			case v.code == nfAccept:
			case v.code == unix.NFT_GOTO && chainNames[v.chain]:
				sched, size, snat, ok := parsePickChain(v.chain)
				p := paramsOf(k, sched, size, snat)
				if !ok || chainName(k, p) != v.chain || !have[p.slots] {
					d.foreign[k] = v.chain
					continue
				}
				s.SNAT, s.Scheduler, s.Slots = snat, sched, make([]netip.AddrPort, size)
				params[k] = p
			default:
				d.foreign[k] = v.chain
			}
		}
	}

	// The rules of the pick chains in use, and which pick chains no
	// service uses.
	used := map[string]bool{}
	for k, p := range params {
		name := chainName(k, p)
		if !used[name] {
			used[name] = true
			if err := t.checkPickChain(d, name, p); err != nil {
				return nil, err
			}
		}
		d.refs[name]++
		d.refs[p.slots]++
	}
	for name := range chainNames {
		if used[name] || name == chainPre || name == chainOut || name == chainPost || name == chainFwd {
			continue
		}
		// A pick chain that no service uses stays until the end of the
		// next plan, which may take it up again, if its rule is what its
		// name says; any other chain goes.
		idle, err := t.idlePickChain(name, have)
		if err != nil {
			return nil, err
		}
		if idle {
			d.refs[name] = 0
		} else {
			d.orphanChains = append(d.orphanChains, name)
		}
	}

	// Counters.
	for _, set := range []*nftables.Set{t.o.vipCounters4, t.o.vipCounters6} {
		if !have[set.Name] {
			continue
		}
		orphans := &elemStep{set: set, del: true}
		err := t.readSet(set, func() { *orphans = elemStep{set: set, del: true} }, func(key, _ []byte) error {
			k, err := decodeServiceKey(key, set == t.o.vipCounters6)
			if err != nil {
				return err
			}
			if byKey[k] == nil {
				orphans.add(key, nil, nil)
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("nft: list set %s: %w", set.Name, err)
		}
		d.addOrphans(orphans)
	}
	for _, set := range []*nftables.Set{t.o.backendCounters4, t.o.backendCounters6} {
		if !have[set.Name] {
			continue
		}
		type entry struct {
			k Key
			b netip.AddrPort
		}
		var entries []entry
		orphans := &elemStep{set: set, del: true}
		err := t.readSet(set, func() { entries, *orphans = entries[:0], elemStep{set: set, del: true} }, func(key, _ []byte) error {
			k, b, err := decodeBackendCounterKey(key, set == t.o.backendCounters6)
			if err != nil {
				return err
			}
			if byKey[k] == nil {
				orphans.add(key, nil, nil)
			} else {
				entries = append(entries, entry{k, b})
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("nft: list set %s: %w", set.Name, err)
		}
		for _, e := range entries {
			s := byKey[e.k]
			s.Backends = append(s.Backends, e.b)
		}
		d.addOrphans(orphans)
	}

	// Slots, straight into their services: a slot read twice shows a
	// read that repeats elements (see elements), and the map is read
	// again from the start. All slots of a VIP are in one map.
	slices.Sort(slotSets)
	for _, name := range slotSets {
		set := t.o.slotSet(name)
		v6, _, _ := parseSlotSetName(name)
		var orphans *elemStep
		for read := 0; ; read++ {
			if read == maxReads {
				return nil, fmt.Errorf("nft: list map %s: %d reads repeated elements", name, maxReads)
			}
			orphans = &elemStep{set: set, del: true}
			seenOrphans := map[string]bool{}
			repeated := false
			err := t.dumpSet(set, func(key, val []byte) error {
				k, i, err := decodeSlotKey(key, v6)
				if err != nil {
					return err
				}
				s := byKey[k]
				if s == nil || i >= len(s.Slots) || params[k].slots != name {
					if seenOrphans[string(key)] {
						repeated = true
						return errStop
					}
					seenOrphans[string(key)] = true
					orphans.add(key, nil, nil)
					return nil
				}
				if s.Slots[i].IsValid() {
					repeated = true
					return errStop
				}
				s.Slots[i], err = decodeBackendData(val, v6)
				return err
			})
			if err != nil {
				return nil, fmt.Errorf("nft: list map %s: %w", name, err)
			}
			if !repeated {
				break
			}
			for k, p := range params {
				if p.slots == name {
					clear(byKey[k].Slots)
				}
			}
		}
		d.addOrphans(orphans)
	}

	d.services = make([]Service, 0, len(byKey))
	for _, s := range byKey {
		d.services = append(d.services, *s)
	}
	slices.SortFunc(d.services, func(a, b Service) int { return a.Key.Compare(b.Key) })
	for i := range d.services {
		// normalize keeps an SNAT or scheduler only with slots, so that
		// a dumped service without slots equals any that has none.
		d.services[i] = d.services[i].normalize()
		if d.services[i].Slots == nil && d.services[i].Scheduler != Hash {
			d.services[i].Scheduler = Hash
		}
	}
	for name, n := range d.refs {
		if n == 0 {
			d.idle = append(d.idle, name)
		}
	}
	slices.Sort(d.idle)
	slices.Sort(d.orphanChains)
	slices.Sort(d.orphanSets)
	return d, nil
}

func (d *dumped) addOrphans(e *elemStep) {
	if len(e.ends) > 0 {
		d.orphanElems = append(d.orphanElems, e)
	}
}

// idlePickChain reports whether a chain no service uses is a pick chain
// as this version writes it: its name and its one rule agree, and the slot
// map the rule uses exists.
func (t *Target) idlePickChain(name string, have map[string]bool) (bool, error) {
	sched, size, snat, ok := parsePickChain(name)
	if !ok {
		return false, nil
	}
	rules, err := t.conn.GetRules(t.o.table, &nftables.Chain{Table: t.o.table, Name: name})
	if err != nil {
		return false, fmt.Errorf("nft: list chain %s: %w", name, err)
	}
	if len(rules) != 1 {
		return false, nil
	}
	p, err := parsePick(rules[0].Exprs)
	if err != nil || p.scheduler != sched || p.size != size || p.snat != snat || !have[p.slots] {
		return false, nil
	}
	v6, sh, ok := parseSlotSetName(p.slots)
	if !ok || v6 != p.v6 {
		return false, nil
	}
	// A round-robin chain's name holds its VIP, which the rule does not;
	// a hash chain's name must name the rule's slot map.
	return sched == RoundRobin || hashChainName(v6, sh, size, snat) == name, nil
}

// checkPickChain reads a pick chain's rules and, unless they are the one
// rule p describes, records the chain for a rewrite.
func (t *Target) checkPickChain(d *dumped, name string, p pickParams) error {
	rules, err := t.conn.GetRules(t.o.table, &nftables.Chain{Table: t.o.table, Name: name})
	if err != nil {
		return fmt.Errorf("nft: list chain %s: %w", name, err)
	}
	if len(rules) == 1 {
		if got, err := parsePick(rules[0].Exprs); err == nil && got == p {
			return nil
		}
	}
	d.badChains[name] = p
	return nil
}

// maxReads bounds how often elements reads a set that keeps coming back
// inconsistent.
const maxReads = 10

// readSet reads a set's elements into fn like dumpSet; when the read
// repeats an element (see elements), it calls reset and reads again.
func (t *Target) readSet(set *nftables.Set, reset func(), fn func(key, val []byte) error) error {
	for range maxReads {
		seen := map[string]struct{}{}
		repeated := false
		err := t.dumpSet(set, func(key, val []byte) error {
			if _, ok := seen[string(key)]; ok {
				repeated = true
				return errStop
			}
			seen[string(key)] = struct{}{}
			return fn(key, val)
		})
		if err != nil {
			return err
		}
		if !repeated {
			return nil
		}
		reset()
	}
	return fmt.Errorf("%d reads repeated elements", maxReads)
}

// elements lists the elements of a set. The kernel sends a big set in
// parts, each walking the hash table from its start and skipping as many
// elements as the parts before sent. When the table is resized between two
// parts, which the kernel does in the background after big changes, the
// order changes: the dump repeats some elements and leaves out as many. A
// repeated key shows it, and the set is read again.
func (t *Target) elements(set *nftables.Set) ([]nftables.SetElement, error) {
	for range maxReads {
		elems, err := t.conn.GetSetElements(set)
		if err != nil {
			return nil, err
		}
		seen := make(map[string]bool, len(elems))
		for _, e := range elems {
			if seen[string(e.Key)] {
				break
			}
			seen[string(e.Key)] = true
		}
		if len(seen) == len(elems) {
			return elems, nil
		}
	}
	return nil, fmt.Errorf("%d reads repeated elements", maxReads)
}

// dumpBuffer is the receive buffer of a set dump. The kernel sizes each
// part of a dump to the largest read it has seen, up to 32 KiB, and walks
// the set's hash table from its start for every part: reading with a page,
// as github.com/google/nftables does, makes ten times the parts and a
// hundred times the walking.
const dumpBuffer = 64 << 10

// errStop ends a dump early; its remaining parts are read and dropped.
var errStop = errors.New("stop")

// dumpSet reads the elements of a set and hands each one's key and value
// (nil for a set) to fn, which must not keep them. A verdict map's value is
// the attributes inside NFTA_DATA_VERDICT, as decodeVerdict reads them.
func (t *Target) dumpSet(set *nftables.Set, fn func(key, val []byte) error) error {
	if err := t.dialRaw(); err != nil {
		return err
	}
	var w wire
	at := w.begin(unix.NFNL_SUBSYS_NFTABLES<<8|unix.NFT_MSG_GETSETELEM, netlink.Request|netlink.Dump)
	w.buf = append(w.buf, byte(set.Table.Family), unix.NFNETLINK_V0, 0, 0)
	w.buf = appendAttr(w.buf, unix.NFTA_SET_ELEM_LIST_TABLE, []byte(set.Table.Name+"\x00"))
	w.buf = appendAttr(w.buf, unix.NFTA_SET_ELEM_LIST_SET, []byte(set.Name+"\x00"))
	w.end(at)
	if err := t.writeRaw(w.buf); err != nil {
		return err
	}
	rc, err := t.raw.SyscallConn()
	if err != nil {
		t.closeRaw()
		return err
	}
	buf := make([]byte, dumpBuffer)
	var ferr error
	for {
		var n int
		var serr error
		err := rc.Read(func(fd uintptr) bool {
			n, _, serr = unix.Recvfrom(int(fd), buf, 0)
			return serr != unix.EAGAIN
		})
		if err = errors.Join(err, serr); err != nil {
			t.closeRaw()
			return fmt.Errorf("receive: %w", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			t.closeRaw()
			return fmt.Errorf("receive: %w", err)
		}
		for _, m := range msgs {
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				// A dump that failed part way says so here.
				if len(m.Data) >= 4 {
					if code := int32(binary.NativeEndian.Uint32(m.Data)); code < 0 {
						return syscall.Errno(-code)
					}
				}
				if errors.Is(ferr, errStop) {
					ferr = nil
				}
				return ferr
			case unix.NLMSG_ERROR:
				if len(m.Data) >= 4 {
					if code := int32(binary.NativeEndian.Uint32(m.Data)); code != 0 {
						// The dump ends with its error.
						return syscall.Errno(-code)
					}
				}
				continue
			}
			if ferr != nil || len(m.Data) < 4 {
				continue
			}
			ferr = eachElem(m.Data[4:], fn)
		}
	}
}

// eachElem hands fn the key and value of every element of a NEWSETELEM
// message's attributes.
func eachElem(b []byte, fn func(key, val []byte) error) error {
	for a := range attrs(b) {
		if a.typ != unix.NFTA_SET_ELEM_LIST_ELEMENTS {
			continue
		}
		for elem := range attrs(a.data) {
			var key, val []byte
			for f := range attrs(elem.data) {
				switch f.typ {
				case unix.NFTA_SET_ELEM_KEY:
					for v := range attrs(f.data) {
						if v.typ == unix.NFTA_DATA_VALUE {
							key = v.data
						}
					}
				case unix.NFTA_SET_ELEM_DATA:
					for v := range attrs(f.data) {
						val = v.data // NFTA_DATA_VALUE, or NFTA_DATA_VERDICT's attributes
					}
				}
			}
			if err := fn(key, val); err != nil {
				return err
			}
		}
	}
	return nil
}

type attr struct {
	typ  uint16
	data []byte
}

// attrs walks netlink attributes, nested or not, without copying them.
func attrs(b []byte) iter.Seq[attr] {
	return func(yield func(attr) bool) {
		for len(b) >= nlaHdr {
			n := int(binary.NativeEndian.Uint16(b))
			if n < nlaHdr || n > len(b) {
				return
			}
			if !yield(attr{typ: binary.NativeEndian.Uint16(b[2:]) &^ (unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER), data: b[nlaHdr:n]}) {
				return
			}
			b = b[min(len(b), (n+3)&^3):]
		}
	}
}
