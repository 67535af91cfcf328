package kubelet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"

	"lap.dev/lap/e2e/box/boxnet"
)

// podWorker runs one pod from its start to its deletion.
type podWorker struct {
	k   *Kubelet
	pod *corev1.Pod // as first seen; a pod's spec does not change
	key string      // namespace/name
	dir string
	log *slog.Logger

	termCh   chan struct{} // closed when the pod is to stop
	termOnce sync.Once
	dirty    chan struct{} // a status change to write
	done     chan struct{} // closed when run returns

	mu         sync.Mutex
	ns         boxnet.Namespace
	hasNS      bool
	startTime  metav1.Time
	deadline   time.Time // of the grace period, once terminating
	fast       bool      // teardown: no preStop hooks
	containers []*container
}

func newPodWorker(k *Kubelet, pod *corev1.Pod) *podWorker {
	pod = pod.DeepCopy()
	w := &podWorker{
		k:         k,
		pod:       pod,
		key:       pod.Namespace + "/" + pod.Name,
		dir:       filepath.Join(k.cfg.Dir, pod.Namespace+"_"+pod.Name+"_"+string(pod.UID)[:8]),
		log:       k.log.With("pod", pod.Namespace+"/"+pod.Name),
		termCh:    make(chan struct{}),
		dirty:     make(chan struct{}, 1),
		done:      make(chan struct{}),
		startTime: metav1.Now(),
	}
	for i := range pod.Spec.Containers {
		w.containers = append(w.containers, &container{w: w, spec: pod.Spec.Containers[i]})
	}
	return w
}

// terminate starts the pod's stop with grace seconds for its containers;
// a later call can only shorten the grace period.
func (w *podWorker) terminate(grace int64) {
	w.mu.Lock()
	d := time.Now().Add(time.Duration(grace) * time.Second)
	if w.deadline.IsZero() || d.Before(w.deadline) {
		w.deadline = d
	}
	w.mu.Unlock()
	w.termOnce.Do(func() { close(w.termCh) })
}

// teardown stops the pod quickly, for the kubelet's own Stop: no hooks,
// at most TeardownGrace per container.
func (w *podWorker) teardown() {
	w.mu.Lock()
	w.fast = true
	w.mu.Unlock()
	w.terminate(int64(w.k.cfg.TeardownGrace / time.Second))
	w.mu.Lock()
	if d := time.Now().Add(w.k.cfg.TeardownGrace); d.Before(w.deadline) {
		w.deadline = d
	}
	w.mu.Unlock()
}

func (w *podWorker) terminating() bool {
	select {
	case <-w.termCh:
		return true
	default:
		return false
	}
}

func (w *podWorker) graceDeadline() time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.deadline
}

func (w *podWorker) markDirty() {
	select {
	case w.dirty <- struct{}{}:
	default:
	}
}

// run is the pod's life: its namespace, its containers, and on
// termination their stop, the namespace's removal and the pod's deletion.
func (w *podWorker) run(ctx context.Context) {
	defer close(w.done)
	go w.statusLoop(ctx)
	w.markDirty()

	if err := w.setup(ctx); err != nil {
		w.log.Warn("pod cannot run", "err", err)
		for _, c := range w.containers {
			c.setWaiting("CreateContainerError", err.Error())
		}
		w.markDirty()
	} else {
		var wg sync.WaitGroup
		for _, c := range w.containers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c.supervise(ctx)
			}()
		}
		<-w.termCh
		w.markDirty()
		w.stopContainers()
		wg.Wait()
	}
	<-w.termCh

	cleanupCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	w.mu.Lock()
	ns, hasNS := w.ns, w.hasNS
	w.mu.Unlock()
	if hasNS {
		if err := w.k.cfg.Net.RemoveNamespace(cleanupCtx, ns); err != nil {
			w.log.Warn("remove pod namespace", "err", err)
		}
	}
	// The volumes go with the pod; the logs stay for the box's report.
	if err := os.RemoveAll(filepath.Join(w.dir, "volumes")); err != nil {
		w.log.Warn("remove pod volumes", "err", err)
	}
	if !w.isFast() {
		w.k.finishDelete(cleanupCtx, w.pod)
	}
}

