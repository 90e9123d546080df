// Package topo realizes a containerlab topology file (*.clab.yml) as Linux network
// namespaces joined by veth pairs, so that tests and CI run the labs users run with
// containerlab, without a container runtime.
//
// Each node becomes one network namespace; it runs the host's programs with a network
// stack of its own. Only the subset of the format that this needs is read: nodes of kind
// "linux" with their exec commands, and links between two node:interface endpoints.
package topo

import (
	"errors"
	"fmt"
	"iter"
	"os"
	"regexp"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Topology is a parsed topology file.
type Topology struct {
	Name  string
	Nodes map[string]*Node
	Links []Link
}

// Node is one node of a topology.
type Node struct {
	Kind  string
	Image string   // accepted for compatibility with containerlab, and ignored
	Exec  []string // shell commands run in the node, in order, once its links are up
}

// Link joins two endpoints with a veth pair.
type Link struct {
	A, B Endpoint
}

// Endpoint is one end of a link: an interface of a node.
type Endpoint struct {
	Node, Iface string
}

func (e Endpoint) String() string { return e.Node + ":" + e.Iface }

// nameRE matches topology and node names: they become parts of namespace names, which are
// file names under /var/run/netns.
var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)

// Load reads and parses the topology file at path.
func Load(path string) (*Topology, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("topo: load %s: %w", path, err)
	}
	t, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("topo: load %s: %w", path, err)
	}
	return t, nil
}

// Parse parses and validates a topology file. Its error has one "path: reason" line per
// problem found, such as "topology.nodes.client.foo: unknown key".
func Parse(data []byte) (*Topology, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, err
	}
	if len(doc.Content) == 0 {
		return nil, errors.New("empty document")
	}
	var p parser
	t := p.topology(doc.Content[0])
	if err := errors.Join(p.errs...); err != nil {
		return nil, err
	}
	return t, nil
}

// parser collects every problem of a document instead of stopping at the first.
type parser struct {
	errs []error
}

func (p *parser) fail(path, format string, args ...any) {
	p.errs = append(p.errs, fmt.Errorf("%s: %s", path, fmt.Sprintf(format, args...)))
}

// resolve follows an alias to the node it stands for.
func resolve(n *yaml.Node) *yaml.Node {
	if n.Kind == yaml.AliasNode {
		return n.Alias
	}
	return n
}

// pairs yields the keys and values of the mapping n; it records an error if n is not a
// mapping, and for each key that repeats an earlier one.
func (p *parser) pairs(n *yaml.Node, path string) iter.Seq2[string, *yaml.Node] {
	return func(yield func(string, *yaml.Node) bool) {
		n = resolve(n)
		if n.Kind != yaml.MappingNode {
			p.fail(path, "want a mapping")
			return
		}
		seen := make(map[string]bool)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := n.Content[i].Value
			if seen[k] {
				p.fail(path+"."+k, "duplicate key")
				continue
			}
			seen[k] = true
			if !yield(k, n.Content[i+1]) {
				return
			}
		}
	}
}

// fields returns the values of the mapping n by key, recording an error for every key not
// in known. It returns false if n is not a mapping.
func (p *parser) fields(n *yaml.Node, path string, known ...string) (map[string]*yaml.Node, bool) {
	if resolve(n).Kind != yaml.MappingNode {
		p.fail(path, "want a mapping")
		return nil, false
	}
	out := make(map[string]*yaml.Node)
	for k, v := range p.pairs(n, path) {
		if !slices.Contains(known, k) {
			p.fail(path+"."+k, "unknown key")
			continue
		}
		out[k] = v
	}
	return out, true
}

// decode decodes n into v unless n is absent.
func (p *parser) decode(n *yaml.Node, path string, v any) {
	if n == nil {
		return
	}
	if err := n.Decode(v); err != nil {
		p.fail(path, "%v", err)
	}
}

