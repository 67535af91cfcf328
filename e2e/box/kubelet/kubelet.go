// Package kubelet is the process kubelet of Knative in a box: it makes one
// machine a Kubernetes Node whose pods are plain processes.
//
// It registers a Node and renews its Lease, binds every unscheduled pod to
// that Node (the box has no scheduler), and runs each pod in a network
// namespace of its own with an address on the box's segment (boxnet). Each
// container is a local binary chosen by its image (Config.Images), started
// with the pod's environment: values, $(VAR) references, fieldRefs,
// resourceFieldRefs, ConfigMap and Secret keys, envFrom. It runs httpGet and
// tcpSocket readiness probes and preStop httpGet hooks, restarts exited
// containers per the restart policy, writes the pod's status, and on
// deletion runs the preStop hooks, sends SIGTERM, waits out the grace
// period, sends SIGKILL, removes the namespace and deletes the pod. Logs
// are served to the apiserver (`kubectl logs`, pods/log) on the Node's
// kubelet port.
//
// What a container runtime gives and this does not: images (a binary runs
// on the host's filesystem), mounts (an emptyDir is a per-pod directory;
// a container finds it where its env names the mountPath, e.g.
// WORKSPACE=/workspace, rewritten to the directory), users and
// capabilities (containers run as the kubelet's user), resource limits,
// liveness and startup probes, exec and gRPC probes, init containers and
// other volume types (a pod using them fails with a clear reason). One
// deliberate difference: until a container is first ready it is probed
// every FastProbe instead of every periodSeconds, so that the box's figures
// show Knative's and lap's cost rather than a probe period's phase.
package kubelet

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"runtime"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/retry"

	"lap.dev/lap/e2e/box/boxnet"
)

// Version is the kubelet version the Node reports: the apiserver's.
const Version = "v1.34.4"

// leaseSeconds is the Node Lease's duration; it is renewed every quarter.
const leaseSeconds = 40

// Config configures a Kubelet.
type Config struct {
	Client kubernetes.Interface
	// NodeName names the Node; "" = "box".
	NodeName string
	// Net is the box's network: pods get namespaces on it, and the Node's
	// address is its HostIP.
	Net *boxnet.Net
	// Images maps an image's repository (without tag or digest, e.g.
	// "box.local/lap-harness") to the binary that runs as its container.
	Images map[string]string
	// Dir holds each pod's directory: logs and emptyDir volumes.
	Dir string
	// Log receives the kubelet's own events.
	Log *slog.Logger
	// FastProbe is how often a container not yet ready is probed; 0 =
	// 100ms.
	FastProbe time.Duration
	// TeardownGrace bounds each container's grace period when Stop tears
	// the node down; 0 = 2s.
	TeardownGrace time.Duration
}

// Kubelet runs the pods bound to its Node.
type Kubelet struct {
	cfg    Config
	client kubernetes.Interface
	log    *slog.Logger
	name   string
	hostIP string
	port   int

	server  *http.Server
	factory informers.SharedInformerFactory
	lister  cacheGetter
	cancel  context.CancelFunc
	wg      sync.WaitGroup

	mu      sync.Mutex
	pods    map[types.UID]*podWorker
	binding map[types.UID]bool
	stopped bool
}

// cacheGetter finds a pod in the informer's cache.
type cacheGetter interface {
	GetByKey(key string) (any, bool, error)
}

