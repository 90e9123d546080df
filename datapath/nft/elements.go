package nft

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Set elements are encoded here rather than by github.com/google/nftables:
// at 10,000 VIPs the table holds 1.3 million slots, and its encoder (several
// allocations and marshals per element) cost more than the kernel spent
// adding them. An element is appended to a buffer as the netlink attribute
// NFTA_LIST_ELEM that a NEWSETELEM or DELSETELEM message carries; a batch
// concatenates the buffers of each set and cuts them into messages.

// nlaHdr is the size of a netlink attribute header.
const nlaHdr = 4

// maxElemsAttr bounds the nested attribute that holds a message's elements:
// its length field has 16 bits, and a longer list wraps the length around,
// so that the kernel silently takes only the head of the list.
const maxElemsAttr = 0xffff - nlaHdr

// appendAttr appends a netlink attribute holding data, padded to 4 bytes.
func appendAttr(b []byte, typ uint16, data []byte) []byte {
	b = binary.NativeEndian.AppendUint16(b, uint16(nlaHdr+len(data)))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(b, data...)
	for range (4 - len(data)%4) % 4 {
		b = append(b, 0)
	}
	return b
}

// nest starts a nested attribute of type typ; end closes it.
func nest(b []byte, typ uint16) ([]byte, int) {
	at := len(b)
	b = binary.NativeEndian.AppendUint16(b, 0)
	return binary.NativeEndian.AppendUint16(b, typ|unix.NLA_F_NESTED), at
}

func end(b []byte, at int) []byte {
	binary.NativeEndian.PutUint16(b[at:], uint16(len(b)-at))
	return b
}

// appendElem appends one element: its key and, for a map, its value (data)
// or verdict (v, when data is nil and v is not).
func appendElem(b, key, data []byte, v *verdict) []byte {
	b, e := nest(b, unix.NFTA_LIST_ELEM)
	b, k := nest(b, unix.NFTA_SET_ELEM_KEY)
	b = end(appendAttr(b, unix.NFTA_DATA_VALUE, key), k)
	switch {
	case data != nil:
		b, d := nest(b, unix.NFTA_SET_ELEM_DATA)
		b = end(appendAttr(b, unix.NFTA_DATA_VALUE, data), d)
		return end(b, e)
	case v != nil:
		b, d := nest(b, unix.NFTA_SET_ELEM_DATA)
		b, vd := nest(b, unix.NFTA_DATA_VERDICT)
		b = appendAttr(b, unix.NFTA_VERDICT_CODE, binary.BigEndian.AppendUint32(nil, uint32(v.code)))
		if v.chain != "" {
			b = appendAttr(b, unix.NFTA_VERDICT_CHAIN, []byte(v.chain+"\x00"))
		}
		b = end(end(b, vd), d)
		return end(b, e)
	}
	return end(b, e)
}

// nfAccept is the accept verdict (NF_ACCEPT).
const nfAccept = 1

// verdict is a verdict map's value: accept, or goto a chain.
type verdict struct {
	code  int32
	chain string
}

// dispatchVerdict is what services4/6 map a service to: goto its pick
// chain, or accept when it has no slots, so that its new flows reach the
// local stack, which refuses them.
func dispatchVerdict(chain string) *verdict {
	if chain == "" {
		return &verdict{code: nfAccept}
	}
	return &verdict{code: unix.NFT_GOTO, chain: chain}
}

// elemStep adds or deletes elements of one set.
type elemStep struct {
	set *nftables.Set
	del bool
	// elems holds the encoded elements back to back; ends[i] is where
	// the i-th one ends.
	elems []byte
	ends  []int
}

// grow makes room for n elements with keys and values of these sizes.
func (e *elemStep) grow(n, key, data int) {
	size := 3*nlaHdr + key
	if data > 0 {
		size += 2*nlaHdr + data
	}
	e.elems = slices.Grow(e.elems, n*size)
	e.ends = slices.Grow(e.ends, n)
}

func (e *elemStep) add(key, data []byte, v *verdict) {
	e.elems = appendElem(e.elems, key, data, v)
	e.ends = append(e.ends, len(e.elems))
}

func (e *elemStep) verb() string {
	if e.del {
		return "delete"
	}
	return "add"
}

// String is the step in nft syntax, decoded from the bytes it sends.
func (e *elemStep) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s element inet %s %s { ", e.verb(), TableName, e.set.Name)
	start := 0
	for i, stop := range e.ends {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(elemText(e.set.Name, e.elems[start:stop]))
		start = stop
	}
	b.WriteString(" }")
	return b.String()
}

