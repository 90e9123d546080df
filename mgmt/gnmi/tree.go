package gnmi

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	gpb "github.com/openconfig/gnmi/proto/gnmi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The served data is a tree of nodes built once (model.go): a schema whose
// lists and leaves read the data on each Get. A list's entries carry a
// value (a bgp.NeighborState, a VIP, ...) down to the nodes under it.

type kind int

const (
	containerKind kind = iota
	listKind
	leafKind
	leafListKind
)

type node struct {
	name     string
	kind     kind
	children []*node
	// config marks a leaf that holds configuration (Get with type CONFIG
	// returns it, STATE does not).
	config bool
	// keys are a list's key leaves, in order.
	keys []string
	// configured marks a list of configured entries (neighbors, VIPs),
	// whose key leaves are configuration; the other lists are state.
	configured bool
	// parse turns a key value of a request into the form the entries
	// carry (2001:DB8::1 into 2001:db8::1), or says why it cannot be one.
	// nil: the value is taken as it is.
	parse func(key, value string) (string, error)
	// entries reads a list's entries, given the value of the entry the
	// list is in (nil at the top).
	entries func(ctx context.Context, parent any) ([]entry, error)
	// value reads a leaf (a scalar) or leaf-list (a slice) from the value
	// of the entry it is in; nil means the leaf is absent.
	value func(data any) any
}

type entry struct {
	keys map[string]string
	data any
}

func container(name string, children ...*node) *node {
	return &node{name: name, kind: containerKind, children: children}
}

// list makes a list node whose entries hold values of type T. Its key
// leaves are among children, made with keyLeaf.
func list[T any](name string, keys []string, entries func(ctx context.Context, parent any) ([]T, func(T) map[string]string, error), children ...*node) *node {
	return &node{name: name, kind: listKind, keys: keys, children: children,
		entries: func(ctx context.Context, parent any) ([]entry, error) {
			vs, keyOf, err := entries(ctx, parent)
			if err != nil {
				return nil, err
			}
			out := make([]entry, len(vs))
			for i, v := range vs {
				out[i] = entry{keys: keyOf(v), data: v}
			}
			return out, nil
		}}
}

// leaf makes a leaf read by f from a value of type T; f returns nil when
// the leaf is absent.
func leaf[T any](name string, f func(T) any) *node {
	return &node{name: name, kind: leafKind, value: func(d any) any { return f(d.(T)) }}
}

// leafList makes a leaf-list read by f; an empty result is absent.
func leafList[T any](name string, f func(T) []string) *node {
	return &node{name: name, kind: leafListKind, value: func(d any) any {
		if v := f(d.(T)); len(v) > 0 {
			return v
		}
		return nil
	}}
}

// markConfig sets config on every leaf under a container named config
// and on the key leaves of configured lists.
func markConfig(n *node, inConfig bool) {
	for _, c := range n.children {
		switch c.kind {
		case leafKind, leafListKind:
			c.config = inConfig || (n.configured && slices.Contains(n.keys, c.name))
		default:
			markConfig(c, inConfig || c.name == "config")
		}
	}
}

func (n *node) child(name string) *node {
	for _, c := range n.children {
		if c.name == name {
			return c
		}
	}
	return nil
}

func (n *node) childNames() string {
	names := make([]string, len(n.children))
	for i, c := range n.children {
		names[i] = c.name
	}
	return strings.Join(names, ", ")
}

// pathString renders elems as gNMI path text: /a/b[k=v].
func pathString(elems []*gpb.PathElem) string {
	if len(elems) == 0 {
		return "/"
	}
	var b strings.Builder
	for _, e := range elems {
		b.WriteString("/")
		b.WriteString(e.GetName())
		for _, k := range slices.Sorted(maps.Keys(e.GetKey())) {
			fmt.Fprintf(&b, "[%s=%s]", k, e.GetKey()[k])
		}
	}
	return b.String()
}

func with(at []*gpb.PathElem, e *gpb.PathElem) []*gpb.PathElem {
	return append(slices.Clip(at), e)
}

// check says whether rest names something under n, by the schema alone:
// NotFound for an element n does not have, InvalidArgument for keys on
// what is not a list, a key the list does not have, or a key value that
// cannot be one. at is n's path, for the message.
func check(n *node, at []*gpb.PathElem, rest []*gpb.PathElem) error {
	if len(rest) == 0 {
		return nil
	}
	e := rest[0]
	switch e.GetName() {
	case "*":
		var first error
		for _, c := range n.children {
			err := check(n, at, append([]*gpb.PathElem{{Name: c.name, Key: e.GetKey()}}, rest[1:]...))
			if err == nil {
				return nil
			}
			if first == nil {
				first = err
			}
		}
		if first == nil {
			return status.Errorf(codes.NotFound, "%s has nothing under it", pathString(at))
		}
		return first
	case "...":
		return status.Errorf(codes.InvalidArgument, "%s: the multi-level wildcard ... is not supported; use * for each level", pathString(with(at, e)))
	}
	c := n.child(e.GetName())
	if c == nil {
		return status.Errorf(codes.NotFound, "%s has no element %q (it has %s)", pathString(at), e.GetName(), n.childNames())
	}
	here := with(at, &gpb.PathElem{Name: c.name})
	if c.kind != listKind {
		if len(e.GetKey()) > 0 {
			return status.Errorf(codes.InvalidArgument, "%s is not a list: it takes no keys", pathString(here))
		}
		if (c.kind == leafKind || c.kind == leafListKind) && len(rest) > 1 {
			return status.Errorf(codes.NotFound, "%s is a leaf: it has no element %q", pathString(here), rest[1].GetName())
		}
		return check(c, here, rest[1:])
	}
	for k, v := range e.GetKey() {
		if !slices.Contains(c.keys, k) {
			return status.Errorf(codes.InvalidArgument, "%s has no key %q (its keys: %s)", pathString(here), k, strings.Join(c.keys, ", "))
		}
		if v != "*" && c.parse != nil {
			if _, err := c.parse(k, v); err != nil {
				return status.Errorf(codes.InvalidArgument, "%s[%s=%s]: %v", pathString(at)+"/"+c.name, k, v, err)
			}
		}
	}
	return check(c, here, rest[1:])
}