// Start registers the Node and starts running its pods.
func Start(ctx context.Context, cfg Config) (*Kubelet, error) {
	if cfg.NodeName == "" {
		cfg.NodeName = "box"
	}
	if cfg.FastProbe == 0 {
		cfg.FastProbe = 100 * time.Millisecond
	}
	if cfg.TeardownGrace == 0 {
		cfg.TeardownGrace = 2 * time.Second
	}
	k := &Kubelet{
		cfg:     cfg,
		client:  cfg.Client,
		log:     cfg.Log.With("component", "kubelet"),
		name:    cfg.NodeName,
		hostIP:  cfg.Net.HostIP.String(),
		pods:    map[types.UID]*podWorker{},
		binding: map[types.UID]bool{},
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(k.hostIP, "0"))
	if err != nil {
		return nil, fmt.Errorf("kubelet listen: %w", err)
	}
	k.port = ln.Addr().(*net.TCPAddr).Port
	cert, err := selfSigned(k.hostIP)
	if err != nil {
		ln.Close()
		return nil, err
	}
	k.server = &http.Server{
		Handler:           k.logsHandler(),
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		ReadHeaderTimeout: 10 * time.Second,
	}
	go func() { _ = k.server.ServeTLS(ln, "", "") }()

	if err := k.registerNode(ctx); err != nil {
		k.server.Close()
		return nil, err
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	k.cancel = cancel
	k.wg.Add(1)
	go func() {
		defer k.wg.Done()
		k.heartbeat(runCtx)
	}()

	k.factory = informers.NewSharedInformerFactory(k.client, 0)
	podInformer := k.factory.Core().V1().Pods().Informer()
	k.lister = podInformer.GetStore()
	_, err = podInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { k.sync(runCtx, o) },
		UpdateFunc: func(_, o any) { k.sync(runCtx, o) },
		DeleteFunc: func(o any) { k.forget(o) },
	})
	if err != nil {
		cancel()
		k.server.Close()
		return nil, err
	}
	k.factory.Start(runCtx.Done())
	for typ, ok := range k.factory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			cancel()
			k.server.Close()
			return nil, fmt.Errorf("kubelet: watch %v: %w", typ, context.Cause(ctx))
		}
	}
	return k, nil
}

// NodeName is the Node the kubelet registered.
func (k *Kubelet) NodeName() string { return k.name }

// Pod describes a pod the kubelet runs, for measurements.
type Pod struct {
	Namespace, Name string
	IP              string
	// Pids are the running containers' processes.
	Pids []int
}

// Pods lists the pods the kubelet runs now.
func (k *Kubelet) Pods() []Pod {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := make([]Pod, 0, len(k.pods))
	for _, w := range k.pods {
		out = append(out, w.info())
	}
	return out
}

