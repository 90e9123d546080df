package health

import (
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// These tests probe real servers on 127.0.0.1. They wait for events with
// generous deadlines and check timing only from below (timers never fire
// early), so a loaded machine makes them slower, not flaky.

const deadline = 10 * time.Second

// recorder collects events, and a log of what servers answered and what
// the manager reported, in the order it happened.
type recorder struct {
	events chan Event
	mu     sync.Mutex
	log    []string
}

func (r *recorder) add(s string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.log = append(r.log, s)
}

func (r *recorder) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return strings.Join(r.log, " ")
}

func (r *recorder) notify(e Event) {
	r.add(fmt.Sprintf("%s=%v", e.ID, e.Up))
	r.events <- e
}

// next returns the next event, which must be for id and reach state up.
func (r *recorder) next(t *testing.T, m *Manager, id string, up bool) Event {
	t.Helper()
	select {
	case e := <-r.events:
		if e.ID != id || e.Up != up {
			t.Fatalf("event %+v, want %s up=%v", e, id, up)
		}
		if got := m.State()[id]; got != up {
			t.Fatalf("after event %+v State()[%s] = %v", e, id, got)
		}
		return e
	case <-time.After(deadline):
		t.Fatalf("no event within %v, want %s up=%v; log: %s", deadline, id, up, r)
		return Event{}
	}
}

// newManager returns a manager that the test closes when it ends, checking
// that Close returns and leaves no prober goroutine behind.
func newManager(t *testing.T) (*Manager, *recorder) {
	rec := &recorder{events: make(chan Event, 1000)}
	m := NewManager(slog.New(slog.NewTextHandler(t.Output(), nil)), rec.notify)
	t.Cleanup(func() {
		closed := make(chan struct{})
		go func() {
			m.Close()
			close(closed)
		}()
		select {
		case <-closed:
		case <-time.After(deadline):
			t.Fatalf("Close did not return within %v", deadline)
		}
		waitProbers(t, 0)
	})
	return m, rec
}

// waitProbers waits until exactly want prober goroutines exist. It polls
// because a stopped prober's goroutine lingers a moment after signalling
// that it is done, and a started one may not have been scheduled yet; a
// leaked one stays and fails the test. Tests do not run in parallel, so
// every prober belongs to the current test.
func waitProbers(t *testing.T, want int) {
	t.Helper()
	var got int
	for start := time.Now(); time.Since(start) < deadline; time.Sleep(5 * time.Millisecond) {
		if got = probersRunning(); got == want {
			return
		}
	}
	t.Errorf("%d prober goroutines running, want %d", got, want)
}

func probersRunning() int {
	buf := make([]byte, 1<<16)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return strings.Count(string(buf[:n]), "health.(*prober).run(")
		}
		buf = make([]byte, 2*len(buf))
	}
}

// listenTCP accepts and closes connections on addr until the test ends or
// the listener is closed.
func listenTCP(t *testing.T, addr string) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return l
}

func addrPort(t *testing.T, a net.Addr) netip.AddrPort {
	t.Helper()
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		t.Fatal(err)
	}
	return ap
}

// closedPort returns a loopback address on which nothing listens.
func closedPort(t *testing.T) netip.AddrPort {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return addrPort(t, l.Addr())
}

func TestTCPDownAndUp(t *testing.T) {
	l := listenTCP(t, "127.0.0.1:0")
	addr := addrPort(t, l.Addr())
	check := Check{Type: "tcp", Interval: 30 * time.Millisecond, Timeout: 30 * time.Millisecond, Rise: 2, Fall: 3}
	m, rec := newManager(t)
	m.Set([]Target{{ID: "a", Addr: addr, Check: check, Up: true}})

	l.Close()
	closed := time.Now()
	e := rec.next(t, m, "a", false)
	if took, min := time.Since(closed), time.Duration(check.Fall-1)*check.Interval; took < min {
		t.Errorf("down %v after the listener closed, sooner than %d failures allow (%v)", took, check.Fall, min)
	}
	if want := "3 consecutive failures: dial tcp " + addr.String() + ": "; !strings.HasPrefix(e.Reason, want) {
		t.Errorf("reason %q, want prefix %q", e.Reason, want)
	}
	if e.Addr != addr {
		t.Errorf("event addr %v, want %v", e.Addr, addr)
	}

	listenTCP(t, addr.String())
	reopened := time.Now()
	e = rec.next(t, m, "a", true)
	if took, min := time.Since(reopened), time.Duration(check.Rise-1)*check.Interval; took < min {
		t.Errorf("up %v after the listener reopened, sooner than %d successes allow (%v)", took, check.Rise, min)
	}
	if e.Reason != "2 consecutive successes" {
		t.Errorf("reason %q, want %q", e.Reason, "2 consecutive successes")
	}
}

