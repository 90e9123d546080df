package nft

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
)

// A plan is an ordered list of changes to the table. Each step has a text
// form in nft syntax, which the golden tests read. A plan is sent in
// batches; a batch is one kernel transaction, so packets never see half of
// it. Steps come in three kinds, which never share a batch: structure
// (tables, sets, chains, rules) sent through github.com/google/nftables,
// elements sent hand-encoded (elements.go), and the forward chain's rules,
// which are hand-built too (rawct.go).
//
// A plan changes services in three phases: first the pick chains that a
// service will need are made, then every service's elements change (all
// elements of one service in one batch), then the pick chains no service
// uses any more go. A chain that no dispatch entry names carries no
// traffic, so making it early and removing it late is safe.
type plan struct {
	steps []step
}

type step struct {
	// text is the step in nft syntax, for all but element steps.
	text string
	// size is roughly how many netlink attributes a structure step
	// sends, used to keep each batch under the socket's limits.
	size int
	// apply queues a structure step on a connection.
	apply func(c *nftables.Conn) error
	// raw, when set, is a batch of its own: hand-built messages.
	raw []netlink.Message
	// elems are elements to add or delete.
	elems *elemStep
	// unit ends a group of steps that must reach the kernel in one batch
	// (a service's elements, a chain and its rule): a batch is cut only
	// after such a step.
	unit bool
}

func (s *step) String() string {
	if s.elems != nil {
		return s.elems.String()
	}
	return s.text
}

func (p *plan) add(size int, text string, apply func(c *nftables.Conn) error) {
	p.steps = append(p.steps, step{text: text, size: size, apply: apply})
}

// endUnit marks the last step as the end of a unit.
func (p *plan) endUnit() {
	if n := len(p.steps); n > 0 {
		p.steps[n-1].unit = true
	}
}

func (p *plan) append(q *plan) {
	if q != nil {
		p.steps = append(p.steps, q.steps...)
	}
}

// String is the plan in nft syntax, one command a line.
func (p *plan) String() string {
	var b strings.Builder
	for i := range p.steps {
		b.WriteString(p.steps[i].String())
		b.WriteByte('\n')
	}
	return b.String()
}

// basePlan (re)creates the table and its base objects. Adding what exists
// changes nothing; base chains are flushed and refilled in the same
// transaction, so the rules are never missing or doubled.
func basePlan(o *objects) *plan {
	p := &plan{}
	t := "inet " + TableName
	p.add(1, "add table "+t, func(c *nftables.Conn) error { c.AddTable(o.table); return nil })
	for _, s := range []*nftables.Set{o.services4, o.services6} {
		p.add(1, fmt.Sprintf("add map %s %s { type %s : verdict; }", t, s.Name, s.KeyType.Name),
			func(c *nftables.Conn) error { return c.AddSet(s, nil) })
	}
	for _, s := range []*nftables.Set{o.vipCounters4, o.vipCounters6, o.backendCounters4, o.backendCounters6} {
		p.add(1, fmt.Sprintf("add set %s %s { type %s; counter; }", t, s.Name, s.KeyType.Name),
			func(c *nftables.Conn) error { return c.AddSet(s, nil) })
	}
	rules := []struct {
		chain *nftables.Chain
		hook  string
		rules [][]string
	}{
		{o.prerouting, "type nat hook prerouting priority dstnat", [][]string{{dispatchText4}, {dispatchText6}}},
		{o.output, "type nat hook output priority dstnat", [][]string{{dispatchText4}, {dispatchText6}}},
		{o.postrouting, "type nat hook postrouting priority srcnat", [][]string{{masqueradeText}}},
	}
	for _, r := range rules {
		ch := r.chain
		p.add(1, fmt.Sprintf("add chain %s %s { %s; policy accept; }", t, ch.Name, r.hook),
			func(c *nftables.Conn) error { c.AddChain(ch); return nil })
		p.add(1, fmt.Sprintf("flush chain %s %s", t, ch.Name),
			func(c *nftables.Conn) error { c.FlushChain(ch); return nil })
		exprs := baseRules(o, ch)
		for i, text := range r.rules {
			e := exprs[i]
			p.add(1, fmt.Sprintf("add rule %s %s %s", t, ch.Name, text[0]),
				func(c *nftables.Conn) error {
					c.AddRule(&nftables.Rule{Table: o.table, Chain: ch, Exprs: e})
					return nil
				})
		}
	}
	p.add(1, fmt.Sprintf("add chain %s %s { type filter hook forward priority filter; policy accept; }", t, o.forward.Name),
		func(c *nftables.Conn) error { c.AddChain(o.forward); return nil })
	p.endUnit()
	texts, counting := counterRules()
	text := fmt.Sprintf("flush chain %s %s", t, chainFwd)
	for _, r := range texts {
		text += fmt.Sprintf("\nadd rule %s %s %s", t, chainFwd, r)
	}
	msgs, err := rawForwardRules(counting)
	if err != nil {
		// Only fixed rules are encoded here: a failure is a bug.
		panic(fmt.Sprintf("nft: encode the forward chain: %v", err))
	}
	p.steps = append(p.steps, step{text: text, size: 1, raw: msgs, unit: true})
	return p
}

