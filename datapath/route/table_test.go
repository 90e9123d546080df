package route

import (
	"cmp"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"portico.dev/appliance/test/topo"
)

// TestReadTable reads the router's main table, with routes of several
// protocols, metrics and types in it, and compares it with what ip route
// shows of the same table.
func TestReadTable(t *testing.T) {
	t.Parallel()
	lab, fd := upLab(t)
	run(t, lab, "router", "ip", "route", "add", "198.51.100.0/24", "via", "10.0.1.2", "proto", "static", "metric", "50")
	run(t, lab, "router", "ip", "route", "add", "198.51.100.0/24", "via", "10.0.2.2", "proto", "static", "metric", "60")
	run(t, lab, "router", "ip", "route", "add", "blackhole", "192.0.2.0/24")
	run(t, lab, "router", "ip", "-6", "route", "add", "unreachable", "2001:db8:dead::/48")
	run(t, lab, "router", "ip", "route", "add", "default", "via", "10.0.0.2")
	tg, _ := newTarget(t, fd)
	if err := tg.Set(t.Context(), NewList([]Route{vip4, vip6, r("203.0.113.11/32", "10.0.1.2*2", "10.0.3.2*1")})); err != nil {
		t.Fatal(err)
	}

	got, err := ReadTable(t.Context(), fd, 0)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, r := range got {
		fmt.Fprintf(&b, "%s proto %s metric %d %s", r.Prefix, r.Protocol, r.Metric, r.Type)
		for _, nh := range r.NextHops {
			fmt.Fprintf(&b, " [%s %s %d]", nh.Addr, nh.Interface, nh.Weight)
		}
		b.WriteString("\n")
	}
	want := ipRoutes(t, lab)
	if b.String() != want {
		t.Errorf("ReadTable:\n%s\nip route shows:\n%s", b.String(), want)
	}
	for _, s := range []string{
		"0.0.0.0/0 proto boot metric 0 unicast [10.0.0.2 eth0 1]",
		"10.0.1.0/24 proto kernel metric 0 unicast [invalid IP eth1 1]",
		"192.0.2.0/24 proto boot metric 0 blackhole\n",
		"198.51.100.0/24 proto static metric 50 unicast [10.0.1.2 eth1 1]\n198.51.100.0/24 proto static metric 60 unicast [10.0.2.2 eth2 1]",
		"203.0.113.11/32 proto bgp metric 0 unicast [10.0.1.2 eth1 2] [10.0.3.2 eth3 1]",
		"2001:db8::10/128 proto bgp metric 1024 unicast [fd00:1::2 eth1 1] [fd00:2::2 eth2 1] [fd00:3::2 eth3 1]",
		"2001:db8:dead::/48 proto boot metric 1024 unreachable",
	} {
		if !strings.Contains(b.String(), s) {
			t.Errorf("ReadTable has no %q:\n%s", s, b.String())
		}
	}
}

// ipRoutes formats what `ip -j route show table main` shows of the
// router's IPv4 and IPv6 routes the way TestReadTable formats ReadTable's.
func ipRoutes(t *testing.T, lab *topo.Lab) string {
	t.Helper()
	type hop struct {
		Gateway string `json:"gateway"`
		Dev     string `json:"dev"`
		Weight  int    `json:"weight"`
	}
	var b strings.Builder
	for _, fam := range []string{"-4", "-6"} {
		out, err := lab.Exec(t.Context(), "router", "ip", "-j", fam, "route", "show", "table", "main")
		if err != nil {
			t.Fatal(err)
		}
		var routes []struct {
			hop
			Dst      string `json:"dst"`
			Type     string `json:"type"`
			Protocol string `json:"protocol"`
			Metric   int    `json:"metric"`
			NextHops []hop  `json:"nexthops"`
		}
		if err := json.Unmarshal(out, &routes); err != nil {
			t.Fatalf("ip -j %s route: %v\n%s", fam, err, out)
		}
		for _, r := range routes {
			p, err := netip.ParsePrefix(r.Dst)
			switch {
			case r.Dst == "default" && fam == "-4":
				p = netip.MustParsePrefix("0.0.0.0/0")
			case r.Dst == "default":
				p = netip.MustParsePrefix("::/0")
			case err != nil:
				a := netip.MustParseAddr(r.Dst)
				p = netip.PrefixFrom(a, a.BitLen())
			}
			// ip leaves out what is the default.
			proto, typ := cmp.Or(r.Protocol, "boot"), cmp.Or(r.Type, "unicast")
			fmt.Fprintf(&b, "%s proto %s metric %d %s", p, proto, r.Metric, typ)
			hops := r.NextHops
			if len(hops) == 0 && typ == "unicast" {
				hops = []hop{r.hop}
			}
			for _, h := range hops {
				gw := "invalid IP"
				if h.Gateway != "" {
					gw = h.Gateway
				}
				fmt.Fprintf(&b, " [%s %s %d]", gw, h.Dev, max(h.Weight, 1))
			}
			b.WriteString("\n")
		}
	}
	return b.String()
}
