package topo_test

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"portico.dev/appliance/test/topo"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    *topo.Topology
		wantErr string // a substring of the error; "" if Parse must succeed
	}{
		{
			name: "valid",
			in: `
name: demo
prefix: clab        # containerlab keys not used here are ignored
mgmt: {network: x}
topology:
  nodes:
    client: {kind: linux, image: alpine, exec: ["ip link", "ip route"]}
    appliance: {kind: linux}
  links:
    - endpoints: ["client:eth1", "appliance:eth1"]
    - endpoints: ["appliance:eth2", "appliance:eth3"]
`,
			want: &topo.Topology{
				Name: "demo",
				Nodes: map[string]*topo.Node{
					"client":    {Kind: "linux", Image: "alpine", Exec: []string{"ip link", "ip route"}},
					"appliance": {Kind: "linux"},
				},
				Links: []topo.Link{
					{A: topo.Endpoint{Node: "client", Iface: "eth1"}, B: topo.Endpoint{Node: "appliance", Iface: "eth1"}},
					{A: topo.Endpoint{Node: "appliance", Iface: "eth2"}, B: topo.Endpoint{Node: "appliance", Iface: "eth3"}},
				},
			},
		},
		{
			name:    "unknown node key",
			in:      "name: d\ntopology:\n  nodes:\n    client: {kind: linux, foo: 1}\n",
			wantErr: "topology.nodes.client.foo: unknown key",
		},
		{
			name:    "unknown link key",
			in:      "name: d\ntopology:\n  nodes: {a: {kind: linux}}\n  links: [{endpoints: [a:e1, a:e2], mtu: 9000}]\n",
			wantErr: "topology.links[0].mtu: unknown key",
		},
		{
			name:    "unknown topology key",
			in:      "name: d\ntopology:\n  nodes: {a: {kind: linux}}\n  defaults: {kind: linux}\n",
			wantErr: "topology.defaults: unknown key",
		},
		{
			name:    "duplicate node",
			in:      "name: d\ntopology:\n  nodes:\n    a: {kind: linux}\n    a: {kind: linux}\n",
			wantErr: "topology.nodes.a: duplicate key",
		},
		{
			name:    "unsupported kind",
			in:      "name: d\ntopology:\n  nodes: {srl: {kind: nokia_srlinux}}\n",
			wantErr: `topology.nodes.srl.kind: unsupported kind "nokia_srlinux"`,
		},
		{
			name:    "missing kind",
			in:      "name: d\ntopology:\n  nodes: {a: {image: alpine}}\n",
			wantErr: `topology.nodes.a.kind: unsupported kind ""`,
		},
		{
			name:    "missing name",
			in:      "topology:\n  nodes: {a: {kind: linux}}\n",
			wantErr: "name: want a name",
		},
		{
			name:    "missing topology",
			in:      "name: d\n",
			wantErr: "topology: required",
		},
		{
			name:    "bad endpoint",
			in:      "name: d\ntopology:\n  nodes: {a: {kind: linux}}\n  links: [{endpoints: [a-eth1, a:eth2]}]\n",
			wantErr: `topology.links[0].endpoints[0]: "a-eth1": want node:interface`,
		},
		{
			name:    "one endpoint",
			in:      "name: d\ntopology:\n  nodes: {a: {kind: linux}}\n  links: [{endpoints: [a:eth1]}]\n",
			wantErr: "topology.links[0].endpoints: want 2 endpoints, got 1",
		},
		{
			name:    "missing node",
			in:      "name: d\ntopology:\n  nodes: {a: {kind: linux}}\n  links: [{endpoints: [a:eth1, b:eth1]}]\n",
			wantErr: `topology.links[0].endpoints[1]: "b:eth1": no node "b"`,
		},
		{
			name:    "duplicate interface",
			in:      "name: d\ntopology:\n  nodes: {a: {kind: linux}, b: {kind: linux}}\n  links: [{endpoints: [a:eth1, b:eth1]}, {endpoints: [b:eth2, a:eth1]}]\n",
			wantErr: "topology.links[1].endpoints[1]: a:eth1 already used by topology.links[0]",
		},
		{
			name:    "interface name too long",
			in:      "name: d\ntopology:\n  nodes: {a: {kind: linux}, b: {kind: linux}}\n  links: [{endpoints: [a:abcdefghijklmnop, b:eth1]}]\n",
			wantErr: "longer than 15 bytes",
		},
		{
			name:    "loopback",
			in:      "name: d\ntopology:\n  nodes: {a: {kind: linux}, b: {kind: linux}}\n  links: [{endpoints: [a:lo, b:eth1]}]\n",
			wantErr: "topology.links[0].endpoints[0]",
		},
		{
			name:    "bad node name",
			in:      "name: d\ntopology:\n  nodes: {a/b: {kind: linux}}\n",
			wantErr: "topology.nodes.a/b: node name must match",
		},
		{
			name:    "exec not a list",
			in:      "name: d\ntopology:\n  nodes: {a: {kind: linux, exec: {x: y}}}\n",
			wantErr: "topology.nodes.a.exec: ",
		},
		{
			name:    "empty",
			in:      "",
			wantErr: "empty document",
		},
		{
			name:    "not yaml",
			in:      "name: [",
			wantErr: "yaml:",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := topo.Parse([]byte(tt.in))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Parse error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Parse (-want +got):\n%s", diff)
			}
		})
	}
}

// TestParseAllErrors checks that Parse reports every problem, one per line.
func TestParseAllErrors(t *testing.T) {
	_, err := topo.Parse([]byte("name: d\ntopology:\n  nodes: {a: {kind: docker, x: 1}}\n  links: [{endpoints: [a:eth1, c:eth1]}]\n"))
	if err == nil {
		t.Fatal("Parse succeeded, want errors")
	}
	want := []string{
		"topology.nodes.a.x: unknown key",
		`topology.nodes.a.kind: unsupported kind "docker": only "linux" is supported`,
		`topology.links[0].endpoints[1]: "c:eth1": no node "c"`,
	}
	if diff := cmp.Diff(want, strings.Split(err.Error(), "\n")); diff != "" {
		t.Errorf("Parse errors (-want +got):\n%s", diff)
	}
}

func TestLoad(t *testing.T) {
	got, err := topo.Load("testdata/line.clab.yml")
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Nodes) != 3 || len(got.Links) != 2 || got.Name != "line" {
		t.Errorf("Load = %d nodes, %d links, name %q; want 3, 2, line", len(got.Nodes), len(got.Links), got.Name)
	}
	if _, err := topo.Load("testdata/missing.clab.yml"); err == nil || !strings.Contains(err.Error(), "testdata/missing.clab.yml") {
		t.Errorf("Load of a missing file: error %v, want one naming the file", err)
	}
}