// change is what happens to one service: added (no old), removed (no new)
// or changed. Both are normalized.
type change struct {
	old, new       Service
	hasOld, hasNew bool
	// oldChain is the chain old's dispatch entry names in the kernel, ""
	// for accept.
	oldChain string
}

// dispatch is the chain a service's dispatch entry names: its pick chain,
// or "" (accept) when it has no slots.
func dispatch(s Service) string {
	if len(s.Slots) == 0 {
		return ""
	}
	return pickChain(s)
}

// objectRefs counts, for every pick chain and slot map the kernel holds,
// the services that use it. A plan records the counts it changes in delta;
// they replace those of base once the plan has run.
type objectRefs struct {
	base  map[string]int
	delta map[string]int
}

func (r *objectRefs) get(name string) (int, bool) {
	if n, ok := r.delta[name]; ok {
		return n, true
	}
	n, ok := r.base[name]
	return n, ok
}

func (r *objectRefs) set(name string, n int) {
	if r.delta == nil {
		r.delta = map[string]int{}
	}
	r.delta[name] = n
}

// commit folds the plan's counts into base; objects left with no user
// have been deleted.
func (r *objectRefs) commit() {
	if r.base == nil {
		r.base = map[string]int{}
	}
	for name, n := range r.delta {
		if n == 0 {
			delete(r.base, name)
		} else {
			r.base[name] = n
		}
	}
	r.delta = nil
}

// diffPlan makes the changes: the slot maps and pick chains they need
// first, then each service's elements in a unit of its own, then the pick
// chains and slot maps that no service uses any more. refs are the objects
// the kernel holds, with their users; the plan's counts go into refs.delta.
// idle are objects the kernel holds that nothing used before the plan: they
// go too unless a change takes them up.
func diffPlan(o *objects, refs *objectRefs, changes []change, idle []string) *plan {
	p, unused := changePlan(o, refs, changes, idle)
	p.append(deleteUnused(o, refs, unused))
	return p
}

// changePlan is diffPlan without the deletions: it returns the objects that
// may have no user left, for deleteUnused.
func changePlan(o *objects, refs *objectRefs, changes []change, idle []string) (*plan, []string) {
	p := &plan{steps: make([]step, 0, 5*len(changes))}
	unused := slices.Clone(idle)
	release := func(name string) {
		if n, ok := refs.get(name); ok && n > 0 {
			refs.set(name, n-1)
			if n == 1 {
				unused = append(unused, name)
			}
		}
	}
	for _, c := range changes {
		if c.hasOld && c.oldChain != "" {
			release(c.oldChain)
			if len(c.old.Slots) > 0 {
				release(slotSetName(c.old.Key.Addr.Is6(), shard(c.old.Key)))
			}
		}
		if !c.hasNew || len(c.new.Slots) == 0 {
			continue
		}
		s := c.new
		params := paramsOf(s.Key, s.Scheduler, len(s.Slots), s.SNAT)
		n, ok := refs.get(params.slots)
		if !ok {
			addSlotSet(p, o, params.slots)
		}
		refs.set(params.slots, n+1)
		ch := chainName(s.Key, params)
		if n, ok = refs.get(ch); !ok {
			addPickChain(p, o, ch, params)
		}
		refs.set(ch, n+1)
	}
	for _, c := range changes {
		switch {
		case !c.hasOld:
			addService(p, o, c.new)
		case !c.hasNew:
			delService(p, o, c.old, c.oldChain)
		default:
			changeService(p, o, c.old, c.oldChain, c.new)
		}
		p.endUnit()
	}
	return p, unused
}

