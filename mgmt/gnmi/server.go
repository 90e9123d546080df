// Package gnmi is the appliance's gNMI server (github.com/openconfig/gnmi,
// gNMI 0.10) and the client the CLI uses to reach it.
//
// The server reads the daemon's state through State and serves it in two
// origins: openconfig, BGP neighbors at the paths of
// openconfig-network-instance and openconfig-bgp; and portico, the
// appliance's own YANG module (mgmt/yang/portico.yang): VIPs and backends,
// learned BGP routes, what OpenConfig has no leaf for, and the kernel's main
// routing table. A path without an origin may name either.
//
// This first slice serves Capabilities and Get (encodings JSON_IETF and
// JSON, which are the same text here; list-key wildcards; a Get of a
// subtree answers with every leaf under it, each at its full path with
// every key). Set and Subscribe return Unimplemented. One Server serves on
// any number of listeners: the local unix socket now, TCP with TLS and
// users later.
package gnmi

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	gpb "github.com/openconfig/gnmi/proto/gnmi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"portico.dev/appliance/mgmt/yang"
)

// Server is the gNMI server. It is safe for concurrent use.
type Server struct {
	gpb.UnimplementedGNMIServer
	log  *slog.Logger
	root *node
	grpc *grpc.Server
	stop sync.Once
}

// New returns a server that reads st and logs to log (component=gnmi).
func New(st State, log *slog.Logger) *Server {
	s := &Server{log: log, root: model(st, time.Now), grpc: grpc.NewServer()}
	gpb.RegisterGNMIServer(s.grpc, s)
	return s
}

// Serve answers RPCs on l until Stop, then returns nil; any other
// failure to accept returns its error. It may be called for several
// listeners at once.
func (s *Server) Serve(l net.Listener) error {
	if err := s.grpc.Serve(l); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("gnmi: serve %s: %w", l.Addr(), err)
	}
	return nil
}

// Stop closes every listener (a unix socket's file goes with it) and ends
// the RPCs under way: it waits up to a second for them to finish, then
// cancels them.
func (s *Server) Stop() {
	s.stop.Do(func() {
		done := make(chan struct{})
		go func() {
			s.grpc.GracefulStop()
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(time.Second):
			s.grpc.Stop()
			<-done
		}
	})
}

// ListenUnix listens on the unix socket path for the local CLI. It makes
// the socket's directory (mode 0750) if it does not exist, and removes a
// socket left by a process that is gone; a socket that answers belongs to
// a running appliance and is an error, and so is anything at path that is
// not a socket. The socket is mode 0660: root and the directory's group.
// Closing the listener removes the socket.
func ListenUnix(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("gnmi: socket directory: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("gnmi: %s exists and is not a socket", path)
		}
		c, err := net.Dial("unix", path)
		if err == nil {
			c.Close()
			return nil, fmt.Errorf("gnmi: %s: another process serves on it (is the appliance running already?)", path)
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("gnmi: %s: %w", path, err)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("gnmi: remove stale socket: %w", err)
		}
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("gnmi: %w", err)
	}
	if err := os.Chmod(path, 0o660); err != nil {
		l.Close()
		return nil, fmt.Errorf("gnmi: %w", err)
	}
	return l, nil
}

// Capabilities lists the models served and the encodings Get takes.
func (s *Server) Capabilities(context.Context, *gpb.CapabilityRequest) (*gpb.CapabilityResponse, error) {
	version, _ := proto.GetExtension(gpb.File_github_com_openconfig_gnmi_proto_gnmi_gnmi_proto.Options(), gpb.E_GnmiService).(string)
	return &gpb.CapabilityResponse{
		SupportedModels: []*gpb.ModelData{
			// The OpenConfig subtree mirrors the paths of these modules;
			// it names no revision because it serves only some leaves.
			{Name: "openconfig-network-instance", Organization: "OpenConfig working group"},
			{Name: "openconfig-bgp", Organization: "OpenConfig working group"},
			{Name: "openconfig-bfd", Organization: "OpenConfig working group"},
			{Name: yang.Name, Organization: "Portico", Version: yang.Revision},
		},
		SupportedEncodings: []gpb.Encoding{gpb.Encoding_JSON_IETF, gpb.Encoding_JSON},
		GNMIVersion:        version,
	}, nil
}

