package nft

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/google/nftables"
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

// serviceKey is the key of services4/services6 and of vip_counters4/6:
// daddr . l4proto . dport.
func serviceKey(k Key) []byte { return appendServiceKey(nil, k) }

func appendServiceKey(b []byte, k Key) []byte {
	if k.Addr.Is4() {
		a := k.Addr.As4()
		b = append(b, a[:]...)
	} else {
		a := k.Addr.As16()
		b = append(b, a[:]...)
	}
	return append(b, byte(k.Proto), 0, 0, 0, byte(k.Port>>8), byte(k.Port), 0, 0)
}

// appendSlotKey appends the key of slots4/slots6: the VIP's key . slot.
func appendSlotKey(b []byte, k Key, slot int) []byte {
	return binary.NativeEndian.AppendUint32(appendServiceKey(b, k), uint32(slot))
}

// backendCounterKey is the key of backend_counters4/6: the VIP's key .
// backend address . backend port.
func backendCounterKey(k Key, b netip.AddrPort) []byte {
	return appendBackend(serviceKey(k), b)
}

// backendData is a slot map's value: backend address . port, read by the
// DNAT expression from two registers.
func backendData(b netip.AddrPort) []byte { return appendBackend(nil, b) }

func appendBackend(b []byte, be netip.AddrPort) []byte {
	if a := be.Addr(); a.Is4() {
		x := a.As4()
		b = append(b, x[:]...)
	} else {
		x := a.As16()
		b = append(b, x[:]...)
	}
	return append(b, byte(be.Port()>>8), byte(be.Port()), 0, 0)
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

// decodeSlotKey reverses appendSlotKey.
func decodeSlotKey(b []byte, v6 bool) (Key, int, error) {
	if len(b) < 4 {
		return Key{}, 0, fmt.Errorf("slot key of %d bytes", len(b))
	}
	k, err := decodeServiceKey(b[:len(b)-4], v6)
	if err != nil {
		return Key{}, 0, fmt.Errorf("slot key: %w", err)
	}
	return k, int(binary.NativeEndian.Uint32(b[len(b)-4:])), nil
}

func mustConcat(types ...nftables.SetDatatype) nftables.SetDatatype {
	t, err := nftables.ConcatSetType(types...)
	if err != nil {
		panic(err) // only called with fixed, valid type lists at package init
	}
	return t
}