// deleteUnused deletes the objects of unused that have no user left:
// chains before the slot maps their rules use.
func deleteUnused(o *objects, refs *objectRefs, unused []string) *plan {
	p := &plan{}
	isSet := func(name string) int {
		if strings.HasPrefix(name, slotSetPrefix) {
			return 1
		}
		return 0
	}
	slices.SortFunc(unused, func(a, b string) int { return cmp.Or(cmp.Compare(isSet(a), isSet(b)), strings.Compare(a, b)) })
	unused = slices.Compact(unused)
	for _, name := range unused {
		if n, _ := refs.get(name); n != 0 {
			continue
		}
		refs.set(name, 0)
		if strings.HasPrefix(name, slotSetPrefix) {
			s := o.slotSet(name)
			p.add(1, fmt.Sprintf("delete map inet %s %s", TableName, name), func(c *nftables.Conn) error { c.DelSet(s); return nil })
		} else {
			ch := &nftables.Chain{Table: o.table, Name: name}
			p.add(1, fmt.Sprintf("delete chain inet %s %s", TableName, name), func(c *nftables.Conn) error { c.DelChain(ch); return nil })
		}
		p.endUnit()
	}
	return p
}

func addSlotSet(p *plan, o *objects, name string) {
	s := o.slotSet(name)
	p.add(1, fmt.Sprintf("add map inet %s %s { type %s : %s; }", TableName, name, s.KeyType.Name, s.DataType.Name),
		func(c *nftables.Conn) error { return c.AddSet(s, nil) })
	p.endUnit()
}

// addPickChain makes a pick chain and its one rule, in one unit: the
// chain is never without its rule.
func addPickChain(p *plan, o *objects, name string, params pickParams) {
	ch := &nftables.Chain{Table: o.table, Name: name}
	p.add(1, fmt.Sprintf("add chain inet %s %s", TableName, name), func(c *nftables.Conn) error { c.AddChain(ch); return nil })
	addPickRule(p, o, ch, params)
	p.endUnit()
}

// rewritePickChain replaces a pick chain's rules by the one it should have.
func rewritePickChain(p *plan, o *objects, name string, params pickParams) {
	ch := &nftables.Chain{Table: o.table, Name: name}
	p.add(1, fmt.Sprintf("flush chain inet %s %s", TableName, name), func(c *nftables.Conn) error { c.FlushChain(ch); return nil })
	addPickRule(p, o, ch, params)
	p.endUnit()
}

func addPickRule(p *plan, o *objects, ch *nftables.Chain, params pickParams) {
	slots := o.slotSet(params.slots)
	p.add(1, fmt.Sprintf("add rule inet %s %s %s", TableName, ch.Name, pickText(params)),
		func(c *nftables.Conn) error {
			c.AddRule(&nftables.Rule{Table: o.table, Chain: ch, Exprs: pick(slots, params)})
			return nil
		})
}

func servicesSet(o *objects, k Key) *nftables.Set {
	if k.Addr.Is6() {
		return o.services6
	}
	return o.services4
}

func slotsSet(o *objects, k Key) *nftables.Set {
	return o.slotSet(slotSetName(k.Addr.Is6(), shard(k)))
}

func counterSets(o *objects, k Key) (vip, backend *nftables.Set) {
	if k.Addr.Is6() {
		return o.vipCounters6, o.backendCounters6
	}
	return o.vipCounters4, o.backendCounters4
}

