package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"

	"portico.dev/appliance/mgmt/gnmi"
)

// The gNMI paths the show commands read.
const (
	ocNeighbors = "/network-instances/network-instance[name=default]/protocols/protocol[identifier=BGP][name=BGP]/bgp/neighbors/neighbor"
	ptNeighbors = "/bgp/neighbors/neighbor"
)

// showTimeout bounds one show command: the daemon answers from memory or
// one netlink dump.
const showTimeout = 30 * time.Second

type showOptions struct {
	output     string
	target     string
	configPath *string
}

func showCmd(configPath *string) *cobra.Command {
	o := &showOptions{configPath: configPath}
	cmd := &cobra.Command{
		Use:   "show",
		Short: "Show the running appliance's state (a gNMI Get over the local socket)",
		PersistentPreRunE: func(*cobra.Command, []string) error {
			switch o.output {
			case "table", "json", "yaml":
				return nil
			}
			return fmt.Errorf("-o: must be table, json or yaml, not %q", o.output)
		},
	}
	cmd.PersistentFlags().StringVarP(&o.output, "output", "o", "table", "output format: table, json or yaml")
	cmd.PersistentFlags().StringVar(&o.target, "target", "", "the appliance: unix:///path or a socket path (default: management.gnmi.socket of --config, else "+gnmi.DefaultSocket+")")
	bgpCmd := &cobra.Command{Use: "bgp", Short: "Show BGP state"}
	bgpCmd.AddCommand(
		showLeaf(o, "neighbors", "BGP neighbors: session state and prefix counts", cobra.NoArgs, showNeighbors),
		showLeaf(o, "routes", "Routes learned from node peers: what the appliance installs", cobra.NoArgs, showBGPRoutes),
	)
	cmd.AddCommand(bgpCmd,
		showLeaf(o, "routes", "The kernel's main routing table, every protocol", cobra.NoArgs, showRoutes),
		showLeaf(o, "vips [NAME]", "VIPs: address, scheduler, backends up, counters", cobra.MaximumNArgs(1), showVIPs),
		showLeaf(o, "backends", "Every backend of every VIP, with its health and counters", cobra.NoArgs, showBackends),
	)
	return cmd
}

// A shower reads what it shows through c and returns its rows (a slice of
// structs whose json and yaml names are those of the YANG leaves) and the
// table to print for people.
type shower func(ctx context.Context, c *gnmi.Client, args []string) (rows any, table [][]string, err error)

func showLeaf(o *showOptions, use, short string, args cobra.PositionalArgs, f shower) *cobra.Command {
	return &cobra.Command{
		Use:   use,
		Short: short,
		Args:  args,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := gnmi.Dial(o.socket())
			if err != nil {
				return err
			}
			defer c.Close()
			ctx, cancel := context.WithTimeout(cmd.Context(), showTimeout)
			defer cancel()
			rows, table, err := f(ctx, c, args)
			if err != nil {
				return err
			}
			return render(cmd.OutOrStdout(), o.output, rows, table)
		},
	}
}

// socket is --target, else the configuration's socket, else the default.
// A configuration that does not load is no reason to refuse a show: the
// default is then as good a guess as any.
func (o *showOptions) socket() string {
	if o.target != "" {
		return o.target
	}
	if c, _, _, err := loadConfig(*o.configPath); err == nil && c.Management.GNMI.Socket != "" {
		return c.Management.GNMI.Socket
	}
	return gnmi.DefaultSocket
}