// Get answers each path of the request with one notification per origin
// its leaves belong to; each update is one leaf at its full path.
func (s *Server) Get(ctx context.Context, req *gpb.GetRequest) (*gpb.GetResponse, error) {
	enc := req.GetEncoding()
	if enc != gpb.Encoding_JSON_IETF && enc != gpb.Encoding_JSON {
		return nil, status.Errorf(codes.Unimplemented, "encoding %s is not supported; use JSON_IETF", enc)
	}
	if len(req.GetPath()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "the request has no path")
	}
	pre := req.GetPrefix()
	resp := &gpb.GetResponse{}
	now := time.Now().UnixNano()
	for _, p := range req.GetPath() {
		if len(p.GetElement()) > 0 || len(pre.GetElement()) > 0 {
			return nil, status.Error(codes.InvalidArgument, "path uses the deprecated element field; use elem")
		}
		origin := pre.GetOrigin()
		if origin == "" {
			origin = p.GetOrigin()
		} else if p.GetOrigin() != "" {
			return nil, status.Errorf(codes.InvalidArgument, "origin %q in the prefix and %q in the path: give it once", origin, p.GetOrigin())
		}
		elems := append(append([]*gpb.PathElem(nil), pre.GetElem()...), p.GetElem()...)
		leaves, err := s.get(ctx, origin, elems, req.GetType())
		if err != nil {
			s.log.Debug("get", "path", pathString(elems), "err", err)
			return nil, err
		}
		byOrigin := map[string]*gpb.Notification{}
		for _, l := range leaves {
			o := originOf(l.path[0].GetName())
			n := byOrigin[o]
			if n == nil {
				n = &gpb.Notification{Timestamp: now, Prefix: &gpb.Path{Origin: o, Target: pre.GetTarget()}}
				byOrigin[o] = n
				resp.Notification = append(resp.Notification, n)
			}
			b, err := encode(l.value)
			if err != nil {
				return nil, status.Errorf(codes.Internal, "%s: %v", pathString(l.path), err)
			}
			tv := &gpb.TypedValue{Value: &gpb.TypedValue_JsonIetfVal{JsonIetfVal: b}}
			if enc == gpb.Encoding_JSON {
				tv.Value = &gpb.TypedValue_JsonVal{JsonVal: b}
			}
			n.Update = append(n.Update, &gpb.Update{Path: &gpb.Path{Elem: l.path}, Val: tv})
		}
	}
	return resp, nil
}

// get resolves one path in origin ("" for either).
func (s *Server) get(ctx context.Context, origin string, elems []*gpb.PathElem, dt gpb.GetRequest_DataType) ([]leafUpdate, error) {
	root := s.root
	switch origin {
	case "":
	case OriginOpenConfig, OriginPortico:
		root = &node{kind: containerKind}
		for _, c := range s.root.children {
			if originOf(c.name) == origin {
				root.children = append(root.children, c)
			}
		}
	default:
		return nil, status.Errorf(codes.InvalidArgument, "origin %q is not served (origins: %s, %s)", origin, OriginOpenConfig, OriginPortico)
	}
	if err := check(root, nil, elems); err != nil {
		return nil, err
	}
	g := &getter{ctx: ctx, dt: dt}
	if err := g.resolve(root, nil, nil, elems, true); err != nil {
		return nil, err
	}
	return g.out, nil
}

// Set is not served yet: configuration changes go through the file and
// SIGHUP until the management release.
func (s *Server) Set(context.Context, *gpb.SetRequest) (*gpb.SetResponse, error) {
	return nil, status.Error(codes.Unimplemented, "Set is not supported yet: change the configuration file and reload (SIGHUP)")
}

// Subscribe is not served yet.
func (s *Server) Subscribe(gpb.GNMI_SubscribeServer) error {
	return status.Error(codes.Unimplemented, "Subscribe is not supported yet: poll with Get")
}
