package gnmi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"

	gpb "github.com/openconfig/gnmi/proto/gnmi"
	"github.com/openconfig/ygot/ygot"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// DefaultSocket is where the daemon serves the local CLI unless the
// configuration says otherwise (management.gnmi.socket).
const DefaultSocket = "/run/appliance/gnmi.sock"

// Client is a gNMI client of one appliance.
type Client struct {
	socket string
	conn   *grpc.ClientConn
	gnmi   gpb.GNMIClient

	mu      sync.Mutex
	dialErr error // why the last connection attempt failed
}

// SocketPath returns the unix socket a --target names: unix:///path,
// unix:path or a plain path. TCP targets (host:port) need TLS and users,
// which come with the management release: they are refused for now.
func SocketPath(target string) (string, error) {
	switch {
	case strings.HasPrefix(target, "unix://"):
		target = strings.TrimPrefix(target, "unix://")
	case strings.HasPrefix(target, "unix:"):
		target = strings.TrimPrefix(target, "unix:")
	case strings.Contains(target, "/") || !strings.Contains(target, ":"):
	default:
		return "", fmt.Errorf("target %q: only the local unix socket is served yet (unix:///path or a path); TCP with TLS comes with the management release", target)
	}
	if target == "" {
		return "", errors.New("target: no socket path")
	}
	return target, nil
}

// Dial returns a client of the appliance serving at target (see
// SocketPath). It connects on the first RPC.
func Dial(target string) (*Client, error) {
	path, err := SocketPath(target)
	if err != nil {
		return nil, err
	}
	c := &Client{socket: path}
	c.conn, err = grpc.NewClient("passthrough:///appliance",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			var d net.Dialer
			conn, err := d.DialContext(ctx, "unix", path)
			c.mu.Lock()
			c.dialErr = err
			c.mu.Unlock()
			return conn, err
		}))
	if err != nil {
		return nil, err
	}
	c.gnmi = gpb.NewGNMIClient(c.conn)
	return c, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// Leaf is one leaf of a Get's answer.
type Leaf struct {
	Origin string
	Path   *gpb.Path // full, every list with its keys
	// Value is the decoded JSON: string, bool, int64 or float64 for
	// numbers, []any for a leaf-list. 64-bit counters come as strings
	// (RFC 7951).
	Value any
}

// Get reads the leaves under each path (gNMI path text, /a/b[k=v]/c) in
// origin, with encoding JSON_IETF. A failure to reach the appliance says
// where it was looked for.
func (c *Client) Get(ctx context.Context, origin string, paths ...string) ([]Leaf, error) {
	req := &gpb.GetRequest{Prefix: &gpb.Path{Origin: origin}, Encoding: gpb.Encoding_JSON_IETF}
	for _, p := range paths {
		gp, err := ygot.StringToStructuredPath(p)
		if err != nil {
			return nil, fmt.Errorf("path %s: %w", p, err)
		}
		req.Path = append(req.Path, gp)
	}
	resp, err := c.gnmi.Get(ctx, req)
	if err != nil {
		return nil, c.explain(err)
	}
	var out []Leaf
	for _, n := range resp.GetNotification() {
		for _, u := range n.GetUpdate() {
			b := u.GetVal().GetJsonIetfVal()
			if b == nil {
				b = u.GetVal().GetJsonVal()
			}
			v, err := decode(b)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", pathText(u.GetPath()), err)
			}
			out = append(out, Leaf{Origin: n.GetPrefix().GetOrigin(), Path: u.GetPath(), Value: v})
		}
	}
	return out, nil
}

// explain turns an RPC error into one a person can act on.
func (c *Client) explain(err error) error {
	st, _ := status.FromError(err)
	if st.Code() == codes.Unavailable {
		c.mu.Lock()
		derr := c.dialErr
		c.mu.Unlock()
		if derr != nil {
			// "dial unix PATH: connect: ENOENT" says the path twice
			// and the syscall: keep the reason.
			var se *os.SyscallError
			if errors.As(derr, &se) {
				derr = se.Err
			}
			return fmt.Errorf("cannot reach the appliance at %s: %v (is the daemon running?)", c.socket, derr)
		}
		return fmt.Errorf("cannot reach the appliance at %s: %s", c.socket, st.Message())
	}
	return fmt.Errorf("%s: %s", st.Code(), st.Message())
}

func decode(b []byte) (any, error) {
	d := json.NewDecoder(strings.NewReader(string(b)))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		return nil, err
	}
	return numbers(v), nil
}

// numbers turns json.Number into int64, or float64 where it has a
// fraction.
func numbers(v any) any {
	switch x := v.(type) {
	case json.Number:
		if i, err := x.Int64(); err == nil {
			return i
		}
		f, _ := x.Float64()
		return f
	case []any:
		for i := range x {
			x[i] = numbers(x[i])
		}
	case map[string]any:
		for k := range x {
			x[k] = numbers(x[k])
		}
	}
	return v
}

func pathText(p *gpb.Path) string {
	s, err := ygot.PathToString(p)
	if err != nil {
		return fmt.Sprint(p.GetElem())
	}
	return s
}

// Key returns the value of key of the last element named list in the
// leaf's path, and "" if there is none.
func (l Leaf) Key(list, key string) string {
	elems := l.Path.GetElem()
	for i := len(elems) - 1; i >= 0; i-- {
		if elems[i].GetName() == list {
			return elems[i].GetKey()[key]
		}
	}
	return ""
}

// Under returns the leaf's path after the last element named list, as
// a/b/c without keys ("state/session-state"), and false if the path has
// no such element.
func (l Leaf) Under(list string) (string, bool) {
	elems := l.Path.GetElem()
	for i := len(elems) - 1; i >= 0; i-- {
		if elems[i].GetName() == list {
			names := make([]string, 0, len(elems)-i-1)
			for _, e := range elems[i+1:] {
				names = append(names, e.GetName())
			}
			return strings.Join(names, "/"), true
		}
	}
	return "", false
}
