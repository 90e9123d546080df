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
	// raw sends hand-encoded batches (set elements, the forward chain's
	// rules); nil until first needed and after a failed batch.
	raw *netlink.Conn
	o   *objects
	log *slog.Logger
	// netns is the namespace's descriptor, 0 for our own.
	netns int
	// cur is what the kernel holds, sorted by key, as last written or
	// read; nil until the table has been adopted, and again after a failed
	// batch, so that the next Set starts from what the kernel really holds.
	cur []Service
	// refs counts the users of every pick chain and slot map the kernel
	// holds.
	refs objectRefs
}

// maxStructure bounds the structure steps (chains, rules) of one batch.
const maxStructure = 2000

// maxBatchBytes is about how many bytes of elements one batch carries: a
// batch is one sendmsg, and it is cut only after a whole service. Bigger
// batches save the kernel work per transaction (it validates the table
// after each one that changes dispatch entries), smaller ones hold less
// memory in the kernel while it is being committed.
const maxBatchBytes = 4 << 20

// sendBuffer is the netlink socket's send buffer. A batch is one sendmsg,
// and it is cut only after a whole service, so the buffer must hold
// maxBatchBytes plus the largest service change: all MaxSlots slots of an
// IPv6 VIP deleted and added again, with as many backends, is about 11 MiB.
// The default (net.core.wmem_default) is 208 KiB, and SO_SNDBUF is capped by
// net.core.wmem_max; SO_SNDBUFFORCE is not, and needs CAP_NET_ADMIN, which
// nftables needs anyway.
const sendBuffer = 32 << 20

// recvBuffer is the receive buffer: the kernel queues one ack for every
// message of a batch before any is read, and reads a set of a million
// elements back in parts that must fit.
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

// Close releases the netlink connections; the kernel keeps the table.
func (t *Target) Close() error {
	t.closeRaw()
	return t.conn.CloseLasting()
}

func (t *Target) closeRaw() {
	if t.raw != nil {
		_ = t.raw.Close()
		t.raw = nil
	}
}

// errInvalid marks a service that Set refuses.
var errInvalid = errors.New("invalid service")

