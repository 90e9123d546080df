// Package config defines the appliance's configuration file (the keys of
// INTERFACE.md), loads it with viper (APPLIANCE_* environment variables
// override keys), refuses unknown keys, and validates it. Every problem is
// reported as "path.to.field: reason".
package config

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"reflect"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
	"github.com/spf13/viper"
	"go.yaml.in/yaml/v3"
)

// Config is the whole configuration file.
type Config struct {
	Name       string     `yaml:"name"`
	Store      string     `yaml:"store"`
	Log        Log        `yaml:"log"`
	VIPs       []VIP      `yaml:"vips"`
	Pools      []Pool     `yaml:"pools"`
	BGP        BGP        `yaml:"bgp"`
	Kubernetes Kubernetes `yaml:"kubernetes"`
	Management Management `yaml:"management"`
}

// Log configures the daemon's log.
type Log struct {
	Level  string `yaml:"level"`  // debug | info | warn | error
	Format string `yaml:"format"` // text | json
}

// VIP is a static L4 service.
type VIP struct {
	Name      string    `yaml:"name"`
	Address   string    `yaml:"address"`
	Port      int       `yaml:"port"`
	Protocol  string    `yaml:"protocol"`  // tcp | udp
	Scheduler string    `yaml:"scheduler"` // maglev | round-robin
	SNAT      bool      `yaml:"snat"`
	Health    *Health   `yaml:"health"`
	Backends  []Backend `yaml:"backends"`
}

// Health configures the active check of every backend of a VIP.
type Health struct {
	Type     string        `yaml:"type"` // tcp | http
	Path     string        `yaml:"path"`
	Interval time.Duration `yaml:"interval"`
	Timeout  time.Duration `yaml:"timeout"`
	Rise     int           `yaml:"rise"`
	Fall     int           `yaml:"fall"`
}

// Backend is one destination of a VIP.
type Backend struct {
	Address string `yaml:"address"` // addr:port, [v6]:port
	Weight  *int   `yaml:"weight"`  // 1..1000, default 1
}

// Pool is a range of addresses the appliance may own and hand out.
type Pool struct {
	Name       string   `yaml:"name"`
	CIDRs      []string `yaml:"cidrs"`
	AutoAssign bool     `yaml:"auto-assign"`
}

// BGP configures routing.
type BGP struct {
	ASN             uint32          `yaml:"asn"`
	RouterID        string          `yaml:"router-id"`
	ListenPort      int             `yaml:"listen-port"`
	GracefulRestart GracefulRestart `yaml:"graceful-restart"`
	Peers           []Peer          `yaml:"peers"`
}

// GracefulRestart configures BGP graceful restart.
type GracefulRestart struct {
	Enabled     bool          `yaml:"enabled"`
	RestartTime time.Duration `yaml:"restart-time"`
}

// Peer is one BGP neighbor.
type Peer struct {
	Name        string        `yaml:"name"`
	Address     string        `yaml:"address"`
	ASN         uint32        `yaml:"asn"`
	Role        string        `yaml:"role"` // node | upstream
	Password    string        `yaml:"password"`
	Multihop    int           `yaml:"multihop"`
	HoldTime    time.Duration `yaml:"hold-time"`
	Keepalive   time.Duration `yaml:"keepalive"`
	BFD         BFD           `yaml:"bfd"`
	Accept      []string      `yaml:"accept"`
	MaxPrefixes int           `yaml:"max-prefixes"`
	Communities []string      `yaml:"communities"`
}

// BFD configures a peer's BFD session.
type BFD struct {
	Enabled    bool          `yaml:"enabled"`
	Interval   time.Duration `yaml:"interval"`
	Multiplier int           `yaml:"multiplier"`
}

// Kubernetes configures the clusters the appliance serves.
type Kubernetes struct {
	Clusters          []Cluster `yaml:"clusters"`
	LoadBalancerClass string    `yaml:"load-balancer-class"`
	DefaultClass      bool      `yaml:"default-class"`
	IngressClass      string    `yaml:"ingress-class"`
	ForwardTo         string    `yaml:"forward-to"` // pods | nodeports
}

// Cluster is one Kubernetes cluster.
type Cluster struct {
	Name       string `yaml:"name"`
	Kubeconfig string `yaml:"kubeconfig"`
}

// Management configures gNMI and metrics.
type Management struct {
	GNMI    GNMI   `yaml:"gnmi"`
	Metrics string `yaml:"metrics"`
}

// GNMI configures the gNMI server.
type GNMI struct {
	Listen string `yaml:"listen"`
	Socket string `yaml:"socket"`
	TLS    TLS    `yaml:"tls"`
	Users  []User `yaml:"users"`
}

// TLS names the server's certificate files.
type TLS struct {
	Cert     string `yaml:"cert"`
	Key      string `yaml:"key"`
	ClientCA string `yaml:"client-ca"`
}

// User is a management user.
type User struct {
	Name         string `yaml:"name"`
	PasswordHash string `yaml:"password-hash"`
	Role         string `yaml:"role"` // admin | read-only
}

// FieldError is one problem with one field.
type FieldError struct {
	Path   string
	Reason string
}

func (e FieldError) Error() string { return e.Path + ": " + e.Reason }

// Errors is a list of field problems; Error prints one a line.
type Errors []FieldError

