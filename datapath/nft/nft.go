package nft

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Options configure a Target.
type Options struct {
	// NetNS is an open file descriptor of the network namespace to
	// program; 0 means the caller's own.
	NetNS int
	Log   *slog.Logger
}

// Target is the L4 datapath of one network namespace. It is safe for use by
// several goroutines, but is meant to be driven by one reconciler.
type Target struct {
	mu   sync.Mutex
	conn *nftables.Conn
	o    *objects
	log  *slog.Logger
	// netns is the namespace's descriptor, 0 for our own.
	netns int
	// cur is what the kernel holds, as last written or read; nil until the
	// table has been adopted, and again after a failed batch, so that the
	// next Set starts from what the kernel really holds.
	cur map[Key]Service
}

// maxBatch bounds the netlink attributes sent in one transaction: the whole
// batch must fit the socket's send buffer.
const maxBatch = 1500

// sendBuffer is the netlink socket's send buffer. A batch is one sendmsg,
// and it is cut only after a whole service, so the buffer must hold the
// largest service change: all 65521 slots of an IPv6 VIP replaced, with as
// many backends, is about 11 MiB. The default (net.core.wmem_default) is
// 208 KiB, and SO_SNDBUF is capped by net.core.wmem_max; SO_SNDBUFFORCE is
// not, and needs CAP_NET_ADMIN, which nftables needs anyway.
const sendBuffer = 16 << 20

// recvBuffer is the receive buffer: the kernel queues one ack for every
// message of a batch before any is read, and a batch of deletions (one
// message each) overflows the 208 KiB default with ENOBUFS.
const recvBuffer = 16 << 20

// New opens a netlink connection to nftables. It changes nothing.
func New(opt Options) (*Target, error) {
	log := opt.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	t := &Target{o: newObjects(), log: log, netns: opt.NetNS}
	if err := t.dial(); err != nil {
		return nil, err
	}
	return t, nil
}

// dial opens the lasting netlink connection.
func (t *Target) dial() error {
	opts := []nftables.ConnOption{nftables.AsLasting(), nftables.WithSockOptions(forceBuffers)}
	if t.netns != 0 {
		opts = append(opts, nftables.WithNetNSFd(t.netns))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return fmt.Errorf("nft: open netlink: %w", err)
	}
	t.conn = c
	return nil
}

func forceBuffers(c *netlink.Conn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		serr = errors.Join(
			unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, sendBuffer),
			unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, recvBuffer))
	})
	if err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("set socket buffers: %w", serr)
	}
	return nil
}

// Close releases the netlink connection; the kernel keeps the table.
func (t *Target) Close() error { return t.conn.CloseLasting() }

