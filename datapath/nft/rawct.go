package nft

import (
	"fmt"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// The forward chain's counting rules are written with hand-built netlink
// messages: they load conntrack addresses with the family-specific keys
// (ct original ip daddr, ct reply ip6 saddr, …), which need a direction
// attribute that github.com/google/nftables v0.3.0 sends only for the
// family-less keys (and then as a u32 where the kernel reads a u8, so a
// reply direction would silently read the original one). The family-less
// keys load 16 bytes in an inet table, which the nft CLI cannot print (it
// aborts on "netlink_parse_concat_expr: Assertion consumed > 0").

// rawExpr is one expression: its name and its attributes.
type rawExpr struct {
	name  string
	attrs []netlink.Attribute
}

func u32(t uint16, v uint32) netlink.Attribute {
	b := make([]byte, 4)
	b[0], b[1], b[2], b[3] = byte(v>>24), byte(v>>16), byte(v>>8), byte(v)
	return netlink.Attribute{Type: t, Data: b}
}

func str(t uint16, s string) netlink.Attribute {
	return netlink.Attribute{Type: t, Data: []byte(s + "\x00")}
}

func rawCt(key uint32, dir uint8, dreg uint32) rawExpr {
	return rawExpr{"ct", []netlink.Attribute{
		u32(unix.NFTA_CT_DREG, dreg),
		u32(unix.NFTA_CT_KEY, key),
		{Type: unix.NFTA_CT_DIRECTION, Data: []byte{dir}},
	}}
}

func rawMeta(key, dreg uint32) rawExpr {
	return rawExpr{"meta", []netlink.Attribute{u32(unix.NFTA_META_DREG, dreg), u32(unix.NFTA_META_KEY, key)}}
}

func rawLookup(set string, sreg uint32) rawExpr {
	return rawExpr{"lookup", []netlink.Attribute{str(unix.NFTA_LOOKUP_SET, set), u32(unix.NFTA_LOOKUP_SREG, sreg)}}
}

// counterRules are the forward chain's rules with their nft text: per
// family, one lookup keyed by the VIP (the original direction's
// destination) and one by VIP and backend (the reply direction's source).
// A lookup that finds its element bumps that element's counter.
func counterRules() (texts []string, rules [][]rawExpr) {
	for _, v6 := range []bool{false, true} {
		dst, src, n, fam, ip := uint32(unix.NFT_CT_DST_IP), uint32(unix.NFT_CT_SRC_IP), uint32(1), "4", "ip"
		if v6 {
			dst, src, n, fam, ip = unix.NFT_CT_DST_IP6, unix.NFT_CT_SRC_IP6, 4, "6", "ip6"
		}
		vip := []rawExpr{
			rawCt(dst, dirOriginal, reg32(0)),
			rawMeta(unix.NFT_META_L4PROTO, reg32(n)),
			rawCt(unix.NFT_CT_PROTO_DST, dirOriginal, reg32(n+1)),
		}
		be := append(append([]rawExpr{}, vip...),
			rawCt(src, dirReply, reg32(n+2)),
			rawCt(unix.NFT_CT_PROTO_SRC, dirReply, reg32(2*n+2)),
		)
		key := fmt.Sprintf("ct original %s daddr . meta l4proto . ct original proto-dst", ip)
		texts = append(texts,
			key+" @vip_counters"+fam,
			key+fmt.Sprintf(" . ct reply %s saddr . ct reply proto-src @backend_counters", ip)+fam)
		rules = append(rules,
			append(vip, rawLookup("vip_counters"+fam, reg32(0))),
			append(be, rawLookup("backend_counters"+fam, reg32(0))))
	}
	return texts, rules
}

// rawForwardRules flushes the forward chain and fills it with rules: the
// messages of one batch, without its begin and end.
func rawForwardRules(rules [][]rawExpr) ([]netlink.Message, error) {
	chain, err := netlink.MarshalAttributes([]netlink.Attribute{str(unix.NFTA_RULE_TABLE, TableName), str(unix.NFTA_RULE_CHAIN, chainFwd)})
	if err != nil {
		return nil, err
	}
	msgs := []netlink.Message{{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_DELRULE), Flags: netlink.Request | netlink.Acknowledge},
		Data:   append(nfgen(unix.NFPROTO_INET), chain...),
	}}
	for _, r := range rules {
		ae := netlink.NewAttributeEncoder()
		ae.String(unix.NFTA_RULE_TABLE, TableName)
		ae.String(unix.NFTA_RULE_CHAIN, chainFwd)
		ae.Nested(unix.NFTA_RULE_EXPRESSIONS, func(ae *netlink.AttributeEncoder) error {
			for _, e := range r {
				ae.Nested(unix.NFTA_LIST_ELEM, func(ae *netlink.AttributeEncoder) error {
					ae.String(unix.NFTA_EXPR_NAME, e.name)
					ae.Nested(unix.NFTA_EXPR_DATA, func(ae *netlink.AttributeEncoder) error {
						for _, a := range e.attrs {
							ae.Bytes(a.Type, a.Data)
						}
						return nil
					})
					return nil
				})
			}
			return nil
		})
		data, err := ae.Encode()
		if err != nil {
			return nil, err
		}
		msgs = append(msgs, netlink.Message{
			Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_NEWRULE),
				Flags: netlink.Request | netlink.Acknowledge | netlink.Create | netlink.Append},
			Data: append(nfgen(unix.NFPROTO_INET), data...),
		})
	}
	return msgs, nil
}

// nfgen is the header of an nftables message: family, version, resource id.
func nfgen(family byte) []byte { return []byte{family, unix.NFNETLINK_V0, 0, 0} }
