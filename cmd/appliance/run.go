package main

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"portico.dev/appliance/configs"
	"portico.dev/appliance/control"
	"portico.dev/appliance/control/bgp"
	"portico.dev/appliance/control/config"
	"portico.dev/appliance/control/health"
	"portico.dev/appliance/datapath/addr"
	"portico.dev/appliance/datapath/nft"
	"portico.dev/appliance/datapath/route"
	"portico.dev/appliance/mgmt/gnmi"
	"portico.dev/appliance/store"
)

func configsDefault() []byte { return configs.Default }

func runCmd(configPath *string) *cobra.Command {
	var cleanup bool
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the daemon in the foreground",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, data, src, err := loadConfig(*configPath)
			if err != nil {
				return printConfigErrors(err)
			}
			log := newLogger(cfg.Log)
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			return run(ctx, log, *configPath, cfg, data, src, cleanup)
		},
	}
	cmd.Flags().BoolVar(&cleanup, "cleanup", false, "on exit, remove the datapath (table and VIP addresses) instead of leaving it forwarding")
	return cmd
}

func newLogger(c config.Log) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(c.Level)) // validated already
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}

func run(ctx context.Context, log *slog.Logger, path string, cfg *config.Config, data []byte, src string, cleanup bool) error {
	log.Info("starting", "version", versionString(), "config", src)
	st, err := store.Open(cfg.Store)
	if err != nil {
		return err
	}
	defer st.Close()
	if err := recordRevision(st, data, "loaded from "+src); err != nil {
		return err
	}
	if err := route.ApplySysctls("/proc/sys", route.Sysctls); err != nil {
		return err
	}
	l4, err := nft.New(nft.Options{Log: log.With("component", "nft")})
	if err != nil {
		return err
	}
	defer l4.Close()
	addrs, err := addr.New(0)
	if err != nil {
		return err
	}
	defer addrs.Close()

	routes, err := route.NewTarget(route.Options{Log: log.With("component", "route")})
	if err != nil {
		return err
	}
	defer routes.Close()

	d := &control.Daemon{Log: log.With("component", "daemon"), Resync: control.DefaultResync}
	speaker := bgp.New(log.With("component", "bgp"), d.RoutesChanged)
	speakerCtx, stopSpeaker := context.WithCancel(context.Background())
	speakerDone := make(chan error, 1)
	go func() { speakerDone <- speaker.Run(speakerCtx) }()
	defer func() {
		stopSpeaker()
		if err := <-speakerDone; err != nil {
			log.Error("bgp speaker", "err", err)
		}
	}()
	d.Learned = speaker.RouteList
	rec := control.NewReconciler(control.Targets{L4: l4, Addresses: addrs, Routes: routes, BGP: speaker}, st, log.With("component", "reconcile"))
	d.Reconciler = rec
	// The routes the last run installed are in the kernel still: they stay
	// there while the sessions come back.
	stale, err := routes.Dump(ctx)
	if err != nil {
		return err
	}
	d.StaleRoutes, d.StaleFor = stale, staleFor(cfg.BGP)
	seed := map[string]bool{}
	if b, err := st.LoadApplied(); err == nil {
		// Re-apply the last state before anything else, so that a restart
		// forwards as before without waiting for checks, sessions or other
		// inputs.
		last, err := control.DecodeApplied(b)
		if err != nil {
			return err
		}
		last.Routes = route.NewList(stale)
		addrs.Adopt(last.Addresses())
		if err := rec.Apply(ctx, last); err != nil {
			log.Error("re-applying the last state failed", "err", err)
		}
		seed = last.Health()
	} else if !errors.Is(err, store.ErrNotFound) {
		return err
	}

	// The management server starts once the datapath holds the last
	// state, so that the first answers show what is forwarding.
	socket := cmp.Or(cfg.Management.GNMI.Socket, gnmi.DefaultSocket)
	gl, err := gnmi.ListenUnix(socket)
	if err != nil {
		return err
	}
	gs := gnmi.New(daemonState{speaker: speaker, rec: rec, l4: l4}, log.With("component", "gnmi"))
	gnmiDone := make(chan error, 1)
	go func() { gnmiDone <- gs.Serve(gl) }()
	defer func() {
		gs.Stop()
		if err := <-gnmiDone; err != nil {
			log.Error("gnmi", "err", err)
		}
	}()
	log.Info("gnmi serving", "socket", socket)

	hm := health.NewManager(log, d.Notify)
	defer hm.Close()
	d.Health = hm

	// Kubernetes: the watchers run until the daemon has stopped.
	if len(cfg.Kubernetes.Clusters) > 0 {
		cs, err := openClusters(cfg.Kubernetes, log, d.KubernetesChanged)
		if err != nil {
			return err
		}
		defer cs.close()
		if d.Kubernetes, err = kubeInputs(cfg, cs, st); err != nil {
			return err
		}
		kubeCtx, stopKube := context.WithCancel(context.Background())
		kubeDone := make(chan struct{})
		go func() { defer close(kubeDone); cs.run(kubeCtx, log) }()
		defer func() { stopKube(); <-kubeDone }()
	}

	reload := make(chan *config.Config)
	go watchReload(ctx, log, path, st, reload)
	if err := d.Run(ctx, cfg, seed, reload); err != nil {
		return err
	}
	if cleanup {
		// BGP off first: every session closes with a Cease notification, so that
		// upstream routers withdraw the VIPs at once instead of keeping them for the
		// graceful-restart time, as a stop without cleanup has them do.
		log.Info("cleanup: closing BGP sessions and removing the datapath")
		if err := speaker.Set(context.Background(), bgp.Config{}); err != nil {
			return err
		}
		if err := l4.Delete(context.Background()); err != nil {
			return err
		}
		if err := addrs.Set(context.Background(), nil); err != nil {
			return err
		}
		if err := routes.Set(context.Background(), nil); err != nil {
			return err
		}
		return st.SaveApplied(nil, nil, true)
	}
	log.Info("stopped; the datapath keeps forwarding")
	return nil
}

// staleFor is how long after a restart the routes the last run learned
// stay in the kernel while the sessions come back: the graceful-restart
// time when it is on, else long enough for sessions with tuned timers to
// re-establish and send their routes again.
func staleFor(c config.BGP) time.Duration {
	if c.GracefulRestart.Enabled {
		return c.GracefulRestart.RestartTime
	}
	return 15 * time.Second
}

// recordRevision stores the configuration as a new revision unless it is
// the latest one already (the first start records revision 1).
func recordRevision(st *store.Store, data []byte, msg string) error {
	latest, err := st.LatestRevision()
	if err == nil && bytes.Equal(latest.Config, data) {
		return nil
	}
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	_, err = st.AddRevision(store.Revision{Time: time.Now(), User: "system", Message: msg, Config: data})
	return err
}

// watchReload re-reads the configuration on SIGHUP. A configuration that
// fails to load or validate is refused with its reasons and the running one
// stays untouched.
func watchReload(ctx context.Context, log *slog.Logger, path string, st *store.Store, out chan<- *config.Config) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
		}
		cfg, data, src, err := loadConfig(path)
		if err != nil {
			log.Error("reload refused; the running configuration stays", "config", path, "err", fmt.Sprint(err))
			continue
		}
		if err := recordRevision(st, data, "reloaded from "+src); err != nil {
			log.Error("reload: recording the revision failed", "err", err)
			continue
		}
		log.Info("reload accepted", "config", src)
		select {
		case out <- cfg:
		case <-ctx.Done():
			return
		}
	}
}