func (p *parser) topology(root *yaml.Node) *Topology {
	t := &Topology{Nodes: make(map[string]*Node)}
	if resolve(root).Kind != yaml.MappingNode {
		p.fail("document", "want a mapping")
		return t
	}
	var body *yaml.Node
	// Containerlab keys that mean nothing here (prefix, mgmt, settings…) are ignored.
	for k, v := range p.pairs(root, "document") {
		switch k {
		case "name":
			p.decode(v, "name", &t.Name)
		case "topology":
			body = v
		}
	}
	if !nameRE.MatchString(t.Name) {
		p.fail("name", "want a name matching %s, got %q", nameRE, t.Name)
	}
	if body == nil {
		p.fail("topology", "required")
		return t
	}
	f, ok := p.fields(body, "topology", "nodes", "links")
	if !ok {
		return t
	}
	if f["nodes"] == nil {
		p.fail("topology.nodes", "required")
	} else {
		for name, v := range p.pairs(f["nodes"], "topology.nodes") {
			t.Nodes[name] = p.node(v, name)
		}
	}
	if links := f["links"]; links != nil {
		if links = resolve(links); links.Kind != yaml.SequenceNode {
			p.fail("topology.links", "want a list")
			return t
		}
		used := make(map[Endpoint]string)
		for i, v := range links.Content {
			t.Links = append(t.Links, p.link(v, fmt.Sprintf("topology.links[%d]", i), t, used))
		}
	}
	return t
}

func (p *parser) node(n *yaml.Node, name string) *Node {
	path := "topology.nodes." + name
	if !nameRE.MatchString(name) {
		p.fail(path, "node name must match %s", nameRE)
	}
	var node Node
	f, ok := p.fields(n, path, "kind", "image", "exec")
	if !ok {
		return &node
	}
	p.decode(f["kind"], path+".kind", &node.Kind)
	p.decode(f["image"], path+".image", &node.Image)
	p.decode(f["exec"], path+".exec", &node.Exec)
	if node.Kind != "linux" {
		p.fail(path+".kind", "unsupported kind %q: only \"linux\" is supported", node.Kind)
	}
	return &node
}

// link parses one link; used maps each endpoint already taken to the path of its link.
func (p *parser) link(n *yaml.Node, path string, t *Topology, used map[Endpoint]string) Link {
	f, ok := p.fields(n, path, "endpoints")
	if !ok {
		return Link{}
	}
	var raw []string
	p.decode(f["endpoints"], path+".endpoints", &raw)
	if len(raw) != 2 {
		p.fail(path+".endpoints", "want 2 endpoints, got %d", len(raw))
		return Link{}
	}
	var ends [2]Endpoint
	for i, s := range raw {
		e, err := parseEndpoint(s, t)
		if err == nil && used[e] != "" {
			err = fmt.Errorf("%s already used by %s", e, used[e])
		}
		if err != nil {
			p.fail(fmt.Sprintf("%s.endpoints[%d]", path, i), "%v", err)
			continue
		}
		used[e] = path
		ends[i] = e
	}
	return Link{A: ends[0], B: ends[1]}
}

func parseEndpoint(s string, t *Topology) (Endpoint, error) {
	node, iface, ok := strings.Cut(s, ":")
	if !ok || node == "" || iface == "" {
		return Endpoint{}, fmt.Errorf("%q: want node:interface", s)
	}
	if _, ok := t.Nodes[node]; !ok {
		return Endpoint{}, fmt.Errorf("%q: no node %q", s, node)
	}
	if err := checkIface(iface); err != nil {
		return Endpoint{}, fmt.Errorf("%q: %w", s, err)
	}
	return Endpoint{Node: node, Iface: iface}, nil
}

// checkIface applies the kernel's rules for interface names (dev_valid_name); "lo" is
// taken in every namespace.
func checkIface(name string) error {
	switch {
	case len(name) > 15:
		return errors.New("interface name longer than 15 bytes")
	case name == "." || name == "..":
		return errors.New("invalid interface name")
	case strings.ContainsAny(name, "/: \t\n"):
		return errors.New("interface name contains '/', ':' or white space")
	case name == "lo":
		return errors.New("interface lo is the namespace's loopback")
	}
	return nil
}