// sync reacts to a pod's add or update.
func (k *Kubelet) sync(ctx context.Context, o any) {
	pod, ok := o.(*corev1.Pod)
	if !ok {
		return
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.stopped {
		return
	}
	switch {
	case pod.Spec.NodeName == "":
		if pod.DeletionTimestamp == nil && !k.binding[pod.UID] {
			k.binding[pod.UID] = true
			k.wg.Add(1)
			go func() {
				defer k.wg.Done()
				k.bind(ctx, pod)
			}()
		}
	case pod.Spec.NodeName != k.name:
	default:
		delete(k.binding, pod.UID)
		w := k.pods[pod.UID]
		switch {
		case w != nil && pod.DeletionTimestamp != nil:
			w.terminate(gracePeriod(pod))
		case w != nil:
		case pod.DeletionTimestamp != nil, pod.Status.Phase == corev1.PodSucceeded, pod.Status.Phase == corev1.PodFailed:
			// Not ours to run: a pod that ended, or one deleted before it
			// started (or by a kubelet before this one). Finish deletions.
			if pod.DeletionTimestamp != nil {
				k.wg.Add(1)
				go func() {
					defer k.wg.Done()
					k.finishDelete(ctx, pod)
				}()
			}
		default:
			w := newPodWorker(k, pod)
			k.pods[pod.UID] = w
			k.wg.Add(1)
			go func() {
				defer k.wg.Done()
				w.run(ctx)
				k.mu.Lock()
				delete(k.pods, pod.UID)
				k.mu.Unlock()
			}()
		}
	}
}

// forget reacts to a pod removed from the API without the kubelet
// (a forced delete): its processes are killed at once.
func (k *Kubelet) forget(o any) {
	if t, ok := o.(cache.DeletedFinalStateUnknown); ok {
		o = t.Obj
	}
	pod, ok := o.(*corev1.Pod)
	if !ok {
		return
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	delete(k.binding, pod.UID)
	if w := k.pods[pod.UID]; w != nil {
		w.terminate(0)
	}
}

func gracePeriod(pod *corev1.Pod) int64 {
	switch {
	case pod.DeletionGracePeriodSeconds != nil:
		return *pod.DeletionGracePeriodSeconds
	case pod.Spec.TerminationGracePeriodSeconds != nil:
		return *pod.Spec.TerminationGracePeriodSeconds
	}
	return corev1.DefaultTerminationGracePeriodSeconds
}

// bind assigns an unscheduled pod to the Node, as a scheduler would.
func (k *Kubelet) bind(ctx context.Context, pod *corev1.Pod) {
	b := &corev1.Binding{
		ObjectMeta: metav1.ObjectMeta{Name: pod.Name, Namespace: pod.Namespace, UID: pod.UID},
		Target:     corev1.ObjectReference{Kind: "Node", Name: k.name},
	}
	err := k.client.CoreV1().Pods(pod.Namespace).Bind(ctx, b, metav1.CreateOptions{})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) && ctx.Err() == nil {
		k.log.Warn("bind pod", "pod", pod.Namespace+"/"+pod.Name, "err", err)
		k.mu.Lock()
		delete(k.binding, pod.UID) // the next update retries
		k.mu.Unlock()
	}
}

// finishDelete removes a deleting pod that runs nothing (any more) here,
// retrying what may pass: nothing else would bring the pod back to us.
func (k *Kubelet) finishDelete(ctx context.Context, pod *corev1.Pod) {
	zero := int64(0)
	gone := func(err error) bool { return apierrors.IsNotFound(err) || apierrors.IsConflict(err) }
	err := retry.OnError(retry.DefaultBackoff, func(err error) bool { return !gone(err) && ctx.Err() == nil }, func() error {
		return k.client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{
			GracePeriodSeconds: &zero,
			Preconditions:      &metav1.Preconditions{UID: &pod.UID},
		})
	})
	if err != nil && !gone(err) && ctx.Err() == nil {
		k.log.Warn("delete pod", "pod", pod.Namespace+"/"+pod.Name, "err", err)
	}
}

// Stop stops every pod (each container gets at most TeardownGrace),
// removes their namespaces, and stops the kubelet. The Node stays in the
// API: the box's apiserver goes away with it.
func (k *Kubelet) Stop() {
	k.mu.Lock()
	k.stopped = true
	for _, w := range k.pods {
		w.teardown()
	}
	k.mu.Unlock()
	k.cancel()
	k.wg.Wait()
	k.factory.Shutdown()
	_ = k.server.Close()
}

func (k *Kubelet) registerNode(ctx context.Context) error {
	nodes := k.client.CoreV1().Nodes()
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name: k.name,
			Labels: map[string]string{
				corev1.LabelHostname:   k.name,
				corev1.LabelOSStable:   runtime.GOOS,
				corev1.LabelArchStable: runtime.GOARCH,
			},
		},
	}
	cur, err := nodes.Get(ctx, k.name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		if cur, err = nodes.Create(ctx, node, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("register node %s: %w", k.name, err)
		}
	case err != nil:
		return fmt.Errorf("register node %s: %w", k.name, err)
	}
	cur.Status = k.nodeStatus(cur.Status)
	if _, err := nodes.UpdateStatus(ctx, cur, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("node %s status: %w", k.name, err)
	}
	return k.renewLease(ctx)
}

