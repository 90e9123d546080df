package e2e

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
)

// A minimal BGP-4 speaker (RFC 4271) for the messages no real one sends.

const (
	bgpOpenMsg         = 1
	bgpUpdateMsg       = 2
	bgpNotificationMsg = 3
	bgpKeepaliveMsg    = 4
)

// bgpMessage frames body as a BGP message of type typ.
func bgpMessage(typ byte, body []byte) []byte {
	m := bytes.Repeat([]byte{0xff}, 16)
	m = binary.BigEndian.AppendUint16(m, uint16(19+len(body)))
	m = append(m, typ)
	return append(m, body...)
}

// bgpOpen is an OPEN from asn (at most 65535) with identifier id, hold
// time 0 (no keepalives, no hold timer), and the capabilities IPv4 unicast
// and four-octet AS numbers.
func bgpOpen(asn uint16, id netip.Addr) []byte {
	caps := []byte{
		1, 4, 0, 1, 0, 1, // multiprotocol: AFI 1 (IPv4), SAFI 1 (unicast)
		65, 4, 0, 0, byte(asn >> 8), byte(asn), // four-octet AS numbers
	}
	body := []byte{4, byte(asn >> 8), byte(asn), 0, 0}
	body = append(body, id.AsSlice()...)
	body = append(body, byte(2+len(caps)), 2, byte(len(caps)))
	body = append(body, caps...)
	return bgpMessage(bgpOpenMsg, body)
}

// bgpOrigin is a well-formed ORIGIN attribute: IGP.
var bgpOrigin = []byte{0x40, 1, 1, 0}

// bgpPath is the AS_PATH (four-octet AS numbers) and NEXT_HOP attributes
// of a route from asn with next hop nh.
func bgpPath(asn uint32, nh netip.Addr) []byte {
	a := []byte{0x40, 2, 6, 2, 1}
	a = binary.BigEndian.AppendUint32(a, asn)
	a = append(a, 0x40, 3, 4)
	return append(a, nh.AsSlice()...)
}

// bgpUpdate is an UPDATE announcing p with the path attributes attrs.
func bgpUpdate(attrs []byte, p netip.Prefix) []byte {
	body := []byte{0, 0} // no withdrawn routes
	body = binary.BigEndian.AppendUint16(body, uint16(len(attrs)))
	body = append(body, attrs...)
	body = append(body, byte(p.Bits()))
	body = append(body, p.Addr().AsSlice()[:(p.Bits()+7)/8]...)
	return bgpMessage(bgpUpdateMsg, body)
}

// readBGP reads one BGP message and returns its type and body.
func readBGP(r io.Reader) (byte, []byte, error) {
	hdr := make([]byte, 19)
	if _, err := io.ReadFull(r, hdr); err != nil {
		return 0, nil, err
	}
	n := int(binary.BigEndian.Uint16(hdr[16:18]))
	if n < 19 || n > 4096 {
		return 0, nil, fmt.Errorf("BGP message of length %d", n)
	}
	body := make([]byte, n-19)
	if _, err := io.ReadFull(r, body); err != nil {
		return 0, nil, err
	}
	return hdr[18], body, nil
}

// bgpEstablish opens a session on c: an OPEN from asn with identifier id,
// a KEEPALIVE once the peer's OPEN is in. It returns when the peer's
// KEEPALIVE confirms the session, or with an error if the peer sends
// anything else (a NOTIFICATION's code and subcode are in the error) or
// closes.
func bgpEstablish(c net.Conn, asn uint16, id netip.Addr) error {
	if _, err := c.Write(bgpOpen(asn, id)); err != nil {
		return err
	}
	opened := false
	for {
		typ, body, err := readBGP(c)
		switch {
		case err != nil:
			return err
		case typ == bgpOpenMsg && !opened:
			opened = true
			if _, err := c.Write(bgpMessage(bgpKeepaliveMsg, nil)); err != nil {
				return err
			}
		case typ == bgpKeepaliveMsg && opened:
			return nil
		case typ == bgpNotificationMsg && len(body) >= 2:
			return fmt.Errorf("NOTIFICATION code %d subcode %d", body[0], body[1])
		default:
			return fmt.Errorf("unexpected BGP message of type %d", typ)
		}
	}
}