// Set makes the table hold exactly the given services, changing only what
// differs from what it holds. The first call adopts what an earlier run left
// in the kernel (Dump, diff, fix) rather than flushing it, so established
// connections keep flowing across a daemon restart. Calling Set twice with
// the same services sends nothing the second time. An invalid service is an
// error before anything is sent. The changes of one service always reach
// the kernel in one transaction.
func (t *Target) Set(ctx context.Context, services []Service) error {
	want := make(map[Key]Service, len(services))
	for _, s := range services {
		if err := s.validate(); err != nil {
			return fmt.Errorf("nft: %w", err)
		}
		if _, dup := want[s.Key]; dup {
			return fmt.Errorf("nft: service %s: listed twice", s.Key)
		}
		want[s.Key] = s.normalize()
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	err := t.set(ctx, want)
	if err != nil && ctx.Err() == nil {
		// The kernel may hold something other than we thought (a batch
		// failed, or someone edited the table): read it back and retry once.
		t.log.Warn("nft: set failed, resyncing from the kernel", "err", err)
		t.cur = nil
		// Unread replies of the failed batch would stay on the connection
		// and answer the next request: start on a new one.
		_ = t.conn.CloseLasting()
		if derr := t.dial(); derr != nil {
			return errors.Join(err, derr)
		}
		err = t.set(ctx, want)
	}
	return err
}

func (t *Target) set(ctx context.Context, want map[Key]Service) error {
	if t.cur == nil {
		if err := t.adopt(ctx); err != nil {
			return err
		}
	}
	p := diffPlan(t.o, t.cur, want)
	if err := t.run(ctx, p); err != nil {
		t.cur = nil
		return err
	}
	t.cur = want
	return nil
}

// adopt reads the table an earlier run left, removes what does not belong
// to a service, and makes sure the base objects are as this version writes
// them.
func (t *Target) adopt(ctx context.Context) error {
	d, err := t.dump()
	if err != nil {
		return err
	}
	p := basePlan(t.o)
	for _, name := range d.orphanChains {
		ch := &nftables.Chain{Table: t.o.table, Name: name}
		p.add(1, "delete chain inet "+TableName+" "+name, func(c *nftables.Conn) error { c.DelChain(ch); return nil })
	}
	for _, name := range d.orphanSets {
		s := &nftables.Set{Table: t.o.table, Name: name}
		p.add(1, "delete map inet "+TableName+" "+name, func(c *nftables.Conn) error { c.DelSet(s); return nil })
	}
	for _, oc := range d.orphanCounters {
		p.add(1, fmt.Sprintf("delete element inet %s %s { %x }", TableName, oc.set.Name, oc.key), func(c *nftables.Conn) error {
			return c.SetDeleteElements(oc.set, []nftables.SetElement{{Key: oc.key}})
		})
	}
	p.endService()
	if err := t.run(ctx, p); err != nil {
		return fmt.Errorf("nft: adopt table inet %s: %w", TableName, err)
	}
	if n := len(d.services); n > 0 {
		t.log.Info("nft: adopted existing table", "services", n, "orphans", len(d.orphanChains)+len(d.orphanSets))
	}
	t.cur = d.services
	return nil
}

// run sends a plan in batches, each cut after a whole service.
func (t *Target) run(ctx context.Context, p *plan) error {
	size := 0 // attributes queued on the connection
	for i, s := range p.steps {
		// ctx is checked only while nothing is queued: a batch once begun
		// is always sent, or its messages would stay on the connection and
		// go out with the next call's first batch, unseen by its plan.
		if size == 0 {
			if err := ctx.Err(); err != nil {
				return fmt.Errorf("nft: %w", err)
			}
		}
		if s.raw != nil {
			if err := t.conn.Flush(); err != nil {
				return fmt.Errorf("nft: batch before %q: %w", s.text, err)
			}
			msgs, err := rawForwardBatch(s.raw)
			if err == nil {
				err = sendRaw(t.netns, msgs)
			}
			if err != nil {
				return fmt.Errorf("nft: %s: %w", s.text, err)
			}
			size = 0
			continue
		}
		if err := s.apply(t.conn); err != nil {
			return fmt.Errorf("nft: %s: %w", s.text, err)
		}
		size += s.size
		if (size >= maxBatch && s.service) || i == len(p.steps)-1 {
			if err := t.conn.Flush(); err != nil {
				return fmt.Errorf("nft: batch ending with %q: %w", s.text, err)
			}
			size = 0
		}
	}
	return nil
}

// Dump reads the services the kernel holds now, sorted by key. A service
// whose chain lost its rule is reported with an empty Slots.
func (t *Target) Dump(ctx context.Context) ([]Service, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	d, err := t.dump()
	if err != nil {
		return nil, err
	}
	out := make([]Service, 0, len(d.services))
	for _, s := range d.services {
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b Service) int { return a.Key.Compare(b.Key) })
	return out, nil
}

type dumped struct {
	services       map[Key]Service
	orphanChains   []string
	orphanSets     []string
	orphanCounters []orphanCounter
}

type orphanCounter struct {
	set *nftables.Set
	key []byte
}

