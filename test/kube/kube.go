// Package kube runs a real Kubernetes control plane for tests: etcd (Debian's etcd-server)
// and kube-apiserver v1.36.3, built by test/kube/build.sh from the wrapper module
// test/kube/k8s and cached. Nothing else of Kubernetes runs: no controller-manager, no
// scheduler, no kubelet, so tests create the objects those would (EndpointSlices, Nodes)
// themselves.
//
// Start gives each test its own etcd and apiserver on 127.0.0.1 with free ports, a static
// token of a member of system:masters, --authorization-mode=AlwaysAllow, and certificates,
// keys and data in the test's temporary directory, and stops both when the test ends.
// Without etcd or a kube-apiserver binary the test is skipped, or fails where CI=true.
package kube

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"portico.dev/appliance/test/topo"
)

const (
	// readyTimeout bounds the wait for etcd and the apiserver to answer. The apiserver is
	// ready in about 3 s on an idle machine; this is for a loaded one with two cores.
	readyTimeout = 2 * time.Minute

	// ServiceCIDRs are the apiserver's --service-cluster-ip-range, IPv4 and IPv6, so that
	// Services may be single- or dual-stack. Only ClusterIPs come from them.
	ServiceCIDRs = "10.96.0.0/16,fd00:10:96::/112"
)

// Options tune StartWith.
type Options struct {
	// Netns is the network namespace, by the name ip netns lists, that etcd and the
	// apiserver run in; the test's own if empty. A daemon started in that namespace reaches
	// the apiserver through Kubeconfig. Needs root.
	Netns string
	// Address is the address the apiserver listens on, in Netns; 127.0.0.1 if not valid.
	// An address on a link lets processes in other namespaces reach it too. Without Netns
	// it must be a loopback address.
	Address netip.Addr
}

// Cluster is a running etcd and kube-apiserver. Its methods are for the test's goroutine.
type Cluster struct {
	opt        Options
	dir        string
	pki        *pki
	host       string // https://address:port
	kubeconfig string
	etcd       *proc
	apiserver  *proc // nil while stopped
	apiArgv    []string
}

// Start starts etcd and kube-apiserver for t on 127.0.0.1 and waits until the apiserver
// is ready; both are stopped, and waited for, when t ends.
func Start(t testing.TB) *Cluster {
	t.Helper()
	return StartWith(t, Options{})
}

// StartWith is Start with options.
func StartWith(t testing.TB, opt Options) *Cluster {
	t.Helper()
	if opt.Netns != "" {
		topo.RequireRoot(t)
	}
	if !opt.Address.IsValid() {
		opt.Address = netip.MustParseAddr("127.0.0.1")
	}
	if opt.Netns == "" && !opt.Address.IsLoopback() {
		// Tests send traffic only to loopback or into namespaces they made.
		t.Fatalf("kube: Options.Address %s: without Netns the apiserver listens on loopback only", opt.Address)
	}
	etcdBin, err := exec.LookPath("etcd")
	if err != nil {
		unavailable(t, "kube: no etcd (apt-get install etcd-server): %v", err)
	}
	apiBin, err := Binary("kube-apiserver")
	if err != nil {
		unavailable(t, "kube: no kube-apiserver (test/kube/build.sh builds it): %v", err)
	}

	c := &Cluster{opt: opt, dir: t.TempDir()}
	t.Cleanup(func() { c.stop(t) })
	if c.pki, err = newPKI(c.dir, opt.Address); err != nil {
		t.Fatal(err)
	}
	etcdPorts, err := freePorts(opt.Netns, "127.0.0.1", 2)
	if err != nil {
		t.Fatal(err)
	}
	apiPort, err := freePorts(opt.Netns, opt.Address.String(), 1)
	if err != nil {
		t.Fatal(err)
	}
	c.host = "https://" + net.JoinHostPort(opt.Address.String(), strconv.Itoa(apiPort[0]))
	if err := c.writeKubeconfig(); err != nil {
		t.Fatal(err)
	}

	etcdURL := "http://127.0.0.1:" + strconv.Itoa(etcdPorts[0])
	peerURL := "http://127.0.0.1:" + strconv.Itoa(etcdPorts[1])
	c.etcd, err = startProc("etcd", filepath.Join(c.dir, "etcd.log"), c.inNetns(
		etcdBin,
		"--name=portico",
		"--data-dir="+filepath.Join(c.dir, "etcd"),
		"--listen-client-urls="+etcdURL,
		"--advertise-client-urls="+etcdURL,
		"--listen-peer-urls="+peerURL,
		"--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=portico="+peerURL,
		"--logger=zap",
		"--log-level=warn",
	))
	if err != nil {
		t.Fatal(err)
	}
	etcdHTTP := &http.Client{Transport: &http.Transport{}}
	if opt.Netns != "" {
		etcdHTTP.Transport = &http.Transport{DialContext: dialIn(opt.Netns)}
	}
	err = c.waitOK(etcdURL+"/health", etcdHTTP, c.etcd)
	etcdHTTP.CloseIdleConnections()
	if err != nil {
		t.Fatal(err)
	}

	addr := opt.Address.String()
	c.apiArgv = c.inNetns(
		apiBin,
		"--bind-address="+addr,
		"--advertise-address="+addr,
		"--secure-port="+strconv.Itoa(apiPort[0]),
		"--cert-dir="+c.dir,
		"--tls-cert-file="+c.pki.cert,
		"--tls-private-key-file="+c.pki.key,
		"--token-auth-file="+c.pki.tokenFile,
		"--authorization-mode=AlwaysAllow",
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-key-file="+c.pki.saPub,
		"--service-account-signing-key-file="+c.pki.saKey,
		"--service-cluster-ip-range="+ServiceCIDRs,
		"--etcd-servers="+etcdURL,
		// The lease reconciler would put the advertise address into the endpoints of the
		// default/kubernetes Service, and endpoints may not be loopback addresses.
		"--endpoint-reconciler-type=none",
		// On SIGTERM the HTTP server waits for open watches up to --request-timeout (60 s)
		// by default; with this it gives them 2 s, so a stop takes seconds.
		"--shutdown-send-retry-after=true",
		"--profiling=false",
	)
	c.StartAPIServer(t)
	return c
}

