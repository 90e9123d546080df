package bgp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"testing"
)

// speakerEnv, when set, makes the test binary a speaker process instead of running tests:
// the lab tests start it in the appliance's network namespace (ip netns exec), because
// gobgp listens and connects from goroutines of its own, which a network namespace set
// on one thread of the test process would not reach. Its value is the path of the Unix
// socket on which the process serves its Speaker.
const speakerEnv = "PORTICO_BGP_TEST_SPEAKER"

func TestMain(m *testing.M) {
	if sock := os.Getenv(speakerEnv); sock != "" {
		if err := serveSpeaker(sock); err != nil {
			fmt.Fprintln(os.Stderr, "speaker:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// speakerState is what the speaker process reports.
type speakerState struct {
	Routes    []Learned
	Neighbors []NeighborState
}

// serveSpeaker runs a Speaker until SIGTERM and serves it on the Unix socket sock over
// HTTP: POST /config sets a Config (JSON), GET /state returns a speakerState (JSON). It
// logs to stderr.
func serveSpeaker(sock string) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("component", "bgp")
	sp := New(log, func() {})
	ran := make(chan error, 1)
	go func() { ran <- sp.Run(ctx) }()

	mux := http.NewServeMux()
	mux.HandleFunc("POST /config", func(w http.ResponseWriter, r *http.Request) {
		var c Config
		if err := json.NewDecoder(r.Body).Decode(&c); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if err := sp.Set(r.Context(), c); err != nil {
			http.Error(w, err.Error(), http.StatusUnprocessableEntity)
		}
	})
	mux.HandleFunc("GET /state", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(speakerState{Routes: sp.Routes(), Neighbors: sp.Neighbors()})
	})
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	err = <-ran
	return errors.Join(err, srv.Close())
}