func isNotExist(err error) bool {
	return errors.Is(err, unix.ENOENT) || strings.Contains(err.Error(), "no such file")
}

func (t *Target) dump() (*dumped, error) {
	d := &dumped{services: map[Key]Service{}}
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
	setNames := map[string]*nftables.Set{}
	for _, s := range sets {
		setNames[s.Name] = s
	}
	chains, err := t.conn.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, fmt.Errorf("nft: list chains: %w", err)
	}
	usedChains := map[string]bool{}
	for _, svc := range []*nftables.Set{t.o.services4, t.o.services6} {
		if setNames[svc.Name] == nil {
			continue
		}
		elems, err := t.elements(svc)
		if err != nil {
			return nil, fmt.Errorf("nft: list map %s: %w", svc.Name, err)
		}
		for _, e := range elems {
			k, err := decodeServiceKey(e.Key, svc == t.o.services6)
			if err != nil {
				return nil, fmt.Errorf("nft: map %s: %w", svc.Name, err)
			}
			s, err := t.dumpService(k, setNames)
			if err != nil {
				return nil, err
			}
			d.services[k] = s
			usedChains[k.chainName()] = true
		}
	}
	for _, set := range []*nftables.Set{t.o.vipCounters4, t.o.vipCounters6} {
		if setNames[set.Name] == nil {
			continue
		}
		elems, err := t.elements(set)
		if err != nil {
			return nil, fmt.Errorf("nft: list set %s: %w", set.Name, err)
		}
		for _, e := range elems {
			k, err := decodeServiceKey(e.Key, set == t.o.vipCounters6)
			if err != nil {
				return nil, fmt.Errorf("nft: set %s: %w", set.Name, err)
			}
			if _, ok := d.services[k]; !ok {
				// A counter whose VIP is gone: adopt deletes it.
				d.orphanCounters = append(d.orphanCounters, orphanCounter{set, e.Key})
			}
		}
	}
	for _, set := range []*nftables.Set{t.o.backendCounters4, t.o.backendCounters6} {
		if setNames[set.Name] == nil {
			continue
		}
		elems, err := t.elements(set)
		if err != nil {
			return nil, fmt.Errorf("nft: list set %s: %w", set.Name, err)
		}
		for _, e := range elems {
			k, b, err := decodeBackendCounterKey(e.Key, set == t.o.backendCounters6)
			if err != nil {
				return nil, fmt.Errorf("nft: set %s: %w", set.Name, err)
			}
			s, ok := d.services[k]
			if !ok {
				// A counter whose VIP is gone: adopt deletes it.
				d.orphanCounters = append(d.orphanCounters, orphanCounter{set, e.Key})
				continue
			}
			s.Backends = append(s.Backends, b)
			d.services[k] = s
		}
	}
	for k, s := range d.services {
		d.services[k] = s.normalize()
	}
	for _, c := range chains {
		if c.Table.Name == TableName && strings.HasPrefix(c.Name, "vip_") && !usedChains[c.Name] {
			d.orphanChains = append(d.orphanChains, c.Name)
		}
	}
	for name := range setNames {
		if chain, ok := strings.CutSuffix(name, "_slots"); ok && strings.HasPrefix(chain, "vip_") && !usedChains[chain] {
			d.orphanSets = append(d.orphanSets, name)
		}
	}
	slices.Sort(d.orphanChains)
	slices.Sort(d.orphanSets)
	return d, nil
}

// maxReads bounds how often elements reads a set that keeps coming back
// inconsistent.
const maxReads = 10

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