// unavailable skips t for want of something the cluster needs, or fails it where CI=true:
// CI installs and builds everything, so a test skipped there would hide a broken setup.
func unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf(format+" (CI=true: not skipping)", args...)
	}
	t.Skipf(format, args...)
}

// inNetns returns argv run in the cluster's network namespace.
func (c *Cluster) inNetns(argv ...string) []string {
	if c.opt.Netns == "" {
		return argv
	}
	return append([]string{"ip", "netns", "exec", c.opt.Netns}, argv...)
}

// Config returns a client configuration for the apiserver: its address, the CA that signed
// its certificate and the admin's bearer token, with client-side rate limiting off so that
// tests and benchmarks may create objects as fast as the apiserver takes them. Its
// connections start in the cluster's network namespace. Each call returns a new copy.
func (c *Cluster) Config() *rest.Config {
	cfg := &rest.Config{
		Host:            c.host,
		BearerToken:     c.pki.token,
		TLSClientConfig: rest.TLSClientConfig{CAData: c.pki.caPEM},
		QPS:             -1, // negative: no rate limiter
	}
	if c.opt.Netns != "" {
		cfg.Dial = dialIn(c.opt.Netns)
	}
	return cfg
}

// Kubeconfig returns the path of a kubeconfig file for the apiserver, with the CA and the
// admin's token in it, as a daemon under test takes it.
func (c *Cluster) Kubeconfig() string { return c.kubeconfig }

// Client returns a clientset for the apiserver, or fails t.
func (c *Cluster) Client(t testing.TB) kubernetes.Interface {
	t.Helper()
	cs, err := kubernetes.NewForConfig(c.Config())
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

func (c *Cluster) writeKubeconfig() error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["portico-test"] = &clientcmdapi.Cluster{Server: c.host, CertificateAuthorityData: c.pki.caPEM}
	cfg.AuthInfos["admin"] = &clientcmdapi.AuthInfo{Token: c.pki.token}
	cfg.Contexts["portico-test"] = &clientcmdapi.Context{Cluster: "portico-test", AuthInfo: "admin"}
	cfg.CurrentContext = "portico-test"
	c.kubeconfig = filepath.Join(c.dir, "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, c.kubeconfig); err != nil {
		return fmt.Errorf("kube: write kubeconfig: %w", err)
	}
	return nil
}

// StopAPIServer stops the apiserver (SIGTERM, then SIGKILL) and waits for it to exit; etcd
// and everything stored stay. Clients see connections refused until StartAPIServer.
func (c *Cluster) StopAPIServer(t testing.TB) {
	t.Helper()
	if c.apiserver == nil {
		t.Fatal("kube: stop apiserver: not running")
	}
	p := c.apiserver
	c.apiserver = nil
	if err := p.stop(); err != nil {
		t.Fatal(err)
	}
}

// StartAPIServer starts the apiserver, again after StopAPIServer, at the same address with
// the same certificates and token, and waits until its /readyz answers ok.
func (c *Cluster) StartAPIServer(t testing.TB) {
	t.Helper()
	if c.apiserver != nil {
		t.Fatal("kube: start apiserver: running already")
	}
	begin := time.Now()
	p, err := startProc("kube-apiserver", filepath.Join(c.dir, "kube-apiserver.log"), c.apiArgv)
	if err != nil {
		t.Fatal(err)
	}
	c.apiserver = p
	hc, err := rest.HTTPClientFor(c.Config())
	if err != nil {
		t.Fatal(err)
	}
	defer hc.CloseIdleConnections()
	if err := c.waitOK(c.host+"/readyz", hc, p); err != nil {
		t.Fatal(err)
	}
	t.Logf("kube: apiserver %s ready in %v", c.host, time.Since(begin).Round(time.Millisecond))
}

// waitOK polls url until it answers 200, p or etcd exits, or readyTimeout passes.
func (c *Cluster) waitOK(url string, hc *http.Client, p *proc) error {
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	var last error
	for {
		for _, q := range []*proc{c.etcd, p} {
			if done, err := q.exited(); done {
				return fmt.Errorf("%w while waiting for %s; its log ends:\n%s", err, url, q.tail(4096))
			}
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return fmt.Errorf("kube: %w", err)
		}
		resp, err := hc.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = errors.New(resp.Status)
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("kube: %s not ok after %v: %v; %s's log ends:\n%s", url, readyTimeout, last, p.name, p.tail(4096))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// stop stops the apiserver, then etcd, and waits for both. If t failed it logs the end of
// their logs, which go away with t's temporary directory.
func (c *Cluster) stop(t testing.TB) {
	for _, p := range []*proc{c.apiserver, c.etcd} {
		if p == nil {
			continue
		}
		if t.Failed() {
			t.Logf("kube: %s's log ends:\n%s", p.name, p.tail(8192))
		}
		if err := p.stop(); err != nil {
			t.Error(err)
		}
	}
	c.apiserver, c.etcd = nil, nil
}