// elemText decodes one element of the named set as nft writes it.
func elemText(set string, attr []byte) string {
	key, data, v, err := decodeElem(attr)
	if err != nil {
		return "<" + err.Error() + ">"
	}
	v6 := strings.HasSuffix(set, "6")
	if sv6, _, ok := parseSlotSetName(set); ok {
		v6 = sv6
	}
	var text string
	switch {
	case strings.HasPrefix(set, "services") || strings.HasPrefix(set, "vip_counters"):
		k, err := decodeServiceKey(key, v6)
		if err != nil {
			return "<" + err.Error() + ">"
		}
		text = keyText(k)
	case strings.HasPrefix(set, "slots"):
		k, slot, err := decodeSlotKey(key, v6)
		if err != nil {
			return "<" + err.Error() + ">"
		}
		text = fmt.Sprintf("%s . %d", keyText(k), slot)
	case strings.HasPrefix(set, "backend_counters"):
		k, be, err := decodeBackendCounterKey(key, v6)
		if err != nil {
			return "<" + err.Error() + ">"
		}
		text = keyText(k) + " . " + backendText(be)
	default:
		text = fmt.Sprintf("0x%x", key)
	}
	switch {
	case data != nil:
		be, err := decodeBackendData(data, v6)
		if err != nil {
			return "<" + err.Error() + ">"
		}
		text += " : " + backendText(be)
	case v != nil && v.code == unix.NFT_GOTO:
		text += " : goto " + v.chain
	case v != nil && v.code == nfAccept:
		text += " : accept"
	case v != nil:
		text += fmt.Sprintf(" : verdict %d", v.code)
	}
	return text
}

// decodeElem reverses appendElem.
func decodeElem(attr []byte) (key, data []byte, v *verdict, err error) {
	ad, err := netlink.NewAttributeDecoder(attr)
	if err != nil {
		return nil, nil, nil, err
	}
	for ad.Next() {
		ad.Nested(func(ad *netlink.AttributeDecoder) error {
			for ad.Next() {
				switch ad.Type() {
				case unix.NFTA_SET_ELEM_KEY:
					ad.Nested(func(ad *netlink.AttributeDecoder) error {
						for ad.Next() {
							key = ad.Bytes()
						}
						return nil
					})
				case unix.NFTA_SET_ELEM_DATA:
					ad.Nested(func(ad *netlink.AttributeDecoder) error {
						for ad.Next() {
							switch ad.Type() {
							case unix.NFTA_DATA_VALUE:
								data = ad.Bytes()
							case unix.NFTA_DATA_VERDICT:
								v = &verdict{}
								ad.Nested(func(ad *netlink.AttributeDecoder) error {
									for ad.Next() {
										switch ad.Type() {
										case unix.NFTA_VERDICT_CODE:
											v.code = int32(binary.BigEndian.Uint32(ad.Bytes()))
										case unix.NFTA_VERDICT_CHAIN:
											v.chain = strings.TrimRight(ad.String(), "\x00")
										}
									}
									return nil
								})
							}
						}
						return nil
					})
				}
			}
			return nil
		})
	}
	return key, data, v, ad.Err()
}

// decodeVerdict reads a verdict map element's value: the attributes inside
// NFTA_DATA_VERDICT.
func decodeVerdict(b []byte) (*verdict, error) {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return nil, err
	}
	v := &verdict{}
	found := false
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_VERDICT_CODE:
			v.code, found = int32(binary.BigEndian.Uint32(ad.Bytes())), true
		case unix.NFTA_VERDICT_CHAIN:
			v.chain = strings.TrimRight(ad.String(), "\x00")
		}
	}
	if err := ad.Err(); err != nil {
		return nil, err
	}
	if !found {
		return nil, fmt.Errorf("no verdict code")
	}
	return v, nil
}

// elemBatch collects the element steps of one transaction. Within a
// transaction the order of elements does not matter to packets, which see
// all of it or none, but a key can be added after it was deleted and not the
// other way round: every deletion goes before every addition.
type elemBatch struct {
	del, add map[*nftables.Set][]*elemStep
	sets     []*nftables.Set // in first-seen order, for a stable message order
	bytes    int
}

func (b *elemBatch) push(e *elemStep) {
	if b.del == nil {
		b.del, b.add = map[*nftables.Set][]*elemStep{}, map[*nftables.Set][]*elemStep{}
	}
	if _, ok := b.del[e.set]; !ok {
		if _, ok := b.add[e.set]; !ok {
			b.sets = append(b.sets, e.set)
		}
	}
	if e.del {
		b.del[e.set] = append(b.del[e.set], e)
	} else {
		b.add[e.set] = append(b.add[e.set], e)
	}
	b.bytes += len(e.elems)
}