// A leafUpdate is one leaf of a Get's answer.
type leafUpdate struct {
	path  []*gpb.PathElem
	value any
}

// getter answers one path of a Get.
type getter struct {
	ctx context.Context
	dt  gpb.GetRequest_DataType
	out []leafUpdate
}

// resolve finds what rest names under n (whose entry value is data, and
// path at) and adds every leaf under it to g.out. specific says that
// every key so far was given without a wildcard: only then is a missing
// entry or leaf NotFound; under a wildcard it is just not there.
func (g *getter) resolve(n *node, data any, at, rest []*gpb.PathElem, specific bool) error {
	if len(rest) == 0 {
		return g.walk(n, data, at)
	}
	e := rest[0]
	cands := []*node{n.child(e.GetName())}
	if e.GetName() == "*" {
		cands = cands[:0]
		for _, c := range n.children {
			if check(n, at, append([]*gpb.PathElem{{Name: c.name, Key: e.GetKey()}}, rest[1:]...)) == nil {
				cands = append(cands, c)
			}
		}
		specific = false
	}
	for _, c := range cands {
		here := with(at, &gpb.PathElem{Name: c.name})
		switch c.kind {
		case leafKind, leafListKind:
			v := c.value(data)
			if v == nil {
				if specific {
					return status.Errorf(codes.NotFound, "%s has no value", pathString(here))
				}
				continue
			}
			g.emit(c, here, v)
		case containerKind:
			if err := g.resolve(c, data, here, rest[1:], specific); err != nil {
				return err
			}
		case listKind:
			want := map[string]string{}
			for k, v := range e.GetKey() {
				if v == "*" {
					continue
				}
				if c.parse != nil {
					v, _ = c.parse(k, v) // checked
				}
				want[k] = v
			}
			all := len(want) == len(c.keys)
			ents, err := c.entries(g.ctx, data)
			if err != nil {
				return status.Errorf(codes.Internal, "%s: %v", pathString(here), err)
			}
			found := false
			for _, ent := range ents {
				if !matches(ent.keys, want) {
					continue
				}
				found = true
				p := with(at, &gpb.PathElem{Name: c.name, Key: ent.keys})
				if err := g.resolve(c, ent.data, p, rest[1:], specific && all); err != nil {
					return err
				}
			}
			if !found && specific && all {
				return status.Errorf(codes.NotFound, "no %s", pathString(with(at, &gpb.PathElem{Name: c.name, Key: want})))
			}
		}
	}
	return nil
}

func matches(have, want map[string]string) bool {
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}

// walk adds every leaf under n to g.out: n itself if it is a leaf, else
// everything under every entry of every list below it.
func (g *getter) walk(n *node, data any, at []*gpb.PathElem) error {
	if n.kind == leafKind || n.kind == leafListKind {
		if v := n.value(data); v != nil {
			g.emit(n, at, v)
		}
		return nil
	}
	for _, c := range n.children {
		here := with(at, &gpb.PathElem{Name: c.name})
		switch c.kind {
		case leafKind, leafListKind, containerKind:
			if err := g.walk(c, data, here); err != nil {
				return err
			}
		case listKind:
			ents, err := c.entries(g.ctx, data)
			if err != nil {
				return status.Errorf(codes.Internal, "%s: %v", pathString(here), err)
			}
			for _, ent := range ents {
				if err := g.walk(c, ent.data, with(at, &gpb.PathElem{Name: c.name, Key: ent.keys})); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

func (g *getter) emit(n *node, at []*gpb.PathElem, v any) {
	switch g.dt {
	case gpb.GetRequest_CONFIG:
		if !n.config {
			return
		}
	case gpb.GetRequest_STATE, gpb.GetRequest_OPERATIONAL:
		if n.config {
			return
		}
	}
	g.out = append(g.out, leafUpdate{path: at, value: v})
}

// encode renders a leaf's value as RFC 7951 (JSON_IETF) text: 64-bit
// integers as strings, the rest as JSON has them.
func encode(v any) ([]byte, error) {
	switch x := v.(type) {
	case uint64:
		return json.Marshal(strconv.FormatUint(x, 10))
	case int64:
		return json.Marshal(strconv.FormatInt(x, 10))
	}
	return json.Marshal(v)
}