// Set makes the table hold exactly the given services, changing only what
// differs from what it holds. The first call adopts what an earlier run left
// in the kernel (Dump, diff, fix) rather than flushing it, so established
// connections keep flowing across a daemon restart. Calling Set twice with
// the same services sends nothing the second time. An invalid service is an
// error before anything is sent. The element changes of one service always
// reach the kernel in one transaction.
//
// Set keeps the Backends and Slots slices it is given, without copying
// them: the caller must not modify them afterwards. It finds the services
// that did not change by comparing each with what it kept, which costs
// next to nothing for a slice it kept itself; so a caller that gives the
// same slices again for what did not change (control.Desired does: it is
// never modified, and compile reuses the tables of unchanged VIPs) pays
// for what changed only, not for every service.
func (t *Target) Set(ctx context.Context, services []Service) error {
	want := services
	if !slices.IsSortedFunc(want, func(a, b Service) int { return a.Key.Compare(b.Key) }) {
		want = slices.Clone(want)
		slices.SortFunc(want, func(a, b Service) int { return a.Key.Compare(b.Key) })
	}
	for i := 1; i < len(want); i++ {
		if want[i].Key == want[i-1].Key {
			return fmt.Errorf("nft: service %s: listed twice", want[i].Key)
		}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.cur == nil {
		// Everything is new to a target that has not adopted the table
		// yet: check it all before reading the kernel.
		for _, s := range want {
			if err := s.validate(); err != nil {
				return fmt.Errorf("nft: %w", err)
			}
		}
	}
	err := t.set(ctx, want)
	if err != nil && !errors.Is(err, errInvalid) && ctx.Err() == nil {
		// The kernel may hold something other than we thought (a batch
		// failed, or someone edited the table): read it back and retry once.
		t.log.Warn("nft: set failed, resyncing from the kernel", "err", err)
		t.cur = nil
		// Unread replies of the failed batch would stay on the connections
		// and answer the next request: start on new ones.
		t.closeRaw()
		_ = t.conn.CloseLasting()
		if derr := t.dial(); derr != nil {
			return errors.Join(err, derr)
		}
		err = t.set(ctx, want)
	}
	return err
}

// set makes the kernel hold want, sorted by key and without duplicates.
func (t *Target) set(ctx context.Context, want []Service) error {
	p := &plan{}
	cur := t.cur
	var a *adoption
	if cur == nil {
		var err error
		if a, err = t.adopt(); err != nil {
			return err
		}
		p, cur = a.pre, a.services
		t.refs = objectRefs{base: a.refs}
	}
	var foreign map[Key]string
	var idle []string
	if a != nil {
		foreign, idle = a.foreign, a.idle
	}
	changes, next, err := diff(cur, want, foreign)
	if err != nil {
		t.refs.delta = nil
		return fmt.Errorf("nft: %w", err)
	}
	// Chains this version did not write go once no dispatch entry names
	// them, and before the slot maps no service uses any more, which one of
	// them might use; sets this version did not write go last.
	changed, unused := changePlan(t.o, &t.refs, changes, idle)
	p.append(changed)
	if a != nil {
		p.append(a.postChains)
	}
	p.append(deleteUnused(t.o, &t.refs, unused))
	if a != nil {
		p.append(a.postSets)
	}
	if err := t.run(ctx, p); err != nil {
		t.cur, t.refs.delta = nil, nil
		return err
	}
	t.refs.commit()
	t.cur = next
	return nil
}

// diff walks cur and want, both sorted by key, and returns the changes and
// what the kernel holds once they are made. A service of want that equals
// its counterpart in cur costs one cheap comparison (Service.same); only
// those that differ are validated. foreign names the services whose
// dispatch entry points somewhere else than their pick chain (adopted from
// a table that an older version wrote): they change whatever they hold.
func diff(cur, want []Service, foreign map[Key]string) ([]change, []Service, error) {
	var changes []change
	next := make([]Service, 0, len(want))
	oldChain := func(s Service) string {
		if ch, ok := foreign[s.Key]; ok {
			return ch
		}
		return dispatch(s)
	}
	i, j := 0, 0
	for i < len(cur) || j < len(want) {
		c := 0
		switch {
		case i == len(cur):
			c = 1
		case j == len(want):
			c = -1
		default:
			c = cur[i].Key.Compare(want[j].Key)
		}
		switch {
		case c < 0:
			changes = append(changes, change{old: cur[i], hasOld: true, oldChain: oldChain(cur[i])})
			i++
			continue
		case c > 0:
			if err := want[j].validate(); err != nil {
				return nil, nil, fmt.Errorf("%w: %w", errInvalid, err)
			}
			n := want[j].normalize()
			changes = append(changes, change{new: n, hasNew: true})
			next = append(next, n)
			j++
			continue
		}
		n := want[j].normalize()
		_, isForeign := foreign[n.Key]
		if !isForeign && cur[i].same(n) {
			next = append(next, n)
		} else {
			if err := want[j].validate(); err != nil {
				return nil, nil, fmt.Errorf("%w: %w", errInvalid, err)
			}
			changes = append(changes, change{old: cur[i], new: n, hasOld: true, hasNew: true, oldChain: oldChain(cur[i])})
			next = append(next, n)
		}
		i++
		j++
	}
	return changes, next, nil
}

// run sends a plan in batches. Structure and element steps never share a
// batch; a batch is cut only after a unit, once it is big enough, and
// whenever the next step is of another kind.
func (t *Target) run(ctx context.Context, p *plan) error {
	var elems elemBatch
	var w wire     // reused from batch to batch: a fresh buffer costs page faults
	structure := 0 // structure steps queued on t.conn
	last := ""     // the last step queued, for errors
	flush := func() error {
		switch {
		case structure > 0:
			structure = 0
			if err := t.conn.Flush(); err != nil {
				return fmt.Errorf("nft: batch ending with %q: %w", last, err)
			}
		case !elems.empty():
			w.reset()
			w.batch(elems.encode)
			elems = elemBatch{}
			if err := t.sendRaw(&w); err != nil {
				return fmt.Errorf("nft: batch ending with %.200q: %w", last, err)
			}
		}
		return nil
	}
	for i := range p.steps {
		s := &p.steps[i]
		// ctx is checked only while nothing is queued: a batch once begun
		// is always sent, or its messages would stay on the connection and
		// go out with the next call's first batch, unseen by its plan.
		if structure == 0 && elems.empty() {
			if err := ctx.Err(); err != nil {
				return fmt.Errorf("nft: %w", err)
			}
		}
		switch {
		case s.raw != nil:
			if err := flush(); err != nil {
				return err
			}
			w.reset()
			w.batch(func(w *wire) {
				for _, m := range s.raw {
					w.message(m)
				}
			})
			if err := t.sendRaw(&w); err != nil {
				return fmt.Errorf("nft: %s: %w", s.text, err)
			}
			continue
		case s.elems != nil:
			if structure > 0 {
				if err := flush(); err != nil {
					return err
				}
			}
			elems.push(s.elems)
			last = "elements of " + s.elems.set.Name
		default:
			if !elems.empty() {
				if err := flush(); err != nil {
					return err
				}
			}
			if err := s.apply(t.conn); err != nil {
				return fmt.Errorf("nft: %s: %w", s.text, err)
			}
			structure += s.size
			last = s.text
		}
		if s.unit && (structure >= maxStructure || elems.bytes >= maxBatchBytes) {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	return flush()
}

// dialRaw opens the connection for hand-built messages, unless it is open.
func (t *Target) dialRaw() error {
	if t.raw != nil {
		return nil
	}
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: t.netns})
	if err != nil {
		return fmt.Errorf("dial netfilter netlink: %w", err)
	}
	if err := forceBuffers(c); err != nil {
		c.Close()
		return err
	}
	t.raw = c
	return nil
}

// writeRaw writes hand-built messages in one sendmsg.
func (t *Target) writeRaw(b []byte) error {
	rc, err := t.raw.SyscallConn()
	if err != nil {
		t.closeRaw()
		return err
	}
	var serr error
	err = rc.Write(func(fd uintptr) bool {
		serr = unix.Sendto(int(fd), b, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
		return serr != unix.EAGAIN
	})
	if err = errors.Join(err, serr); err != nil {
		t.closeRaw()
		return fmt.Errorf("send: %w", err)
	}
	return nil
}

// sendRaw sends a batch of hand-built messages and waits for every ack.
func (t *Target) sendRaw(w *wire) error {
	if err := t.dialRaw(); err != nil {
		return err
	}
	if err := t.writeRaw(w.buf); err != nil {
		return err
	}
	for acks := w.acks; acks > 0; {
		replies, err := t.raw.Receive()
		if err != nil {
			// The other acks of the batch may still be queued.
			t.closeRaw()
			return err
		}
		acks -= len(replies)
	}
	return nil
}

// Dump reads the services the kernel holds now, sorted by key. A service
// whose dispatch entry names no pick chain of this version is reported with
// no slots.
func (t *Target) Dump(ctx context.Context) ([]Service, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	d, err := t.dump()
	if err != nil {
		return nil, err
	}
	return d.services, nil
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

func isNotExist(err error) bool {
	return errors.Is(err, unix.ENOENT) || strings.Contains(err.Error(), "no such file")
}
