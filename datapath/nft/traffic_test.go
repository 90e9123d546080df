package nft

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"portico.dev/appliance/test/topo"
)

// timeout bounds every dial and every exchange: generous, for loaded machines.
const timeout = 10 * time.Second

// The addresses of testdata/l4.clab.yml: link n (0 for the client's) has
// the appliance at .1, the client at .2 and backend n at .1n.
func linkAddr(n int, host string, v6 bool) netip.Addr {
	if v6 {
		return netip.MustParseAddr(fmt.Sprintf("fd00:%d::%s", n, host))
	}
	return netip.MustParseAddr(fmt.Sprintf("10.0.%d.%s", n, host))
}

// labService balances vip:port over the lab's three backends at port
// bport, with a 31-slot table.
func labService(vip string, proto Proto, port, bport uint16) Service {
	k := Key{netip.MustParseAddr(vip), proto, port}
	var bes []netip.AddrPort
	for n := 1; n <= 3; n++ {
		bes = append(bes, netip.AddrPortFrom(linkAddr(n, fmt.Sprintf("1%d", n), k.Addr.Is6()), bport))
	}
	return Service{Key: k, Backends: bes, Slots: slots(31, bes...)}
}

// without returns s with backend b removed, its slots dealt out to the
// others in turn, as a consistent-hash table does.
func without(s Service, b netip.AddrPort) Service {
	s = s.normalize()
	s.Slots = slices.Clone(s.Slots) // the Target keeps the slices it was given
	var rest []netip.AddrPort
	for _, r := range s.Backends {
		if r != b {
			rest = append(rest, r)
		}
	}
	s.Backends = rest
	n := 0
	for i, r := range s.Slots {
		if r == b {
			s.Slots[i] = rest[n%len(rest)]
			n++
		}
	}
	return s
}

// replace returns services with the one of s's key replaced by s.
func replace(services []Service, s Service) []Service {
	out := slices.Clone(services)
	for i := range out {
		if out[i].Key == s.Key {
			out[i] = s
		}
	}
	return out
}

