package nft

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
)

// Keys and data are laid out as the kernel leaves them in its 32-bit
// registers: every field of a concatenation starts on a 4-byte boundary and
// the padding is zero (the payload, meta and ct expressions zero the rest of a
// register they write part of).

// Register numbers as netlink knows them: NFT_REG_1 is 16 bytes wide and
// overlays NFT_REG32_00..03; NFT_REG32_xx are 4 bytes each.
const (
	reg1 = 1
	reg2 = 2
)

func reg32(n uint32) uint32 { return 8 + n }

// proto4 is a protocol number in a register: one byte and three of padding.
func proto4(p Proto) []byte { return []byte{byte(p), 0, 0, 0} }

// port4 is a port in a register: two bytes big-endian and two of padding.
func port4(port uint16) []byte {
	b := make([]byte, 4)
	binary.BigEndian.PutUint16(b, port)
	return b
}

// serviceKey is the key of services4/services6 and of vip_counters4/6:
// daddr . l4proto . dport.
func serviceKey(k Key) []byte {
	return concat(k.Addr.AsSlice(), proto4(k.Proto), port4(k.Port))
}

// backendCounterKey is the key of backend_counters4/6: the VIP's key .
// backend address . backend port.
func backendCounterKey(k Key, b netip.AddrPort) []byte {
	return concat(serviceKey(k), backendData(b))
}

// slotKey is a slot number as the hash and numgen expressions leave it: a
// host-endian 32-bit integer.
func slotKey(slot int) []byte { return binaryutil.NativeEndian.PutUint32(uint32(slot)) }

// backendData is a slot map's value: backend address . port, read by the
// DNAT expression from two registers.
func backendData(b netip.AddrPort) []byte {
	return concat(b.Addr().AsSlice(), port4(b.Port()))
}

func concat(parts ...[]byte) []byte {
	var out []byte
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func decodeServiceKey(b []byte, v6 bool) (Key, error) {
	n := 4
	if v6 {
		n = 16
	}
	if len(b) != n+8 {
		return Key{}, fmt.Errorf("service key of %d bytes", len(b))
	}
	a, _ := netip.AddrFromSlice(b[:n])
	return Key{Addr: a, Proto: Proto(b[n]), Port: binary.BigEndian.Uint16(b[n+4:])}, nil
}

// decodeBackendCounterKey reverses backendCounterKey.
func decodeBackendCounterKey(b []byte, v6 bool) (Key, netip.AddrPort, error) {
	n := 12
	if v6 {
		n = 24
	}
	if len(b) != 2*n-4 {
		return Key{}, netip.AddrPort{}, fmt.Errorf("backend counter key of %d bytes", len(b))
	}
	k, err := decodeServiceKey(b[:n], v6)
	if err != nil {
		return Key{}, netip.AddrPort{}, err
	}
	be, err := decodeBackendData(b[n:], v6)
	return k, be, err
}

func decodeBackendData(b []byte, v6 bool) (netip.AddrPort, error) {
	n := 4
	if v6 {
		n = 16
	}
	if len(b) != n+4 {
		return netip.AddrPort{}, fmt.Errorf("slot value of %d bytes", len(b))
	}
	a, _ := netip.AddrFromSlice(b[:n])
	return netip.AddrPortFrom(a, binary.BigEndian.Uint16(b[n:])), nil
}

func decodeSlotKey(b []byte) (int, error) {
	if len(b) != 4 {
		return 0, fmt.Errorf("slot key of %d bytes", len(b))
	}
	return int(binaryutil.NativeEndian.Uint32(b)), nil
}

func mustConcat(types ...nftables.SetDatatype) nftables.SetDatatype {
	t, err := nftables.ConcatSetType(types...)
	if err != nil {
		panic(err) // only called with fixed, valid type lists at package init
	}
	return t
}
