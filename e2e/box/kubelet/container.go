package kubelet

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"lap.dev/lap/e2e/box/proc"
)

// Restart back-off: doubled after each exit, reset after a long run.
const (
	backoffStart = time.Second
	backoffMax   = 30 * time.Second
	backoffReset = time.Minute
)

// container is one container of a pod and its process.
type container struct {
	w    *podWorker
	spec corev1.Container

	mu        sync.Mutex
	proc      *proc.Process
	binary    string
	state     corev1.ContainerState
	last      corev1.ContainerState
	restarts  int32
	ready     bool
	everReady bool
}

func (c *container) setWaiting(reason, msg string) {
	c.mu.Lock()
	c.state = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason, Message: msg}}
	c.ready = false
	c.mu.Unlock()
	c.w.markDirty()
}

// willRestart reports whether the restart policy restarts a container
// that exited with code.
func (c *container) willRestart(code int32) bool {
	switch c.w.pod.Spec.RestartPolicy {
	case corev1.RestartPolicyNever:
		return false
	case corev1.RestartPolicyOnFailure:
		return code != 0
	}
	return true
}

// supervise runs the container until the pod stops: it starts the
// process, probes it, and restarts it with back-off when it exits.
func (c *container) supervise(ctx context.Context) {
	backoff := backoffStart
	for !c.w.terminating() {
		p, err := c.start(ctx)
		if err != nil {
			if !c.wait(backoff) {
				return
			}
			backoff = min(2*backoff, backoffMax)
			continue
		}
		if c.w.terminating() {
			// The pod began to stop while this run started: stopContainers
			// may have looked before there was a process to stop.
			c.stop()
		}
		started := time.Now()
		probeCtx, cancel := context.WithCancel(ctx)
		probed := make(chan struct{})
		go func() {
			defer close(probed)
			c.probe(probeCtx, p)
		}()
		<-p.Done()
		cancel()
		<-probed
		code := int32(p.ExitCode())
		c.mu.Lock()
		c.ready = false
		c.state = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
			ExitCode:    code,
			Reason:      exitReason(code),
			StartedAt:   metav1.NewTime(started),
			FinishedAt:  metav1.Now(),
			ContainerID: c.containerID(p),
		}}
		c.mu.Unlock()
		c.w.markDirty()
		if c.w.terminating() || !c.willRestart(code) {
			return
		}
		c.w.log.Info("container exited, restarting", "container", c.spec.Name, "code", code, "backoff", backoff)
		if time.Since(started) > backoffReset {
			backoff = backoffStart
		}
		c.mu.Lock()
		c.restarts++
		c.last = c.state
		c.state = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{
			Reason:  "CrashLoopBackOff",
			Message: fmt.Sprintf("back-off %s restarting failed container %s", backoff, c.spec.Name),
		}}
		c.mu.Unlock()
		c.w.markDirty()
		if !c.wait(backoff) {
			return
		}
		backoff = min(2*backoff, backoffMax)
	}
}

// wait waits d, or less if the pod stops; it reports whether to go on.
func (c *container) wait(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-c.w.termCh:
		return false
	case <-t.C:
		return true
	}
}

func exitReason(code int32) string {
	if code == 0 {
		return "Completed"
	}
	return "Error"
}

// start resolves the container's binary and environment and starts it;
// a failure is recorded as the container's waiting state.
func (c *container) start(ctx context.Context) (*proc.Process, error) {
	bin, err := c.resolveImage()
	if err != nil {
		c.setWaiting("ErrImagePull", err.Error())
		return nil, err
	}
	env, err := c.environment(ctx)
	if err != nil {
		c.setWaiting("CreateContainerConfigError", err.Error())
		return nil, err
	}
	dir := filepath.Join(c.w.dir, "containers", c.spec.Name)
	if c.spec.WorkingDir != "" {
		dir = c.mapPath(c.spec.WorkingDir)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		c.setWaiting("CreateContainerError", err.Error())
		return nil, err
	}
	lookup := envLookup(env)
	argv := []string{bin}
	for _, a := range c.spec.Args {
		argv = append(argv, expand(a, lookup))
	}
	p, err := proc.Start(proc.Spec{
		Argv:  argv,
		Env:   env,
		Dir:   dir,
		Netns: c.w.netns(),
		Slot:  c.w.k.cfg.Net.Slot,
		Log:   c.w.logPath(c.spec.Name),
	})
	if err != nil {
		c.setWaiting("CreateContainerError", err.Error())
		return nil, err
	}
	c.mu.Lock()
	c.proc, c.binary = p, bin
	c.ready = false
	c.everReady = false
	c.state = corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.Now()}}
	c.mu.Unlock()
	c.w.markDirty()
	return p, nil
}