func (w *podWorker) isFast() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.fast
}

// setup checks what the box can run and gives the pod its namespace and
// volume directories.
func (w *podWorker) setup(ctx context.Context) error {
	if err := supported(w.pod); err != nil {
		return err
	}
	for _, v := range w.pod.Spec.Volumes {
		if err := os.MkdirAll(filepath.Join(w.dir, "volumes", v.Name), 0o777); err != nil {
			return err
		}
	}
	name := "p-" + string(w.pod.UID)[:8]
	ns, err := w.k.cfg.Net.AddNamespace(ctx, name, nil)
	if err != nil {
		return fmt.Errorf("pod network: %w", err)
	}
	w.mu.Lock()
	w.ns, w.hasNS = ns, true
	w.mu.Unlock()
	w.markDirty()
	return nil
}

// supported reports the first thing in the pod's spec the box cannot do.
func supported(pod *corev1.Pod) error {
	if len(pod.Spec.InitContainers) > 0 {
		return errors.New("the box kubelet does not run init containers")
	}
	for _, v := range pod.Spec.Volumes {
		if v.EmptyDir == nil {
			return fmt.Errorf("volume %s: the box kubelet supports emptyDir volumes only", v.Name)
		}
	}
	for _, c := range pod.Spec.Containers {
		if len(c.Command) > 0 {
			return fmt.Errorf("container %s: the box kubelet runs an image's binary, it cannot override its command", c.Name)
		}
		for _, p := range []*corev1.Probe{c.ReadinessProbe, c.LivenessProbe, c.StartupProbe} {
			if p != nil && p.HTTPGet == nil && p.TCPSocket == nil {
				return fmt.Errorf("container %s: the box kubelet runs httpGet and tcpSocket probes only", c.Name)
			}
		}
		if c.Lifecycle != nil && c.Lifecycle.PostStart != nil {
			return fmt.Errorf("container %s: the box kubelet runs no postStart hooks", c.Name)
		}
		if c.Lifecycle != nil && c.Lifecycle.PreStop != nil && c.Lifecycle.PreStop.HTTPGet == nil && c.Lifecycle.PreStop.Sleep == nil {
			return fmt.Errorf("container %s: the box kubelet runs httpGet and sleep preStop hooks only", c.Name)
		}
	}
	return nil
}

// stopContainers stops every container at once: its preStop hook, then
// SIGTERM, then SIGKILL at the grace period's end.
func (w *podWorker) stopContainers() {
	var wg sync.WaitGroup
	for _, c := range w.containers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.stop()
		}()
	}
	wg.Wait()
}

// statusLoop writes the pod's status after each change, until the pod's
// end.
func (w *podWorker) statusLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.dirty:
			w.writeStatus(ctx)
		case <-w.done:
			return
		}
	}
}

// writeStatus writes the current status unless the API has it already.
func (w *podWorker) writeStatus(ctx context.Context) {
	pods := w.k.client.CoreV1().Pods(w.pod.Namespace)
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		var cur *corev1.Pod
		if o, ok, _ := w.k.lister.GetByKey(w.key); ok {
			cur = o.(*corev1.Pod).DeepCopy()
		}
		if cur == nil || cur.UID != w.pod.UID {
			var err error
			if cur, err = pods.Get(ctx, w.pod.Name, metav1.GetOptions{}); err != nil {
				return err
			}
		}
		if cur.UID != w.pod.UID {
			return nil // a new pod of the same name
		}
		want := w.status(cur.Status)
		if equality.Semantic.DeepEqual(cur.Status, want) {
			return nil
		}
		cur.Status = want
		_, err := pods.UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		if apierrors.IsConflict(err) {
			// The cache is behind: read the pod itself next time.
			if fresh, gerr := pods.Get(ctx, w.pod.Name, metav1.GetOptions{}); gerr == nil && fresh.UID == w.pod.UID {
				fresh.Status = want
				_, err = pods.UpdateStatus(ctx, fresh, metav1.UpdateOptions{})
			}
		}
		return err
	})
	if err != nil && !apierrors.IsNotFound(err) && ctx.Err() == nil {
		w.log.Warn("write pod status", "err", err)
	}
}

