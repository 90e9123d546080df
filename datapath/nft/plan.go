package nft

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/google/nftables"
)

// A plan is an ordered list of changes to the table. Each step queues
// netlink messages on a connection and has a text form in nft syntax, which
// the golden tests read. A plan is sent in batches; a batch is one kernel
// transaction, so packets never see half of it.
type plan struct {
	steps []step
}

type step struct {
	text string
	// size is roughly how many netlink attributes the step sends, used to
	// keep each batch under the socket's limits.
	size  int
	apply func(c *nftables.Conn) error
	// raw, when set, is a whole batch of its own, sent on a separate
	// socket after what is queued on the connection.
	raw [][]rawExpr
	// service ends the changes of one service: a batch may be cut only
	// after such a step, so each batch leaves every service whole.
	service bool
}

func (p *plan) add(size int, text string, apply func(c *nftables.Conn) error) {
	p.steps = append(p.steps, step{text: text, size: size, apply: apply})
}

func (p *plan) endService() {
	if n := len(p.steps); n > 0 {
		p.steps[n-1].service = true
	}
}

// String is the plan in nft syntax, one command a line.
func (p *plan) String() string {
	var b strings.Builder
	for _, s := range p.steps {
		b.WriteString(s.text)
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
	texts, counting := counterRules()
	text := fmt.Sprintf("flush chain %s %s", t, chainFwd)
	for _, r := range texts {
		text += fmt.Sprintf("\nadd rule %s %s %s", t, chainFwd, r)
	}
	p.steps = append(p.steps, step{text: text, size: 1, raw: counting})
	return p
}

// diffPlan turns the services in cur into those in want, touching only what
// differs. Both are keyed by service key and hold normalized services.
func diffPlan(o *objects, cur, want map[Key]Service) *plan {
	p := &plan{}
	var keys []Key
	for k := range cur {
		if _, ok := want[k]; !ok {
			keys = append(keys, k)
		}
	}
	slices.SortFunc(keys, Key.Compare)
	for _, k := range keys {
		delService(p, o, cur[k])
		p.endService()
	}
	keys = keys[:0]
	for k := range want {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, Key.Compare)
	for _, k := range keys {
		old, ok := cur[k]
		if !ok {
			addService(p, o, want[k])
		} else {
			changeService(p, o, old, want[k])
		}
		p.endService()
	}
	return p
}

func servicesSet(o *objects, k Key) *nftables.Set {
	if k.Addr.Is6() {
		return o.services6
	}
	return o.services4
}

func counterSets(o *objects, k Key) (vip, backend *nftables.Set) {
	if k.Addr.Is6() {
		return o.vipCounters6, o.backendCounters6
	}
	return o.vipCounters4, o.backendCounters4
}

func vipChain(o *objects, k Key) *nftables.Chain {
	return &nftables.Chain{Table: o.table, Name: k.chainName()}
}

func addService(p *plan, o *objects, s Service) {
	t := "inet " + TableName
	slots := slotsSet(o.table, s.Key)
	ch := vipChain(o, s.Key)
	p.add(1, fmt.Sprintf("add map %s %s { type integer : %s; }", t, slots.Name, slots.DataType.Name),
		func(c *nftables.Conn) error { return c.AddSet(slots, nil) })
	setSlots(p, slots, nil, s.Slots)
	p.add(1, fmt.Sprintf("add chain %s %s", t, ch.Name), func(c *nftables.Conn) error { c.AddChain(ch); return nil })
	addPick(p, o, ch, slots, s)
	vc, _ := counterSets(o, s.Key)
	p.add(1, fmt.Sprintf("add element %s %s { %s }", t, vc.Name, keyText(s.Key)),
		func(c *nftables.Conn) error {
			return c.SetAddElements(vc, []nftables.SetElement{{Key: serviceKey(s.Key)}})
		})
	setBackendCounters(p, o, s.Key, nil, s.Backends)
	svc := servicesSet(o, s.Key)
	// The dispatch entry comes last: traffic reaches the chain only once
	// everything it needs is there.
	p.add(1, fmt.Sprintf("add element %s %s { %s : goto %s }", t, svc.Name, keyText(s.Key), ch.Name),
		func(c *nftables.Conn) error {
			return c.SetAddElements(svc, []nftables.SetElement{{Key: serviceKey(s.Key), VerdictData: gotoChain(ch.Name)}})
		})
}

func delService(p *plan, o *objects, s Service) {
	t := "inet " + TableName
	svc := servicesSet(o, s.Key)
	slots := slotsSet(o.table, s.Key)
	ch := vipChain(o, s.Key)
	// The dispatch entry goes first, so no packet reaches a half-removed
	// chain; the chain goes before the map its rule refers to.
	p.add(1, fmt.Sprintf("delete element %s %s { %s }", t, svc.Name, keyText(s.Key)),
		func(c *nftables.Conn) error {
			return c.SetDeleteElements(svc, []nftables.SetElement{{Key: serviceKey(s.Key)}})
		})
	p.add(1, fmt.Sprintf("delete chain %s %s", t, ch.Name), func(c *nftables.Conn) error { c.DelChain(ch); return nil })
	p.add(1, fmt.Sprintf("delete map %s %s", t, slots.Name), func(c *nftables.Conn) error { c.DelSet(slots); return nil })
	vc, _ := counterSets(o, s.Key)
	p.add(1, fmt.Sprintf("delete element %s %s { %s }", t, vc.Name, keyText(s.Key)),
		func(c *nftables.Conn) error {
			return c.SetDeleteElements(vc, []nftables.SetElement{{Key: serviceKey(s.Key)}})
		})
	setBackendCounters(p, o, s.Key, s.Backends, nil)
}

func changeService(p *plan, o *objects, old, s Service) {
	slots := slotsSet(o.table, s.Key)
	setSlots(p, slots, old.Slots, s.Slots)
	if old.SNAT != s.SNAT || old.Scheduler != s.Scheduler || len(old.Slots) != len(s.Slots) {
		ch := vipChain(o, s.Key)
		p.add(1, fmt.Sprintf("flush chain inet %s %s", TableName, ch.Name),
			func(c *nftables.Conn) error { c.FlushChain(ch); return nil })
		addPick(p, o, ch, slots, s)
	}
	setBackendCounters(p, o, s.Key, old.Backends, s.Backends)
}

// addPick adds the VIP chain's rule; a VIP without slots has none.
func addPick(p *plan, o *objects, ch *nftables.Chain, slots *nftables.Set, s Service) {
	if len(s.Slots) == 0 {
		return
	}
	p.add(1, fmt.Sprintf("add rule inet %s %s %s", TableName, ch.Name, pickText(s)),
		func(c *nftables.Conn) error {
			c.AddRule(&nftables.Rule{Table: o.table, Chain: ch, Exprs: pick(s, slots)})
			return nil
		})
}

// setSlots changes the slot map from old to want: the slots whose backend
// differs are deleted and added again (the kernel does not update a map
// element's value in place), all in the same transaction.
func setSlots(p *plan, slots *nftables.Set, old, want []netip.AddrPort) {
	var del, add []nftables.SetElement
	var delText, addText []string
	for i := range max(len(old), len(want)) {
		var o, w netip.AddrPort
		if i < len(old) {
			o = old[i]
		}
		if i < len(want) {
			w = want[i]
		}
		if o == w {
			continue
		}
		if o.IsValid() {
			del = append(del, nftables.SetElement{Key: slotKey(i)})
			delText = append(delText, fmt.Sprint(i))
		}
		if w.IsValid() {
			add = append(add, nftables.SetElement{Key: slotKey(i), Val: backendData(w)})
			addText = append(addText, fmt.Sprintf("%d : %s . %d", i, w.Addr(), w.Port()))
		}
	}
	elementSteps(p, "delete", slots, del, delText)
	elementSteps(p, "add", slots, add, addText)
}

// setBackendCounters adds the counters of new backends and removes those of
// backends that went. Both lists are sorted.
func setBackendCounters(p *plan, o *objects, k Key, old, want []netip.AddrPort) {
	_, set := counterSets(o, k)
	var del, add []nftables.SetElement
	var delText, addText []string
	for _, b := range old {
		if _, found := slices.BinarySearchFunc(want, b, netip.AddrPort.Compare); !found {
			del = append(del, nftables.SetElement{Key: backendCounterKey(k, b)})
			delText = append(delText, keyText(k)+" . "+backendText(b))
		}
	}
	for _, b := range want {
		if _, found := slices.BinarySearchFunc(old, b, netip.AddrPort.Compare); !found {
			add = append(add, nftables.SetElement{Key: backendCounterKey(k, b)})
			addText = append(addText, keyText(k)+" . "+backendText(b))
		}
	}
	elementSteps(p, "delete", set, del, delText)
	elementSteps(p, "add", set, add, addText)
}

// maxElements bounds the elements of one netlink message. They travel nested
// in one attribute, whose length field has 16 bits: a longer list wraps the
// length around and the kernel silently takes only the head of the list.
// 1024 elements of the largest kind (an IPv6 backend counter key) are 56 KiB.
const maxElements = 1024

// elementSteps adds the steps that add or delete (verb) elems, whose nft
// texts are texts, in messages of at most maxElements.
func elementSteps(p *plan, verb string, set *nftables.Set, elems []nftables.SetElement, texts []string) {
	apply := (*nftables.Conn).SetAddElements
	if verb == "delete" {
		apply = (*nftables.Conn).SetDeleteElements
	}
	for i := 0; i < len(elems); i += maxElements {
		j := min(i+maxElements, len(elems))
		e := elems[i:j]
		p.add(len(e), fmt.Sprintf("%s element inet %s %s { %s }", verb, TableName, set.Name, strings.Join(texts[i:j], ", ")),
			func(c *nftables.Conn) error { return apply(c, set, e) })
	}
}

func keyText(k Key) string { return fmt.Sprintf("%s . %s . %d", k.Addr, k.Proto, k.Port) }

func backendText(b netip.AddrPort) string { return fmt.Sprintf("%s . %d", b.Addr(), b.Port()) }