func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// Parse decodes a YAML configuration, applies APPLIANCE_* environment
// overrides from env (nil: none) and validates the result. A document
// with unknown keys or invalid values returns Errors.
func Parse(data []byte, env []string) (*Config, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, Errors{{Path: "(file)", Reason: err.Error()}}
	}
	// Unknown keys are reported together with every other problem, so
	// that one run of validate lists all there is to fix.
	errs := unknownKeys(&root, reflect.TypeOf(Config{}), "")
	v := viper.New()
	v.SetConfigType("yaml")
	if err := v.ReadConfig(bytes.NewReader(data)); err != nil {
		return nil, Errors{{Path: "(file)", Reason: err.Error()}}
	}
	applyEnv(v, env)
	var c Config
	err := v.Unmarshal(&c, func(dc *mapstructure.DecoderConfig) {
		dc.TagName = "yaml"
		dc.DecodeHook = mapstructure.ComposeDecodeHookFunc(dc.DecodeHook, strictNumbers)
	})
	if err != nil {
		return nil, append(errs, decodeErrors(err)...)
	}
	c.setDefaults()
	if errs = append(errs, c.Validate()...); len(errs) > 0 {
		return nil, errs
	}
	return &c, nil
}

// Load reads and parses a file, with the process environment's overrides.
func Load(path string) (*Config, []byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("config: %w", err)
	}
	c, err := Parse(data, os.Environ())
	return c, data, err
}

// applyEnv sets every APPLIANCE_* variable that names a scalar key present
// in the file or in the defaults: APPLIANCE_LOG_LEVEL=debug sets log.level,
// APPLIANCE_MANAGEMENT_METRICS sets management.metrics ("-" and "." in key
// names become "_").
func applyEnv(v *viper.Viper, env []string) {
	keys := map[string]string{}
	for _, k := range scalarKeys(reflect.TypeOf(Config{}), "") {
		keys["APPLIANCE_"+strings.ToUpper(strings.NewReplacer(".", "_", "-", "_").Replace(k))] = k
	}
	for _, kv := range env {
		name, val, ok := strings.Cut(kv, "=")
		if k, known := keys[name]; ok && known {
			v.Set(k, val)
		}
	}
}

// scalarKeys lists the dotted keys of every non-list field reachable
// without passing through a list.
func scalarKeys(t reflect.Type, prefix string) []string {
	var out []string
	for i := range t.NumField() {
		f := t.Field(i)
		name := prefix + f.Tag.Get("yaml")
		ft := f.Type
		if ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		switch {
		case ft.Kind() == reflect.Struct:
			out = append(out, scalarKeys(ft, name+".")...)
		case ft.Kind() != reflect.Slice:
			out = append(out, name)
		}
	}
	return out
}

// strictNumbers refuses what a loose decode would silently bend: a
// negative or too large number for an unsigned field (an ASN of -1 would
// become 4294967295), and a fraction for an integer field (port 80.5).
func strictNumbers(from, to reflect.Type, data any) (any, error) {
	isInt := func(k reflect.Kind) bool { return k >= reflect.Int && k <= reflect.Int64 }
	isUint := func(k reflect.Kind) bool { return k >= reflect.Uint && k <= reflect.Uint64 }
	if !isInt(to.Kind()) && !isUint(to.Kind()) {
		return data, nil
	}
	v := reflect.ValueOf(data)
	switch {
	case v.CanFloat():
		f := v.Float()
		if f != float64(int64(f)) {
			return nil, fmt.Errorf("%v is not a whole number", data)
		}
		if isUint(to.Kind()) && (f < 0 || reflect.New(to).Elem().OverflowUint(uint64(f))) {
			return nil, fmt.Errorf("%v is out of range for %s", data, to)
		}
	case v.CanInt() && isUint(to.Kind()):
		if n := v.Int(); n < 0 || reflect.New(to).Elem().OverflowUint(uint64(n)) {
			return nil, fmt.Errorf("%v is out of range for %s", data, to)
		}
	case v.CanUint() && isUint(to.Kind()):
		if reflect.New(to).Elem().OverflowUint(v.Uint()) {
			return nil, fmt.Errorf("%v is out of range for %s", data, to)
		}
	}
	return data, nil
}

// unknownKeys walks the YAML tree beside the Go type and reports every
// mapping key the type does not have.
func unknownKeys(n *yaml.Node, t reflect.Type, path string) Errors {
	if n.Kind == yaml.DocumentNode {
		if len(n.Content) == 0 {
			return nil
		}
		return unknownKeys(n.Content[0], t, path)
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	var errs Errors
	switch {
	case t.Kind() == reflect.Struct && n.Kind == yaml.MappingNode:
		fields := map[string]reflect.Type{}
		for i := range t.NumField() {
			fields[t.Field(i).Tag.Get("yaml")] = t.Field(i).Type
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			key := n.Content[i].Value
			p := join(path, key)
			ft, ok := fields[key]
			if !ok {
				errs = append(errs, FieldError{p, "unknown key"})
				continue
			}
			errs = append(errs, unknownKeys(n.Content[i+1], ft, p)...)
		}
	case t.Kind() == reflect.Slice && n.Kind == yaml.SequenceNode:
		for i, item := range n.Content {
			errs = append(errs, unknownKeys(item, t.Elem(), fmt.Sprintf("%s[%d]", path, i))...)
		}
	}
	return errs
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// decodeErrors turns mapstructure's type errors into field errors.
func decodeErrors(err error) Errors {
	var out Errors
	var de *mapstructure.DecodeError
	for _, e := range unwrapAll(err) {
		if errors.As(e, &de) {
			out = append(out, FieldError{Path: de.Name(), Reason: de.Unwrap().Error()})
			continue
		}
		out = append(out, FieldError{Path: "(file)", Reason: e.Error()})
	}
	return out
}

func unwrapAll(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, unwrapAll(e)...)
		}
		return out
	}
	return []error{err}
}