func (b *elemBatch) empty() bool { return b.bytes == 0 && len(b.sets) == 0 }

// encode writes the batch's messages: per set, its deletions and then its
// additions, each cut into messages whose elements fit one attribute.
func (b *elemBatch) encode(w *wire) {
	w.grow(b.bytes + 2*len(b.sets)*(b.bytes/maxElemsAttr+2)*128)
	for _, del := range []bool{true, false} {
		for _, set := range b.sets {
			steps := b.add[set]
			if del {
				steps = b.del[set]
			}
			encodeElems(w, set, del, steps)
		}
	}
}

// encodeElems writes the messages that carry the elements of steps.
func encodeElems(w *wire, set *nftables.Set, del bool, steps []*elemStep) {
	if len(steps) == 0 {
		return
	}
	typ, flags := uint16(unix.NFT_MSG_NEWSETELEM), netlink.Request|netlink.Acknowledge|netlink.Create
	if del {
		typ, flags = unix.NFT_MSG_DELSETELEM, netlink.Request|netlink.Acknowledge
	}
	msg, list := -1, -1 // where the open message and its element list start
	for _, s := range steps {
		from := 0
		for _, to := range s.ends {
			elem := s.elems[from:to]
			from = to
			if list >= 0 && len(w.buf)-list+len(elem) > maxElemsAttr {
				w.buf = end(w.buf, list)
				w.end(msg)
				msg, list = -1, -1
			}
			if msg < 0 {
				msg = w.begin(unix.NFNL_SUBSYS_NFTABLES<<8|typ, flags)
				w.buf = append(w.buf, byte(set.Table.Family), unix.NFNETLINK_V0, 0, 0)
				w.buf = appendAttr(w.buf, unix.NFTA_SET_ELEM_LIST_TABLE, []byte(set.Table.Name+"\x00"))
				w.buf = appendAttr(w.buf, unix.NFTA_SET_ELEM_LIST_SET, []byte(set.Name+"\x00"))
				w.buf, list = nest(w.buf, unix.NFTA_SET_ELEM_LIST_ELEMENTS)
			}
			w.buf = append(w.buf, elem...)
		}
	}
	if msg >= 0 {
		w.buf = end(w.buf, list)
		w.end(msg)
	}
}

// wire is netlink messages as they go to the kernel, back to back, for one
// sendmsg: github.com/mdlayher/netlink would copy each message twice more.
type wire struct {
	buf []byte
	// acks is how many of the messages ask for an acknowledgement.
	acks int
}

func (w *wire) grow(n int) { w.buf = slices.Grow(w.buf, n) }

func (w *wire) reset() { w.buf, w.acks = w.buf[:0], 0 }

// begin starts a message; end finishes the one begun at at.
func (w *wire) begin(typ uint16, flags netlink.HeaderFlags) int {
	at := len(w.buf)
	w.buf = binary.NativeEndian.AppendUint32(w.buf, 0) // length, set by end
	w.buf = binary.NativeEndian.AppendUint16(w.buf, typ)
	w.buf = binary.NativeEndian.AppendUint16(w.buf, uint16(flags))
	w.buf = binary.NativeEndian.AppendUint32(w.buf, 0) // sequence
	w.buf = binary.NativeEndian.AppendUint32(w.buf, 0) // port: the kernel fills it in
	if flags&netlink.Acknowledge != 0 {
		w.acks++
	}
	return at
}

func (w *wire) end(at int) {
	binary.NativeEndian.PutUint32(w.buf[at:], uint32(len(w.buf)-at))
	for len(w.buf)%4 != 0 {
		w.buf = append(w.buf, 0)
	}
}

// message writes a message built elsewhere.
func (w *wire) message(m netlink.Message) {
	at := w.begin(uint16(m.Header.Type), m.Header.Flags)
	w.buf = append(w.buf, m.Data...)
	w.end(at)
}

// batch wraps what fill writes in a batch's begin and end: one transaction.
func (w *wire) batch(fill func(w *wire)) {
	subsys := []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, unix.NFNL_SUBSYS_NFTABLES}
	at := w.begin(unix.NFNL_MSG_BATCH_BEGIN, netlink.Request)
	w.buf = append(w.buf, subsys...)
	w.end(at)
	fill(w)
	at = w.begin(unix.NFNL_MSG_BATCH_END, netlink.Request)
	w.buf = append(w.buf, subsys...)
	w.end(at)
}

// keyText and backendText write keys and backends as nft does.
func keyText(k Key) string { return fmt.Sprintf("%s . %s . %d", k.Addr, k.Proto, k.Port) }

func backendText(b netip.AddrPort) string { return fmt.Sprintf("%s . %d", b.Addr(), b.Port()) }