func TestHTTPStatus(t *testing.T) {
	m, rec := newManager(t)
	var status atomic.Int32
	status.Store(http.StatusInternalServerError)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		code := int(status.Load())
		rec.add(fmt.Sprint(code)) // before answering, so the log orders it before the client sees it
		w.WriteHeader(code)
	}))
	defer srv.Close()

	check := Check{Type: "http", Interval: 20 * time.Millisecond, Timeout: 20 * time.Millisecond, Rise: 2, Fall: 3}
	m.Set([]Target{{ID: "a", Addr: addrPort(t, srv.Listener.Addr()), Check: check, Up: true}})

	e := rec.next(t, m, "a", false)
	if !strings.Contains(e.Reason, "3 consecutive failures: GET ") || !strings.HasSuffix(e.Reason, ": status 500 Internal Server Error") {
		t.Errorf("reason %q, want 3 failures with status 500", e.Reason)
	}
	status.Store(http.StatusOK)
	e = rec.next(t, m, "a", true)
	if e.Reason != "2 consecutive successes" {
		t.Errorf("reason %q, want %q", e.Reason, "2 consecutive successes")
	}
	// Exactly Fall answers of 500 before down, exactly Rise of 200 before up.
	if want := regexp.MustCompile(`^(500 ){3}a=false (500 )*(200 ){2}a=true( 200)*$`); !want.MatchString(rec.String()) {
		t.Errorf("log %q does not match %v", rec, want)
	}
}

func TestHTTPRequest(t *testing.T) {
	m, rec := newManager(t)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		// r.Close: the probe asked for the connection to close, not to be kept alive.
		case r.UserAgent() != "portico-health/1" || !r.Close:
			http.Error(w, "unexpected probe", http.StatusBadRequest)
		case r.URL.Path == "/healthz":
		case r.URL.Path == "/moved":
			http.Redirect(w, r, "/nowhere", http.StatusFound)
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()

	addr := addrPort(t, srv.Listener.Addr())
	check := func(path string) Check {
		return Check{Type: "http", Path: path, Interval: 20 * time.Millisecond, Timeout: 20 * time.Millisecond, Rise: 2, Fall: 2}
	}
	m.Set([]Target{
		{ID: "healthz", Addr: addr, Check: check("/healthz")},
		{ID: "moved", Addr: addr, Check: check("/moved")}, // a 3xx is up; following it would reach a 404
		{ID: "root", Addr: addr, Check: check(""), Up: true},
	})

	for range 3 {
		select {
		case e := <-rec.events:
			switch {
			case e.ID == "healthz" && e.Up:
			case e.ID == "moved" && e.Up:
			case e.ID == "root" && !e.Up && strings.HasSuffix(e.Reason, `GET http://`+addr.String()+`/: status 404 Not Found`):
			default:
				t.Errorf("unexpected event %+v", e)
			}
		case <-time.After(deadline):
			t.Fatalf("no event within %v; log: %s", deadline, rec)
		}
	}
	if got, want := m.State(), map[string]bool{"healthz": true, "moved": true, "root": false}; !maps.Equal(got, want) {
		t.Errorf("State() = %v, want %v", got, want)
	}
}

func TestTimeoutIsFailure(t *testing.T) {
	// The server accepts and reads, but never answers.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(io.Discard, c) // until the prober gives up and closes
			}()
		}
	}()

	m, rec := newManager(t)
	check := Check{Type: "http", Interval: 30 * time.Millisecond, Timeout: 20 * time.Millisecond, Rise: 1, Fall: 2}
	m.Set([]Target{{ID: "a", Addr: addrPort(t, l.Addr()), Check: check, Up: true}})

	e := rec.next(t, m, "a", false)
	if !strings.HasPrefix(e.Reason, "2 consecutive failures: ") || !strings.HasSuffix(e.Reason, "context deadline exceeded") {
		t.Errorf("reason %q, want 2 failures by timeout", e.Reason)
	}
}