// TestTraffic sends real traffic from a client through the appliance to
// three backends, in the namespaces of testdata/l4.clab.yml.
func TestTraffic(t *testing.T) {
	t.Parallel()
	lab := topo.UpT(t, "testdata/l4.clab.yml")
	startBackends(t, lab)
	appliance, err := os.Open(filepath.Join("/var/run/netns", lab.Namespace("appliance")))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { appliance.Close() })
	tg := newTarget(t, Options{NetNS: int(appliance.Fd())})
	client := filepath.Join("/var/run/netns", lab.Namespace("client"))

	web4 := labService("203.0.113.10", TCP, 80, 8080)
	web6 := labService("2001:db8::10", TCP, 80, 8080)
	dns4 := labService("203.0.113.10", UDP, 53, 5353)
	dns4.Scheduler = RoundRobin
	echo4 := labService("203.0.113.10", TCP, 9000, 9000)
	echo4.SNAT = true
	all := []Service{web4, web6, dns4, echo4}
	set(t, tg, all...)
	// answered counts the flows of each VIP that got an answer.
	answered := map[Key]int{}

	t.Run("http", func(t *testing.T) {
		webSNAT := web4
		webSNAT.SNAT = true
		for _, s := range []Service{web4, webSNAT, web6} {
			t.Run(fmt.Sprintf("%s snat=%t", s.Key, s.SNAT), func(t *testing.T) {
				set(t, tg, replace(all, s)...)
				const n = 300
				var answers []answer
				err := inNetns(client, func() error {
					for range n {
						a, err := httpGet(netip.AddrPortFrom(s.Key.Addr, s.Key.Port))
						if err != nil {
							return err
						}
						answers = append(answers, a)
					}
					return nil
				})
				if err != nil {
					t.Fatalf("after %d answers: %v", len(answers), err)
				}
				answered[s.Key] += n
				perBackend := map[int]int{}
				for _, a := range answers {
					perBackend[a.backend]++
					want := linkAddr(0, "2", s.Key.Addr.Is6())
					if s.SNAT {
						want = linkAddr(a.backend, "1", s.Key.Addr.Is6())
					}
					if a.from != want {
						t.Fatalf("backend %d saw the request come from %s, want %s", a.backend, a.from, want)
					}
				}
				for be := 1; be <= 3; be++ {
					if share := float64(perBackend[be]) / n; share < 0.20 || share > 0.47 {
						t.Errorf("backend %d answered %.0f%% of the requests, want 20%% to 47%%: %v", be, 100*share, perBackend)
					}
				}
			})
		}
		set(t, tg, all...)
	})

	t.Run("udp", func(t *testing.T) {
		const n = 30
		perBackend := map[int]int{}
		err := inNetns(client, func() error {
			for range n {
				a, err := udpQuery(netip.AddrPortFrom(dns4.Key.Addr, dns4.Key.Port))
				if err != nil {
					return err
				}
				if want := linkAddr(0, "2", false); a.from != want {
					return fmt.Errorf("backend %d saw the query come from %s, want %s", a.backend, a.from, want)
				}
				perBackend[a.backend]++
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		answered[dns4.Key] += n
		if len(perBackend) != 3 {
			t.Errorf("answers per backend = %v, want every backend", perBackend)
		}
	})

	t.Run("conntrack", func(t *testing.T) {
		vip := netip.AddrPortFrom(echo4.Key.Addr, echo4.Key.Port)
		conns, err := dialEcho(t, client, vip, 200)
		if err != nil {
			t.Fatal(err)
		}
		answered[echo4.Key] += len(conns)
		requireEcho(t, conns)
		// Backend 3 leaves the table while its server still runs:
		// conntrack keeps its connections on it.
		gone := echo4.Backends[2]
		if count(conns, 3) == 0 {
			t.Fatalf("no connection reached %s; the test needs some", gone)
		}
		set(t, tg, replace(all, without(echo4, gone))...)
		requireEcho(t, conns)
		fresh, err := dialEcho(t, client, vip, 60)
		if err != nil {
			t.Fatal(err)
		}
		if n := count(fresh, 3); n != 0 {
			t.Errorf("%d of %d new connections reached %s, which has left the table", n, len(fresh), gone)
		}
		// Back in the table, it takes new connections again; the old ones
		// still flow, each on its first backend, since any other would
		// refuse a segment of a connection it does not know.
		set(t, tg, all...)
		requireEcho(t, conns)
		if fresh, err = dialEcho(t, client, vip, 60); err != nil {
			t.Fatal(err)
		}
		if count(fresh, 3) == 0 {
			t.Errorf("no new connection reached %s after it came back", gone)
		}
	})

	t.Run("counters", func(t *testing.T) {
		c, err := tg.Counters(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range all {
			// A flow that got an answer crossed the appliance at least
			// once each way: counting both directions, its VIP has at
			// least two packets.
			if got, least := c.VIPs[s.Key], uint64(2*answered[s.Key]); got.Packets < least || got.Bytes == 0 {
				t.Errorf("counter of %s = %+v, want at least %d packets and some bytes", s.Key, got, least)
			}
			for _, b := range s.Backends {
				if got := c.Backends[s.Key][b]; got.Packets == 0 || got.Bytes == 0 {
					t.Errorf("counter of %s backend %s = %+v, want some packets and bytes", s.Key, b, got)
				}
			}
		}
	})
}

// startBackends builds test/backend and runs it on every backend node.
func startBackends(t *testing.T, lab *topo.Lab) {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "backend")
	if out, err := exec.Command("go", "build", "-o", bin, "portico.dev/appliance/test/backend").CombinedOutput(); err != nil {
		t.Fatalf("go build test/backend: %v\n%s", err, out)
	}
	for n := 1; n <= 3; n++ {
		name := fmt.Sprintf("be%d", n)
		p, err := lab.Start(t.Context(), name, bin, "-name", name, "-http", ":8080", "-tcp", ":9000", "-udp", ":5353")
		if err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(timeout); !strings.Contains(p.Output(), "ready"); {
			select {
			case <-p.Done():
				t.Fatalf("%s exited: %v\n%s", name, p.Wait(), p.Output())
			case <-time.After(10 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s is not ready after %s:\n%s", name, timeout, p.Output())
			}
		}
	}
}

// inNetns runs fn on an OS thread in the network namespace at path: the
// sockets fn opens belong to that namespace, and stay there after it returns.
func inNetns(path string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the thread ends with the goroutine instead of
		// carrying the namespace on to other goroutines.
		runtime.LockOSThread()
		f, err := os.Open(path)
		if err != nil {
			errc <- err
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", path, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// answer is what a backend answers: its number and where it saw the
// client's packets come from.
type answer struct {
	backend int
	from    netip.Addr
}

func parseAnswer(line string) (answer, error) {
	var a answer
	var from string
	if _, err := fmt.Sscanf(line, "be%d %s", &a.backend, &from); err != nil {
		return a, fmt.Errorf("answer %q: %w", line, err)
	}
	ap, err := netip.ParseAddrPort(from)
	a.from = ap.Addr()
	return a, err
}

// httpGet makes one HTTP request on a new connection to vip.
func httpGet(vip netip.AddrPort) (answer, error) {
	c, err := net.DialTimeout("tcp", vip.String(), timeout)
	if err != nil {
		return answer{}, err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(timeout)); err != nil {
		return answer{}, err
	}
	if _, err := io.WriteString(c, "GET / HTTP/1.0\r\n\r\n"); err != nil {
		return answer{}, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return answer{}, err
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return answer{}, err
	}
	return parseAnswer(strings.TrimSpace(string(body)))
}

// udpQuery sends a datagram to vip from a new socket, a new flow, and
// reads the answer; it sends again if none comes within a second.
func udpQuery(vip netip.AddrPort) (answer, error) {
	c, err := net.Dial("udp", vip.String())
	if err != nil {
		return answer{}, err
	}
	defer c.Close()
	buf := make([]byte, 512)
	for deadline := time.Now().Add(timeout); ; {
		if _, err := c.Write([]byte("query\n")); err != nil {
			return answer{}, err
		}
		if err := c.SetReadDeadline(time.Now().Add(time.Second)); err != nil {
			return answer{}, err
		}
		n, err := c.Read(buf)
		if err == nil {
			return parseAnswer(strings.TrimSpace(string(buf[:n])))
		}
		if time.Now().After(deadline) {
			return answer{}, fmt.Errorf("query %s: %w", vip, err)
		}
	}
}

// echoConn is a connection to the TCP line echo of a backend.
type echoConn struct {
	net.Conn
	r       *bufio.Reader
	backend int
}

// dialEcho opens n connections to vip from the namespace at path and reads
// each one's greeting; they are closed when t ends.
func dialEcho(t *testing.T, path string, vip netip.AddrPort, n int) ([]*echoConn, error) {
	var conns []*echoConn
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	err := inNetns(path, func() error {
		for range n {
			c, err := net.DialTimeout("tcp", vip.String(), timeout)
			if err != nil {
				return err
			}
			ec := &echoConn{Conn: c, r: bufio.NewReader(c)}
			conns = append(conns, ec)
			if err := c.SetReadDeadline(time.Now().Add(timeout)); err != nil {
				return err
			}
			line, err := ec.r.ReadString('\n')
			if err != nil {
				return fmt.Errorf("greeting: %w", err)
			}
			a, err := parseAnswer(strings.TrimSpace(line))
			if err != nil {
				return err
			}
			ec.backend = a.backend
		}
		return nil
	})
	return conns, err
}

// requireEcho sends a line on every connection at once and fails t unless
// each one echoes it.
func requireEcho(t *testing.T, conns []*echoConn) {
	t.Helper()
	errs := make([]error, len(conns))
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Go(func() {
			want := fmt.Sprintf("line %d\n", i)
			if err := c.SetDeadline(time.Now().Add(timeout)); err != nil {
				errs[i] = err
				return
			}
			if _, err := io.WriteString(c, want); err != nil {
				errs[i] = err
				return
			}
			if got, err := c.r.ReadString('\n'); err != nil || got != want {
				errs[i] = fmt.Errorf("echo %q, %v; want %q", got, err, want)
			}
		})
	}
	wg.Wait()
	failed := 0
	for i, err := range errs {
		if err != nil {
			failed++
			t.Errorf("connection %d to backend %d: %v", i, conns[i].backend, err)
		}
	}
	if failed > 0 {
		t.Fatalf("%d of %d connections broke", failed, len(conns))
	}
}

// count is how many of conns reached backend.
func count(conns []*echoConn, backend int) int {
	n := 0
	for _, c := range conns {
		if c.backend == backend {
			n++
		}
	}
	return n
}