func render(w io.Writer, format string, rows any, table [][]string) error {
	switch format {
	case "json":
		e := json.NewEncoder(w)
		e.SetIndent("", "  ")
		return e.Encode(rows)
	case "yaml":
		e := yaml.NewEncoder(w)
		e.SetIndent(2)
		if err := e.Encode(rows); err != nil {
			return err
		}
		return e.Close()
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, r := range table {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	return tw.Flush()
}

// entries groups leaves by the entry of list they are in, in the order the
// server sent them: for each entry its key value and its leaves by their
// path under it (state/session-state).
type entries struct {
	keys   []string
	leaves map[string]map[string]any
}

func group(leaves []gnmi.Leaf, list, key string) *entries {
	e := &entries{leaves: map[string]map[string]any{}}
	for _, l := range leaves {
		under, ok := l.Under(list)
		if !ok {
			continue
		}
		k := l.Key(list, key)
		if e.leaves[k] == nil {
			e.keys = append(e.keys, k)
			e.leaves[k] = map[string]any{}
		}
		e.leaves[k][under] = l.Value
	}
	return e
}

// str and num read a leaf's value; an absent leaf is "" or 0. 64-bit
// numbers come as strings (RFC 7951).
func str(v any) string {
	if v == nil {
		return ""
	}
	return fmt.Sprint(v)
}

func num(v any) uint64 {
	switch x := v.(type) {
	case int64:
		return uint64(x)
	case string:
		n, _ := strconv.ParseUint(x, 10, 64)
		return n
	}
	return 0
}

// neighborRow is one BGP neighbor.
type neighborRow struct {
	Address           string `json:"neighbor-address" yaml:"neighbor-address"`
	Name              string `json:"name" yaml:"name"`
	Role              string `json:"role" yaml:"role"`
	PeerAS            uint64 `json:"peer-as" yaml:"peer-as"`
	SessionState      string `json:"session-state" yaml:"session-state"`
	LastEstablished   string `json:"last-established,omitempty" yaml:"last-established,omitempty"` // RFC 3339
	ReceivedPrePolicy uint64 `json:"received-pre-policy" yaml:"received-pre-policy"`
	Received          uint64 `json:"received" yaml:"received"`
	Installed         uint64 `json:"installed" yaml:"installed"`
	Rejected          uint64 `json:"rejected" yaml:"rejected"`
	Sent              uint64 `json:"sent" yaml:"sent"`
	LastError         string `json:"last-error,omitempty" yaml:"last-error,omitempty"`
	BFDState          string `json:"bfd-state" yaml:"bfd-state"`
	Unprotected       bool   `json:"unprotected" yaml:"unprotected"`
	GRNegotiated      bool   `json:"graceful-restart-negotiated" yaml:"graceful-restart-negotiated"`
	PeerRestarting    bool   `json:"peer-restarting" yaml:"peer-restarting"`
	Stale             uint64 `json:"stale" yaml:"stale"`
}

// bfdCell is the BFD column: the BFD session's state, with a "!" when the
// session is unprotected (established, BFD configured and not up), the one
// state that needs a person's attention.
func (r neighborRow) bfdCell() string {
	if r.Unprotected {
		return r.BFDState + "!"
	}
	return r.BFDState
}

// grCell is the GR column: "restarting" while the peer restarts, else
// whether graceful restart was negotiated, and the stale prefixes kept.
func (r neighborRow) grCell() string {
	c := "no"
	switch {
	case r.PeerRestarting:
		c = "restarting"
	case r.GRNegotiated:
		c = "yes"
	}
	if r.Stale > 0 {
		c += fmt.Sprintf(" (%d stale)", r.Stale)
	}
	return c
}

func showNeighbors(ctx context.Context, c *gnmi.Client, _ []string) (any, [][]string, error) {
	leaves, err := c.Get(ctx, "", ocNeighbors+"/state", ocNeighbors+"/afi-safis/afi-safi/state/prefixes",
		ocNeighbors+"/graceful-restart/state/peer-restarting", ptNeighbors+"/state")
	if err != nil {
		return nil, nil, err
	}
	return neighborRows(leaves, time.Now())
}

func neighborRows(leaves []gnmi.Leaf, now time.Time) (any, [][]string, error) {
	var oc, pt []gnmi.Leaf
	for _, l := range leaves {
		if l.Origin == gnmi.OriginOpenConfig {
			oc = append(oc, l)
		} else {
			pt = append(pt, l)
		}
	}
	ocs, own := group(oc, "neighbor", "neighbor-address"), group(pt, "neighbor", "address")
	rows := []neighborRow{}
	table := [][]string{{"NEIGHBOR", "AS", "NAME", "ROLE", "STATE", "UP/DOWN", "BFD", "GR", "RCVD", "ACCEPTED", "INSTALLED", "SENT", "LAST ERROR"}}
	for _, addr := range ocs.keys {
		l, p := ocs.leaves[addr], own.leaves[addr]
		r := neighborRow{
			Address: addr, Name: str(p["state/name"]), Role: str(p["state/role"]),
			PeerAS: num(l["state/peer-as"]), SessionState: str(l["state/session-state"]),
			Rejected: num(p["state/rejected"]), LastError: str(p["state/last-error"]),
			BFDState: str(p["state/bfd-state"]), Unprotected: p["state/unprotected"] == true,
			GRNegotiated: p["state/graceful-restart-negotiated"] == true, Stale: num(p["state/stale"]),
			PeerRestarting: l["graceful-restart/state/peer-restarting"] == true,
		}
		// One address family per session: the afi-safi is the peer
		// address's.
		for under, v := range l {
			switch {
			case strings.HasSuffix(under, "/prefixes/received-pre-policy"):
				r.ReceivedPrePolicy = num(v)
			case strings.HasSuffix(under, "/prefixes/received"):
				r.Received = num(v)
			case strings.HasSuffix(under, "/prefixes/installed"):
				r.Installed = num(v)
			case strings.HasSuffix(under, "/prefixes/sent"):
				r.Sent = num(v)
			}
		}
		upDown := "never"
		if v := l["state/last-established"]; v != nil {
			t := time.Unix(0, int64(num(v))).UTC()
			r.LastEstablished = t.Format(time.RFC3339)
			upDown = now.Sub(t).Truncate(time.Second).String()
		}
		rows = append(rows, r)
		table = append(table, []string{addr, strconv.FormatUint(r.PeerAS, 10), r.Name, r.Role, r.SessionState, upDown,
			r.bfdCell(), r.grCell(), strconv.FormatUint(r.ReceivedPrePolicy, 10), strconv.FormatUint(r.Received, 10),
			strconv.FormatUint(r.Installed, 10), strconv.FormatUint(r.Sent, 10), r.LastError})
	}
	return rows, table, nil
}

// bgpRouteRow is one route learned from node peers.
type bgpRouteRow struct {
	Prefix   string   `json:"prefix" yaml:"prefix"`
	NextHops []string `json:"next-hop" yaml:"next-hop"`
}

func showBGPRoutes(ctx context.Context, c *gnmi.Client, _ []string) (any, [][]string, error) {
	leaves, err := c.Get(ctx, gnmi.OriginPortico, "/bgp/routes/route/state")
	if err != nil {
		return nil, nil, err
	}
	g := group(leaves, "route", "prefix")
	rows := []bgpRouteRow{}
	table := [][]string{{"PREFIX", "NEXT HOPS"}}
	for _, p := range g.keys {
		r := bgpRouteRow{Prefix: p, NextHops: []string{}}
		hops, _ := g.leaves[p]["state/next-hop"].([]any)
		for _, h := range hops {
			r.NextHops = append(r.NextHops, str(h))
		}
		rows = append(rows, r)
		table = append(table, []string{p, strings.Join(r.NextHops, ", ")})
	}
	return rows, table, nil
}

// routeRow is one kernel route.
type routeRow struct {
	Prefix   string       `json:"prefix" yaml:"prefix"`
	Metric   uint64       `json:"metric" yaml:"metric"`
	Index    uint64       `json:"index" yaml:"index"` // among the routes of its prefix and metric
	Protocol string       `json:"protocol" yaml:"protocol"`
	Type     string       `json:"type" yaml:"type"`
	NextHops []nextHopRow `json:"next-hops,omitempty" yaml:"next-hops,omitempty"`
}

type nextHopRow struct {
	Address   string `json:"address,omitempty" yaml:"address,omitempty"`
	Interface string `json:"interface,omitempty" yaml:"interface,omitempty"`
	Weight    uint64 `json:"weight" yaml:"weight"`
}

func showRoutes(ctx context.Context, c *gnmi.Client, _ []string) (any, [][]string, error) {
	leaves, err := c.Get(ctx, gnmi.OriginPortico, "/routes/route/state", "/routes/route/next-hops/next-hop/state")
	if err != nil {
		return nil, nil, err
	}
	// A route is keyed by prefix, metric and index; hops are keyed by
	// index within it.
	type key struct{ prefix, metric, index string }
	var order []key
	byKey := map[key]*routeRow{}
	for _, l := range leaves {
		k := key{l.Key("route", "prefix"), l.Key("route", "metric"), l.Key("route", "index")}
		r := byKey[k]
		if r == nil {
			r = &routeRow{Prefix: k.prefix}
			r.Metric, _ = strconv.ParseUint(k.metric, 10, 32)
			r.Index, _ = strconv.ParseUint(k.index, 10, 16)
			byKey[k] = r
			order = append(order, k)
		}
		if under, ok := l.Under("next-hop"); ok {
			i, _ := strconv.Atoi(l.Key("next-hop", "index"))
			for len(r.NextHops) <= i {
				r.NextHops = append(r.NextHops, nextHopRow{})
			}
			switch under {
			case "state/address":
				r.NextHops[i].Address = str(l.Value)
			case "state/interface":
				r.NextHops[i].Interface = str(l.Value)
			case "state/weight":
				r.NextHops[i].Weight = num(l.Value)
			}
			continue
		}
		switch under, _ := l.Under("route"); under {
		case "state/protocol":
			r.Protocol = str(l.Value)
		case "state/type":
			r.Type = str(l.Value)
		}
	}
	rows := []routeRow{}
	table := [][]string{{"PREFIX", "METRIC", "PROTOCOL", "TYPE", "NEXT HOP"}}
	for _, k := range order {
		r := *byKey[k]
		rows = append(rows, r)
		first := []string{r.Prefix, strconv.FormatUint(r.Metric, 10), r.Protocol, r.Type}
		if len(r.NextHops) == 0 {
			table = append(table, append(first, ""))
		}
		// One line per next hop, as ip route prints a multipath route.
		for i, h := range r.NextHops {
			var via []string
			if h.Address != "" {
				via = append(via, "via "+h.Address)
			}
			if h.Interface != "" {
				via = append(via, "dev "+h.Interface)
			}
			if len(r.NextHops) > 1 {
				via = append(via, "weight "+strconv.FormatUint(h.Weight, 10))
			}
			if i > 0 {
				first = []string{"", "", "", ""}
			}
			table = append(table, append(first, strings.Join(via, " ")))
		}
	}
	return rows, table, nil
}

// vipRow is one VIP with its backends.
type vipRow struct {
	Name      string       `json:"name" yaml:"name"`
	Address   string       `json:"address" yaml:"address"`
	Port      uint64       `json:"port" yaml:"port"`
	Protocol  string       `json:"protocol" yaml:"protocol"`
	Scheduler string       `json:"scheduler" yaml:"scheduler"`
	SNAT      bool         `json:"snat" yaml:"snat"`
	Packets   uint64       `json:"packets" yaml:"packets"`
	Bytes     uint64       `json:"bytes" yaml:"bytes"`
	Backends  []backendRow `json:"backends" yaml:"backends"`
}

type backendRow struct {
	VIP     string `json:"vip,omitempty" yaml:"vip,omitempty"` // in show backends only
	Address string `json:"address" yaml:"address"`
	Weight  uint64 `json:"weight" yaml:"weight"`
	Health  string `json:"health" yaml:"health"`
	Packets uint64 `json:"packets" yaml:"packets"`
	Bytes   uint64 `json:"bytes" yaml:"bytes"`
}

func readVIPs(ctx context.Context, c *gnmi.Client, name string) ([]vipRow, error) {
	sel := "/vips/vip"
	if name != "" {
		sel = fmt.Sprintf("/vips/vip[name=%s]", name)
	}
	leaves, err := c.Get(ctx, gnmi.OriginPortico, sel)
	if err != nil {
		return nil, err
	}
	var order []string
	byName := map[string]*vipRow{}
	backends := map[string][]string{}
	bes := map[string]map[string]*backendRow{}
	for _, l := range leaves {
		n := l.Key("vip", "name")
		v := byName[n]
		if v == nil {
			v = &vipRow{Name: n, Backends: []backendRow{}}
			byName[n], bes[n] = v, map[string]*backendRow{}
			order = append(order, n)
		}
		if under, ok := l.Under("backend"); ok {
			a := l.Key("backend", "address")
			b := bes[n][a]
			if b == nil {
				b = &backendRow{Address: a}
				bes[n][a] = b
				backends[n] = append(backends[n], a)
			}
			switch under {
			case "config/weight":
				b.Weight = num(l.Value)
			case "state/health":
				b.Health = str(l.Value)
			case "state/counters/packets":
				b.Packets = num(l.Value)
			case "state/counters/bytes":
				b.Bytes = num(l.Value)
			}
			continue
		}
		switch under, _ := l.Under("vip"); under {
		case "config/address":
			v.Address = str(l.Value)
		case "config/port":
			v.Port = num(l.Value)
		case "config/protocol":
			v.Protocol = str(l.Value)
		case "config/scheduler":
			v.Scheduler = str(l.Value)
		case "config/snat":
			v.SNAT = l.Value == true
		case "state/counters/packets":
			v.Packets = num(l.Value)
		case "state/counters/bytes":
			v.Bytes = num(l.Value)
		}
	}
	out := make([]vipRow, 0, len(order))
	for _, n := range order {
		v := byName[n]
		for _, a := range backends[n] {
			v.Backends = append(v.Backends, *bes[n][a])
		}
		out = append(out, *v)
	}
	return out, nil
}

func showVIPs(ctx context.Context, c *gnmi.Client, args []string) (any, [][]string, error) {
	name := ""
	if len(args) > 0 {
		name = args[0]
	}
	vips, err := readVIPs(ctx, c, name)
	if err != nil {
		return nil, nil, err
	}
	table := [][]string{{"NAME", "ADDRESS", "PORT", "PROTO", "SCHEDULER", "SNAT", "BACKENDS UP", "PACKETS", "BYTES"}}
	for _, v := range vips {
		up := 0
		for _, b := range v.Backends {
			if b.Health != "down" {
				up++
			}
		}
		table = append(table, []string{v.Name, v.Address, strconv.FormatUint(v.Port, 10), v.Protocol, v.Scheduler,
			strconv.FormatBool(v.SNAT), fmt.Sprintf("%d/%d", up, len(v.Backends)),
			strconv.FormatUint(v.Packets, 10), strconv.FormatUint(v.Bytes, 10)})
	}
	return vips, table, nil
}

func showBackends(ctx context.Context, c *gnmi.Client, _ []string) (any, [][]string, error) {
	vips, err := readVIPs(ctx, c, "")
	if err != nil {
		return nil, nil, err
	}
	rows := []backendRow{}
	table := [][]string{{"VIP", "BACKEND", "WEIGHT", "HEALTH", "PACKETS", "BYTES"}}
	for _, v := range vips {
		for _, b := range v.Backends {
			b.VIP = v.Name
			rows = append(rows, b)
			table = append(table, []string{v.Name, b.Address, strconv.FormatUint(b.Weight, 10), b.Health,
				strconv.FormatUint(b.Packets, 10), strconv.FormatUint(b.Bytes, 10)})
		}
	}
	return rows, table, nil
}