// resolveImage finds the binary of the container's image: the image's
// repository, without tag or digest, is looked up in Config.Images.
func (c *container) resolveImage() (string, error) {
	repo := c.spec.Image
	if i := strings.Index(repo, "@"); i >= 0 {
		repo = repo[:i]
	}
	if i := strings.LastIndex(repo, ":"); i > strings.LastIndex(repo, "/") {
		repo = repo[:i]
	}
	bin, ok := c.w.k.cfg.Images[repo]
	if !ok {
		return "", fmt.Errorf("image %s: repository %s is not in the box's image map", c.spec.Image, repo)
	}
	if _, err := os.Stat(bin); err != nil {
		return "", fmt.Errorf("image %s: binary %s: %w", c.spec.Image, bin, err)
	}
	return bin, nil
}

func (c *container) containerID(p *proc.Process) string {
	return "box://" + strconv.Itoa(p.Pid())
}

func (c *container) pid() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.proc == nil {
		return 0
	}
	if _, exited := c.proc.Exited(); exited {
		return 0
	}
	return c.proc.Pid()
}

// stop runs the preStop hook (unless tearing down), then SIGTERM, then
// SIGKILL once the pod's grace period has run out.
func (c *container) stop() {
	c.mu.Lock()
	p := c.proc
	c.ready = false
	c.mu.Unlock()
	if p == nil {
		return
	}
	if _, exited := p.Exited(); exited {
		return
	}
	if h := c.spec.Lifecycle; h != nil && h.PreStop != nil && !c.w.isFast() {
		c.preStop(h.PreStop, p)
	}
	p.Signal(syscall.SIGTERM)
	for {
		left := time.Until(c.w.graceDeadline())
		if left <= 0 {
			p.Kill()
			return
		}
		// Re-read the deadline now and then: a forced delete shortens it.
		t := time.NewTimer(min(left, 200*time.Millisecond))
		select {
		case <-p.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// preStop runs a preStop hook, bounded by the grace period.
func (c *container) preStop(h *corev1.LifecycleHandler, p *proc.Process) {
	ctx, cancel := context.WithDeadline(context.Background(), c.w.graceDeadline())
	defer cancel()
	switch {
	case h.HTTPGet != nil:
		if err := c.httpGet(ctx, h.HTTPGet, false); err != nil {
			c.w.log.Info("preStop hook", "container", c.spec.Name, "err", err)
		}
	case h.Sleep != nil:
		t := time.NewTimer(time.Duration(h.Sleep.Seconds) * time.Second)
		defer t.Stop()
		select {
		case <-ctx.Done():
		case <-t.C:
		case <-p.Done():
		}
	}
}

// status is the container's status for the pod's.
func (c *container) status() corev1.ContainerStatus {
	c.mu.Lock()
	defer c.mu.Unlock()
	started := c.state.Running != nil
	cs := corev1.ContainerStatus{
		Name:                 c.spec.Name,
		State:                *c.state.DeepCopy(),
		LastTerminationState: *c.last.DeepCopy(),
		Ready:                c.ready && started,
		RestartCount:         c.restarts,
		Image:                c.spec.Image,
		ImageID:              "box://" + c.binary,
		Started:              &started,
	}
	if c.state.Running == nil && c.state.Waiting == nil && c.state.Terminated == nil {
		cs.State.Waiting = &corev1.ContainerStateWaiting{Reason: "ContainerCreating"}
	}
	if c.proc != nil && (c.state.Running != nil || c.state.Terminated != nil) {
		cs.ContainerID = c.containerID(c.proc)
	}
	if cs.LastTerminationState.Terminated == nil {
		cs.LastTerminationState = corev1.ContainerState{}
	}
	return cs
}