// elems returns an element step for set, added to the plan.
func (p *plan) elems(set *nftables.Set, del bool) *elemStep {
	e := &elemStep{set: set, del: del}
	p.steps = append(p.steps, step{elems: e})
	return e
}

func addService(p *plan, o *objects, s Service) {
	setSlots(p, o, s.Key, nil, s.Slots)
	vc, _ := counterSets(o, s.Key)
	p.elems(vc, false).add(serviceKey(s.Key), nil, nil)
	setBackendCounters(p, o, s.Key, nil, s.Backends)
	setDispatch(p, o, s.Key, false, dispatch(s))
}

func delService(p *plan, o *objects, s Service, chain string) {
	setDispatch(p, o, s.Key, true, chain)
	setSlots(p, o, s.Key, s.Slots, nil)
	vc, _ := counterSets(o, s.Key)
	p.elems(vc, true).add(serviceKey(s.Key), nil, nil)
	setBackendCounters(p, o, s.Key, s.Backends, nil)
}

func changeService(p *plan, o *objects, old Service, oldChain string, s Service) {
	if ch := dispatch(s); ch != oldChain {
		setDispatch(p, o, s.Key, true, oldChain)
		setDispatch(p, o, s.Key, false, ch)
	}
	setSlots(p, o, s.Key, old.Slots, s.Slots)
	setBackendCounters(p, o, s.Key, old.Backends, s.Backends)
}

// setDispatch adds or deletes the service's dispatch entry.
func setDispatch(p *plan, o *objects, k Key, del bool, chain string) {
	var v *verdict
	if !del {
		v = dispatchVerdict(chain)
	}
	p.elems(servicesSet(o, k), del).add(serviceKey(k), nil, v)
}

// setSlots changes the VIP's slots from old to want: the slots whose backend
// differs are deleted and added again (the kernel does not update a map
// element's value in place), in the same transaction.
func setSlots(p *plan, o *objects, k Key, old, want []netip.AddrPort) {
	dels, adds := 0, 0
	for i := range max(len(old), len(want)) {
		ob, wb := slotAt(old, i), slotAt(want, i)
		if ob == wb {
			continue
		}
		if ob.IsValid() {
			dels++
		}
		if wb.IsValid() {
			adds++
		}
	}
	if dels == 0 && adds == 0 {
		return
	}
	set := slotsSet(o, k)
	var key, data []byte // reused: add copies them
	key = appendSlotKey(key, k, 0)
	data = appendBackend(data, netip.AddrPortFrom(k.Addr, 0))
	var del, add *elemStep
	if dels > 0 {
		del = p.elems(set, true)
		del.grow(dels, len(key), 0)
	}
	if adds > 0 {
		add = &elemStep{set: set}
		add.grow(adds, len(key), len(data))
	}
	for i := range max(len(old), len(want)) {
		ob, wb := slotAt(old, i), slotAt(want, i)
		if ob == wb {
			continue
		}
		key = appendSlotKey(key[:0], k, i)
		if ob.IsValid() {
			del.add(key, nil, nil)
		}
		if wb.IsValid() {
			add.add(key, appendBackend(data[:0], wb), nil)
		}
	}
	if add != nil {
		p.steps = append(p.steps, step{elems: add})
	}
}

func slotAt(slots []netip.AddrPort, i int) netip.AddrPort {
	if i < len(slots) {
		return slots[i]
	}
	return netip.AddrPort{}
}

// setBackendCounters adds the counters of new backends and removes those of
// backends that went. Both lists are sorted.
func setBackendCounters(p *plan, o *objects, k Key, old, want []netip.AddrPort) {
	_, set := counterSets(o, k)
	var del, add *elemStep
	for _, b := range old {
		if _, found := slices.BinarySearchFunc(want, b, netip.AddrPort.Compare); !found {
			if del == nil {
				del = p.elems(set, true)
			}
			del.add(backendCounterKey(k, b), nil, nil)
		}
	}
	for _, b := range want {
		if _, found := slices.BinarySearchFunc(old, b, netip.AddrPort.Compare); !found {
			if add == nil {
				add = p.elems(set, false)
			}
			add.add(backendCounterKey(k, b), nil, nil)
		}
	}
}