// status is the pod's status as the kubelet sees it now, keeping the
// transition times of unchanged conditions and what only the apiserver
// sets.
func (w *podWorker) status(old corev1.PodStatus) corev1.PodStatus {
	w.mu.Lock()
	ns, hasNS := w.ns, w.hasNS
	start := w.startTime
	w.mu.Unlock()
	st := corev1.PodStatus{
		Phase:     corev1.PodPending,
		QOSClass:  old.QOSClass,
		HostIP:    w.k.hostIP,
		HostIPs:   []corev1.HostIP{{IP: w.k.hostIP}},
		StartTime: &start,
	}
	if old.StartTime != nil {
		st.StartTime = old.StartTime
	}
	if hasNS {
		st.PodIP = ns.IP.String()
		st.PodIPs = []corev1.PodIP{{IP: st.PodIP}}
	}
	allReady, anyRunning, allDone, allSucceeded := true, false, true, true
	for _, c := range w.containers {
		cs := c.status()
		st.ContainerStatuses = append(st.ContainerStatuses, cs)
		allReady = allReady && cs.Ready
		anyRunning = anyRunning || cs.State.Running != nil
		done := cs.State.Terminated != nil && !c.willRestart(cs.State.Terminated.ExitCode)
		allDone = allDone && done
		allSucceeded = allSucceeded && done && cs.State.Terminated.ExitCode == 0
	}
	switch {
	case anyRunning:
		st.Phase = corev1.PodRunning
	case allDone && allSucceeded:
		st.Phase = corev1.PodSucceeded
	case allDone:
		st.Phase = corev1.PodFailed
	}
	if w.terminating() {
		allReady = false
	}
	cond := func(t corev1.PodConditionType, ok bool) corev1.PodCondition {
		s := corev1.ConditionFalse
		if ok {
			s = corev1.ConditionTrue
		}
		c := corev1.PodCondition{Type: t, Status: s, LastTransitionTime: metav1.Now()}
		for _, o := range old.Conditions {
			if o.Type == t && o.Status == s {
				c.LastTransitionTime = o.LastTransitionTime
			}
		}
		return c
	}
	st.Conditions = []corev1.PodCondition{
		cond(corev1.PodReadyToStartContainers, hasNS),
		cond(corev1.PodInitialized, true),
		cond(corev1.ContainersReady, allReady),
		cond(corev1.PodReady, allReady),
		cond(corev1.PodScheduled, true),
	}
	return st
}

// info describes the pod for Kubelet.Pods.
func (w *podWorker) info() Pod {
	w.mu.Lock()
	defer w.mu.Unlock()
	p := Pod{Namespace: w.pod.Namespace, Name: w.pod.Name}
	if w.hasNS {
		p.IP = w.ns.IP.String()
	}
	for _, c := range w.containers {
		if pid := c.pid(); pid > 0 {
			p.Pids = append(p.Pids, pid)
		}
	}
	return p
}

// findContainer returns the pod's container of that name.
func (w *podWorker) findContainer(name string) *container {
	for _, c := range w.containers {
		if c.spec.Name == name {
			return c
		}
	}
	return nil
}

// podIP is the pod's address, "" before its namespace exists.
func (w *podWorker) podIP() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.hasNS {
		return ""
	}
	return w.ns.IP.String()
}

func (w *podWorker) netns() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.ns.Name
}

// logPath is where a container's output goes, across its restarts.
func (w *podWorker) logPath(container string) string {
	return filepath.Join(w.dir, "logs", strings.ReplaceAll(container, "/", "_")+".log")
}
