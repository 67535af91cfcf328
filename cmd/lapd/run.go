package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"lap.dev/lap/config"
	"lap.dev/lap/control"
	"lap.dev/lap/control/sandboxtoken"
	"lap.dev/lap/control/secrets"
	"lap.dev/lap/store"
)

// Exit codes.
const (
	exitOK     = 0
	exitFailed = 1
	exitConfig = 2 // a setting is missing or malformed
)

// dotenv is read from the working directory; the environment wins.
const dotenv = ".env"

const usage = `lapd — lap's control plane

Usage:
  lapd           serve the API (reads settings from the environment and .env)
  lapd init      create the master key in the data dir (once) and print it
  lapd --help    show this help and every setting

`

// run is lapd; main only supplies the process's environment and streams.
func run(ctx context.Context, args []string, lookup func(string) (string, bool), stdout, stderr io.Writer, backend backendFactory) int {
	cmd := ""
	if len(args) > 0 {
		cmd = args[0]
	}
	switch {
	case cmd == "-h" || cmd == "--help" || cmd == "help":
		fmt.Fprint(stdout, usage+config.Help())
		return exitOK
	case cmd == "init" && len(args) == 1:
		return initKey(lookup, stdout, stderr)
	case (cmd == "" || cmd == "serve") && len(args) <= 1:
		return serve(ctx, lookup, stderr, backend)
	}
	fmt.Fprintf(stderr, "lapd: unknown arguments %q\n\n%s", strings.Join(args, " "), usage)
	return exitConfig
}

// initKey makes sure the data dir holds a master key and prints it the one
// time it is created.
func initKey(lookup func(string) (string, bool), stdout, stderr io.Writer) int {
	_, keySet := lookup("MASTER_KEY")
	// Only the data dir matters here; a placeholder key lets the rest of
	// the configuration be validated as usual.
	cfg, err := config.Load(func(k string) (string, bool) {
		if k == "MASTER_KEY" && !keySet {
			return "placeholder-for-lapd-init", true
		}
		return lookup(k)
	}, dotenv)
	if err != nil {
		fmt.Fprintf(stderr, "lapd: configuration: %v\n", err)
		return exitConfig
	}
	key, created, err := config.InitMasterKey(cfg.DataDir)
	if err != nil {
		fmt.Fprintf(stderr, "lapd init: %v\n", err)
		return exitFailed
	}
	path := filepath.Join(cfg.DataDir, config.MasterKeyFile)
	switch {
	case keySet:
		fmt.Fprintf(stdout, "MASTER_KEY is set in the environment; lapd uses it (not %s).\n", path)
	case created:
		fmt.Fprintf(stdout, "Created the master key in %s. Use it as the API's bearer token (lap login asks for it):\n\n    %s\n\nIt is not printed again.\n", path, key)
	default:
		fmt.Fprintf(stdout, "The master key is in %s (not printed again).\n", path)
	}
	return exitOK
}

func serve(ctx context.Context, lookup func(string) (string, bool), stderr io.Writer, newBackend backendFactory) int {
	cfg, err := config.Load(lookup, dotenv)
	if err != nil {
		fmt.Fprintf(stderr, "lapd: configuration (see lapd --help):\n  %s\n", strings.ReplaceAll(err.Error(), "\n", "\n  "))
		return exitConfig
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: logLevel(cfg.LogLevel)}))
	if err := serveConfig(ctx, cfg, log, newBackend); err != nil {
		fmt.Fprintf(stderr, "lapd: %v\n", err)
		return exitFailed
	}
	return exitOK
}

// backendCloser is a backend with background work to end when lapd
// stops.
type backendCloser interface {
	Close(ctx context.Context) error
}

func serveConfig(ctx context.Context, cfg config.Config, log *slog.Logger, newBackend backendFactory) error {
	backend, err := newBackend(ctx, cfg, log)
	if err != nil {
		return err
	}
	if c, ok := backend.(backendCloser); ok {
		// Last, after the control plane stopped using it. The local
		// backend leaves its harnesses running here unless
		// LOCAL_STOP_ON_EXIT is set.
		defer func() {
			ctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
			defer cancel()
			if err := c.Close(ctx); err != nil {
				log.Error("close the sandbox backend", "err", err)
			}
		}()
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("create data dir: %w", err)
	}
	st, err := store.Open(filepath.Join(cfg.DataDir, store.FileName), store.Options{})
	if err != nil {
		return err
	}
	defer st.Close()
	key, err := secrets.LoadKey(cfg.EncryptionKey, cfg.DataDir)
	if err != nil {
		return err
	}
	box, err := secrets.New(key)
	if err != nil {
		return err
	}
	tokens := sandboxtoken.NewSigner(box.DeriveKey(secrets.SandboxTokenLabel))

	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen on LAP_LISTEN=%s: %w", cfg.Listen, err)
	}
	defer ln.Close()
	if strings.HasSuffix(cfg.SandboxGatewayURL, ":0/llm") {
		// Listening on port 0 picks a port; sandboxes need the real one.
		cfg.SandboxGatewayURL = "http://" + ln.Addr().String() + "/llm"
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	llm, err := gatewayGroup(cfg, st, tokens, reg, log)
	if err != nil {
		return err
	}
	srv, err := control.New(control.Options{
		Config:   cfg,
		Store:    st,
		Backend:  backend,
		Secrets:  box,
		Tokens:   tokens,
		Logger:   log,
		Registry: reg,
		Groups:   []control.RouteGroup{llm},
	})
	if err != nil {
		return err
	}
	if err := srv.Start(ctx); err != nil {
		return err
	}

	sigCtx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	log.Info("lapd listening", "addr", ln.Addr().String(), "backend", backend.Name(), "data_dir", cfg.DataDir)
	if cfg.UsesMockOnly() {
		log.Info("no LITELLM_API_BASE: new agents default to " + cfg.DefaultModel + ", the offline demo model answered by lapd itself")
	}

	select {
	case err := <-served:
		return fmt.Errorf("serve: %w", err)
	case <-sigCtx.Done():
	}
	log.Info("shutting down; running turns may finish", "bound", cfg.ShutdownTimeout)
	shutCtx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	err = srv.Shutdown(shutCtx)
	if cerr := st.Close(); cerr != nil {
		err = errors.Join(err, cerr)
	}
	if err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	log.Info("stopped")
	return nil
}

func logLevel(s string) slog.Level {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return slog.LevelInfo
	}
	return l
}
