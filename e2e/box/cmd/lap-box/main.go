// Command lap-box runs Knative in a box (package lap.dev/lap/e2e/box) by
// hand, for debugging: `make box-up` and `make box-down` call it.
//
//	lap-box up   [--dir DIR]   start a box in the background; print how to reach it
//	lap-box down [--dir DIR]   stop it and sweep whatever is left
//	lap-box run  [--dir DIR]   run a box in the foreground until SIGINT/SIGTERM
//	lap-box sweep              remove the leftovers of crashed boxes
//
// DIR (default .box in the repository) holds the box's state, its logs
// and box.json, which says where its parts are.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"lap.dev/lap/e2e/box"
	"lap.dev/lap/e2e/box/boxnet"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "lap-box:", err)
		os.Exit(1)
	}
}

// State is box.json: what a running box is and where to reach it.
type State struct {
	Pid        int    `json:"pid"`
	Slot       int    `json:"slot"`
	Kubeconfig string `json:"kubeconfig"`
	IngressURL string `json:"ingress_url"`
	HostIP     string `json:"host_ip"`
	Dir        string `json:"dir"`
	StartedIn  string `json:"started_in"`
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return errors.New("usage: lap-box up|down|run|sweep [--dir DIR]")
	}
	fs := flag.NewFlagSet("lap-box "+args[0], flag.ContinueOnError)
	dir := fs.String("dir", "", "the box's directory (default: .box in lap's repository)")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	if *dir == "" && args[0] != "sweep" {
		root, err := box.FindRoot()
		if err != nil {
			return err
		}
		*dir = filepath.Join(root, ".box")
	}
	switch args[0] {
	case "up":
		return up(ctx, *dir, stdout)
	case "down":
		return down(ctx, *dir, log)
	case "run":
		return foreground(ctx, *dir, log)
	case "sweep":
		return boxnet.SweepFree(ctx, log)
	}
	return fmt.Errorf("unknown command %q: want up, down, run or sweep", args[0])
}

func statePath(dir string) string { return filepath.Join(dir, "box.json") }

// up starts `lap-box run` detached and waits until it reports the box up.
func up(ctx context.Context, dir string, stdout io.Writer) error {
	if s, err := readState(dir); err == nil && alive(s.Pid) {
		printState(stdout, s)
		return nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	_ = os.Remove(statePath(dir))
	self, err := os.Executable()
	if err != nil {
		return err
	}
	logPath := filepath.Join(dir, "lap-box.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer logFile.Close()
	cmd := exec.Command(self, "run", "--dir", dir)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(6 * time.Minute)
	for {
		if s, err := readState(dir); err == nil {
			printState(stdout, s)
			return nil
		}
		select {
		case err := <-exited:
			tail, _ := os.ReadFile(logPath)
			return fmt.Errorf("the box did not start (%v):\n%s", err, tail)
		case <-deadline:
			return fmt.Errorf("the box did not start within 6 minutes; see %s", logPath)
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// foreground runs a box until ctx ends.
func foreground(ctx context.Context, dir string, log *slog.Logger) error {
	b, err := box.Start(ctx, box.Options{Dir: dir, Log: log})
	if err != nil {
		return err
	}
	s := State{
		Pid:        os.Getpid(),
		Slot:       b.Slot,
		Kubeconfig: b.Kubeconfig,
		IngressURL: b.IngressURL,
		HostIP:     b.HostIP.String(),
		Dir:        dir,
		StartedIn:  b.StartupTime().Round(time.Millisecond).String(),
	}
	data, _ := json.MarshalIndent(s, "", "  ")
	tmp := statePath(dir) + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err == nil {
		err = os.Rename(tmp, statePath(dir))
	}
	if err != nil {
		_ = b.Stop()
		return err
	}
	<-ctx.Done()
	log.Info("stopping the box")
	_ = os.Remove(statePath(dir))
	return b.Stop()
}

// down stops the box of dir and sweeps any leftovers.
func down(ctx context.Context, dir string, log *slog.Logger) error {
	s, err := readState(dir)
	if err == nil && alive(s.Pid) {
		_ = syscall.Kill(s.Pid, syscall.SIGTERM)
		// Not our child: poll until it is gone, SIGKILL after a while.
		tick := time.NewTicker(100 * time.Millisecond)
		deadline := time.After(2 * time.Minute)
	wait:
		for alive(s.Pid) {
			select {
			case <-tick.C:
			case <-deadline:
				_ = syscall.Kill(s.Pid, syscall.SIGKILL)
				break wait
			case <-ctx.Done():
				break wait
			}
		}
		tick.Stop()
	}
	if err := boxnet.SweepFree(ctx, log); err != nil {
		return err
	}
	return os.RemoveAll(dir)
}

func readState(dir string) (State, error) {
	var s State
	data, err := os.ReadFile(statePath(dir))
	if err != nil {
		return s, err
	}
	return s, json.Unmarshal(data, &s)
}

func alive(pid int) bool { return pid > 0 && syscall.Kill(pid, 0) == nil }

func printState(w io.Writer, s State) {
	fmt.Fprintf(w, `Knative in a box is up (slot %d, started in %s, pid %d)
  export KUBECONFIG=%s
  ingress:   %s   (e.g. curl -H 'Host: <ksvc>.<namespace>.svc.cluster.local' %s/)
  host:      %s   (listen here for servers that pods must reach)
  harness:   image %s runs bin/lap-harness
  logs:      %s/logs, %s/pods
  stop it:   make box-down
`, s.Slot, s.StartedIn, s.Pid, s.Kubeconfig, s.IngressURL, s.IngressURL, s.HostIP, box.HarnessImage, s.Dir, s.Dir)
}