// nodeStatus is the Node's status: Ready, its address and its kubelet
// port, and this machine's CPUs and memory as capacity.
func (k *Kubelet) nodeStatus(old corev1.NodeStatus) corev1.NodeStatus {
	now := metav1.Now()
	capacity := corev1.ResourceList{
		corev1.ResourceCPU:    *resource.NewQuantity(int64(runtime.NumCPU()), resource.DecimalSI),
		corev1.ResourceMemory: *resource.NewQuantity(memTotal(), resource.BinarySI),
		corev1.ResourcePods:   *resource.NewQuantity(1000, resource.DecimalSI),
	}
	cond := func(t corev1.NodeConditionType, s corev1.ConditionStatus, reason, msg string) corev1.NodeCondition {
		c := corev1.NodeCondition{Type: t, Status: s, Reason: reason, Message: msg, LastHeartbeatTime: now, LastTransitionTime: now}
		for _, o := range old.Conditions {
			if o.Type == t && o.Status == s {
				c.LastTransitionTime = o.LastTransitionTime
			}
		}
		return c
	}
	return corev1.NodeStatus{
		Capacity:    capacity,
		Allocatable: capacity,
		Phase:       corev1.NodeRunning,
		Conditions: []corev1.NodeCondition{
			cond(corev1.NodeMemoryPressure, corev1.ConditionFalse, "KubeletHasSufficientMemory", "box kubelet"),
			cond(corev1.NodeDiskPressure, corev1.ConditionFalse, "KubeletHasNoDiskPressure", "box kubelet"),
			cond(corev1.NodePIDPressure, corev1.ConditionFalse, "KubeletHasSufficientPID", "box kubelet"),
			cond(corev1.NodeReady, corev1.ConditionTrue, "KubeletReady", "box kubelet is posting ready status"),
		},
		// Only the InternalIP: the apiserver prefers a Hostname address,
		// which nothing here resolves.
		Addresses:       []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: k.hostIP}},
		DaemonEndpoints: corev1.NodeDaemonEndpoints{KubeletEndpoint: corev1.DaemonEndpoint{Port: int32(k.port)}},
		NodeInfo: corev1.NodeSystemInfo{
			KubeletVersion:          Version,
			OperatingSystem:         runtime.GOOS,
			Architecture:            runtime.GOARCH,
			ContainerRuntimeVersion: "box://processes",
		},
	}
}

// heartbeat renews the Lease every quarter of its duration and the
// Node's status every minute, as a kubelet does, so the node lifecycle
// controller never marks the Node unreachable.
func (k *Kubelet) heartbeat(ctx context.Context) {
	lease := time.NewTicker(leaseSeconds * time.Second / 4)
	defer lease.Stop()
	status := time.NewTicker(time.Minute)
	defer status.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-lease.C:
			if err := k.renewLease(ctx); err != nil && ctx.Err() == nil {
				k.log.Warn("renew node lease", "err", err)
			}
		case <-status.C:
			node, err := k.client.CoreV1().Nodes().Get(ctx, k.name, metav1.GetOptions{})
			if err == nil {
				node.Status = k.nodeStatus(node.Status)
				_, err = k.client.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{})
			}
			if err != nil && ctx.Err() == nil {
				k.log.Warn("update node status", "err", err)
			}
		}
	}
}

func (k *Kubelet) renewLease(ctx context.Context) error {
	leases := k.client.CoordinationV1().Leases(corev1.NamespaceNodeLease)
	now := metav1.NewMicroTime(time.Now())
	cur, err := leases.Get(ctx, k.name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		_, err = leases.Create(ctx, &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Name: k.name, Namespace: corev1.NamespaceNodeLease},
			Spec: coordinationv1.LeaseSpec{
				HolderIdentity:       &k.name,
				LeaseDurationSeconds: ptr[int32](leaseSeconds),
				RenewTime:            &now,
			},
		}, metav1.CreateOptions{})
		return err
	}
	if err != nil {
		return err
	}
	cur.Spec.HolderIdentity = &k.name
	cur.Spec.LeaseDurationSeconds = ptr[int32](leaseSeconds)
	cur.Spec.RenewTime = &now
	_, err = leases.Update(ctx, cur, metav1.UpdateOptions{})
	return err
}

// selfSigned makes the kubelet's serving certificate; the apiserver, given
// no kubelet CA, does not verify it.
func selfSigned(ip string) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "box-kubelet"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.ParseIP(ip)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

func ptr[T any](v T) *T { return &v }