func TestSetKeepsUnchangedTargets(t *testing.T) {
	m, rec := newManager(t)
	addr := closedPort(t)
	check := Check{Type: "tcp", Interval: 20 * time.Millisecond, Timeout: 20 * time.Millisecond, Rise: 2, Fall: 3}
	targets := []Target{{ID: "a", Addr: addr, Check: check, Up: true}}

	// Setting the same target more often than it probes must not reset its
	// counters, or it would never collect 3 failures. Nor may Up reseed it.
	m.Set(targets)
	stop := time.After(deadline)
	var e Event
wait:
	for {
		select {
		case e = <-rec.events:
			break wait
		case <-stop:
			t.Fatalf("no event within %v while re-setting the same target", deadline)
		case <-time.After(5 * time.Millisecond):
			m.Set(targets)
		}
	}
	if e.ID != "a" || e.Up {
		t.Fatalf("event %+v, want a down", e)
	}
	m.Set(targets)
	if m.State()["a"] {
		t.Error("Set with an unchanged target reseeded it up")
	}

	// A changed check restarts the prober but keeps its state.
	targets[0].Check.Interval = 30 * time.Millisecond
	m.Set(targets)
	if m.State()["a"] {
		t.Error("Set with a changed check reseeded the target up")
	}
	waitProbers(t, 1)
	listenTCP(t, addr.String())
	rec.next(t, m, "a", true)
}

func TestSetRemovesTargets(t *testing.T) {
	m, rec := newManager(t)
	kept := listenTCP(t, "127.0.0.1:0")
	removed := listenTCP(t, "127.0.0.1:0")
	check := Check{Type: "tcp", Interval: 20 * time.Millisecond, Timeout: 20 * time.Millisecond, Rise: 1, Fall: 1}
	a := Target{ID: "a", Addr: addrPort(t, kept.Addr()), Check: check}
	m.Set([]Target{a, {ID: "b", Addr: addrPort(t, removed.Addr()), Check: check, Up: true}})
	rec.next(t, m, "a", true)

	m.Set([]Target{a})
	waitProbers(t, 1)
	if got := m.State(); len(got) != 1 || !got["a"] {
		t.Errorf("State() = %v, want only a up", got)
	}
	// b would go down on its next probe if it were still running.
	removed.Close()
	select {
	case e := <-rec.events:
		t.Errorf("event %+v after b was removed", e)
	case <-time.After(10 * check.Interval):
	}

	m.Set(nil)
	waitProbers(t, 0)
}

func TestSetSkipsInvalidTargets(t *testing.T) {
	addr := netip.MustParseAddrPort("127.0.0.1:1")
	ok := Check{Type: "tcp", Interval: time.Second, Timeout: time.Second, Rise: 1, Fall: 1}
	tests := []struct {
		name   string
		target Target
	}{
		{"no address", Target{Check: ok}},
		{"unknown type", Target{Addr: addr, Check: Check{Type: "udp", Interval: time.Second, Timeout: time.Second, Rise: 1, Fall: 1}}},
		{"no interval", Target{Addr: addr, Check: Check{Type: "tcp", Rise: 1, Fall: 1}}},
		{"timeout above interval", Target{Addr: addr, Check: Check{Type: "tcp", Interval: time.Second, Timeout: 2 * time.Second, Rise: 1, Fall: 1}}},
		{"relative path", Target{Addr: addr, Check: Check{Type: "http", Path: "healthz", Interval: time.Second, Timeout: time.Second, Rise: 1, Fall: 1}}},
		{"no rise", Target{Addr: addr, Check: Check{Type: "http", Interval: time.Second, Timeout: time.Second, Fall: 1}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, _ := newManager(t)
			tt.target.ID = "bad"
			m.Set([]Target{tt.target, {ID: "good", Addr: addr, Check: ok}})
			if got := m.State(); len(got) != 1 {
				t.Errorf("State() = %v, want only the valid target", got)
			}
		})
	}
}

func TestSetAfterCloseDoesNothing(t *testing.T) {
	m, _ := newManager(t)
	m.Close()
	m.Set([]Target{{ID: "a", Addr: netip.MustParseAddrPort("127.0.0.1:1"), Check: Check{Type: "tcp", Interval: time.Second, Timeout: time.Second, Rise: 1, Fall: 1}}})
	if got := m.State(); len(got) != 0 {
		t.Errorf("State() = %v after Close and Set, want empty", got)
	}
	waitProbers(t, 0)
}