// dumpService reads one VIP's chain rule and slot map.
func (t *Target) dumpService(k Key, setNames map[string]*nftables.Set) (Service, error) {
	s := Service{Key: k}
	ch := vipChain(t.o, k)
	rules, err := t.conn.GetRules(t.o.table, ch)
	if err != nil {
		return s, fmt.Errorf("nft: list chain %s: %w", ch.Name, err)
	}
	size := 0
	if len(rules) == 1 {
		if s.SNAT, s.Scheduler, size, err = parsePick(rules[0].Exprs); err != nil {
			return s, fmt.Errorf("nft: chain %s: %w", ch.Name, err)
		}
	}
	slots := slotsSet(t.o.table, k)
	if setNames[slots.Name] == nil || size == 0 {
		// No rule, or no map: report no slots, so that a Set wanting any
		// rewrites the chain and the map.
		return s, nil
	}
	elems, err := t.elements(slots)
	if err != nil {
		return s, fmt.Errorf("nft: list map %s: %w", slots.Name, err)
	}
	s.Slots = make([]netip.AddrPort, size)
	for _, e := range elems {
		i, err := decodeSlotKey(e.Key)
		if err != nil {
			return s, fmt.Errorf("nft: map %s: %w", slots.Name, err)
		}
		b, err := decodeBackendData(e.Val, k.Addr.Is6())
		if err != nil {
			return s, fmt.Errorf("nft: map %s: %w", slots.Name, err)
		}
		if i < size {
			s.Slots[i] = b
		}
	}
	return s, nil
}

// Counter is a packet and byte count.
type Counter struct {
	Packets uint64
	Bytes   uint64
}

// Counters are the packet and byte counts of every VIP and of every backend
// of every VIP, both directions, since the VIP or backend was added.
type Counters struct {
	VIPs     map[Key]Counter
	Backends map[Key]map[netip.AddrPort]Counter
}

// Counters reads the counters of every VIP and backend in the table. It
// may be called from any goroutine, beside Set.
func (t *Target) Counters(ctx context.Context) (Counters, error) {
	// The lasting connection is shared: a read must not run into the
	// middle of Set's batch.
	t.mu.Lock()
	defer t.mu.Unlock()
	out := Counters{VIPs: map[Key]Counter{}, Backends: map[Key]map[netip.AddrPort]Counter{}}
	for _, set := range []*nftables.Set{t.o.vipCounters4, t.o.vipCounters6} {
		elems, err := t.elements(set)
		if err != nil {
			return out, fmt.Errorf("nft: list set %s: %w", set.Name, err)
		}
		for _, e := range elems {
			k, err := decodeServiceKey(e.Key, set == t.o.vipCounters6)
			if err != nil || e.Counter == nil {
				continue
			}
			out.VIPs[k] = Counter{Packets: e.Counter.Packets, Bytes: e.Counter.Bytes}
		}
	}
	for _, set := range []*nftables.Set{t.o.backendCounters4, t.o.backendCounters6} {
		elems, err := t.elements(set)
		if err != nil {
			return out, fmt.Errorf("nft: list set %s: %w", set.Name, err)
		}
		for _, e := range elems {
			k, b, err := decodeBackendCounterKey(e.Key, set == t.o.backendCounters6)
			if err != nil || e.Counter == nil {
				continue
			}
			if out.Backends[k] == nil {
				out.Backends[k] = map[netip.AddrPort]Counter{}
			}
			out.Backends[k][b] = Counter{Packets: e.Counter.Packets, Bytes: e.Counter.Bytes}
		}
	}
	return out, nil
}

// Delete removes the appliance's table and everything in it. Deleting a
// table that is not there is not an error.
func (t *Target) Delete(ctx context.Context) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.cur = nil
	if _, err := t.conn.ListTableOfFamily(TableName, nftables.TableFamilyINet); err != nil {
		if isNotExist(err) {
			return nil
		}
		return fmt.Errorf("nft: list table inet %s: %w", TableName, err)
	}
	t.conn.DelTable(t.o.table)
	if err := t.conn.Flush(); err != nil {
		return fmt.Errorf("nft: delete table inet %s: %w", TableName, err)
	}
	return nil
}

// Resync makes the next Set read the table back from the kernel (Dump,
// diff, fix) instead of trusting what this target last wrote.
func (t *Target) Resync() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.cur = nil
}
