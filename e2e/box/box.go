// Package box is Knative in a box: Knative Serving's real control plane
// and data plane on one machine, as plain processes, for tests.
//
// Start brings up, in this order: a network of its own (boxnet: a /20 of
// 198.18.0.0/15 on a bridge in a namespace of its own, reached from the
// host by one veth); kube-apiserver with embedded etcd (bin/lap-kubeapi)
// listening on the box's host address; kube-controller-manager
// (bin/lap-kube-controller-manager: Deployments, ReplicaSets, Endpoints,
// garbage collection); a process kubelet (package kubelet: pods as
// processes, each in a network namespace of its own); Knative Serving's
// CRDs, ConfigMaps and webhook configurations from the modules'
// release files, with lap's patches (config/deploy/knative-patches) and
// short autoscaling windows; Knative Serving v0.42.2's webhook, controller,
// autoscaler and activator, built unmodified (bin/knative), each in a
// network namespace of its own where /etc/hosts answers the cluster names
// they dial; and a KIngress implementation (package ingress) on the host.
//
// Stop, or a test's cleanup through StartForTest, removes all of it: no
// process, namespace, veth or address stays behind, and a box that
// crashed is swept by the next one to start.
package box

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	netclient "knative.dev/networking/pkg/client/clientset/versioned"
	servingclient "knative.dev/serving/pkg/client/clientset/versioned"

	"lap.dev/lap/e2e/box/boxnet"
	"lap.dev/lap/e2e/box/ingress"
	"lap.dev/lap/e2e/box/kubelet"
	"lap.dev/lap/e2e/box/proc"
	"lap.dev/lap/e2e/kubeapitest"
)

// Images the box's kubelet knows. Their registry is in Knative's
// registries-skipping-tag-resolving, so Knative takes them as they are.
const (
	// HarnessImage runs bin/lap-harness: set HARNESS_IMAGE_LAP to it.
	HarnessImage = "box.local/lap-harness:dev"
	// QueueImage runs Knative's queue-proxy (bin/knative/queue); the box's
	// config-deployment names it as the queue sidecar.
	QueueImage = "box.local/queue-proxy:v0.42.2"
	// IngressDomain is the internal domain of the ingress's load balancer.
	IngressDomain = "box-ingress.knative-serving.svc.cluster.local"
)

// KeepEnv, when set in the environment, keeps a box's temporary
// directory (state and every log) after Stop, for debugging.
const KeepEnv = "LAP_BOX_KEEP"

// SystemNamespace is Knative Serving's namespace.
const SystemNamespace = "knative-serving"

// Options configure Start.
type Options struct {
	// Root is lap's repository, where bin/ and config/deploy are; "" =
	// found from the working directory.
	Root string
	// Dir holds the box's state and logs; "" = a temporary directory that
	// Stop removes.
	Dir string
	// Log receives the box's progress; nil = discarded.
	Log *slog.Logger
	// Images adds to the kubelet's image map (repository → binary).
	Images map[string]string
	// Config overrides keys of Knative's ConfigMaps in knative-serving, by
	// ConfigMap name, after lap's patches and the box's own settings.
	Config map[string]map[string]string
	// Tokens are extra users the apiserver authenticates (e.g. lapd's
	// ServiceAccount, to run lapd under its own RBAC).
	Tokens []kubeapitest.Token
	// APIServerArgs are extra kube-apiserver flags (e.g. an audit policy).
	APIServerArgs []string
	// Timeout bounds the start; 0 = five minutes.
	Timeout time.Duration
}

// Box is a running Knative in a box.
type Box struct {
	// Dir holds the state and the logs (logs/, pods/).
	Dir string
	// Kubeconfig is the admin kubeconfig; Config is the same as a client
	// config.
	Kubeconfig string
	Config     *rest.Config
	// HostIP is the host's address on the box's network: pods reach a
	// server of the host listening there (e.g. lapd's gateway).
	HostIP netip.Addr
	// IngressURL is where the ingress serves, on the host's loopback.
	IngressURL string
	// Slot is the box's slot; Env marks processes with it.
	Slot int
	// Kubelet runs the pods.
	Kubelet *kubelet.Kubelet
	// Steps are the start's steps and how long each took.
	Steps []Step

	root    string
	ownDir  bool
	compIPs map[string]netip.Addr
	log     *slog.Logger
	net     *boxnet.Net
	api     *kubeapitest.Server
	procs   []*component
	ingress *ingress.Ingress
	stopped bool
	mu      sync.Mutex
}

// Step is one step of the start.
type Step struct {
	Name string
	Took time.Duration
}

// Env is the environment entry that marks a process as the box's, so that
// Stop's leftover check and a later sweep find it. Add it to processes a
// test starts around the box (e.g. lapd).
func (b *Box) Env() string { return fmt.Sprintf("%s=%d", boxnet.SlotEnv, b.Slot) }

// Start brings a box up; on failure it leaves nothing behind and the
// error carries the tails of the logs.
func Start(ctx context.Context, opts Options) (*Box, error) {
	if opts.Timeout == 0 {
		opts.Timeout = 5 * time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()
	log := opts.Log
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	root := opts.Root
	if root == "" {
		var err error
		if root, err = FindRoot(); err != nil {
			return nil, err
		}
	}
	bins, err := binaries(root)
	if err != nil {
		return nil, err
	}
	b := &Box{root: root, log: log, Dir: opts.Dir}
	if b.Dir == "" {
		if b.Dir, err = os.MkdirTemp("", "lap-box-"); err != nil {
			return nil, err
		}
		b.ownDir = true
	}
	if err := b.start(ctx, opts, bins); err != nil {
		tails := b.LogTails(3000)
		_ = b.Stop()
		return nil, fmt.Errorf("start knative in a box: %w\n%s", err, tails)
	}
	return b, nil
}

// step times one step of the start and logs it.
func (b *Box) step(name string, f func() error) error {
	start := time.Now()
	err := f()
	took := time.Since(start)
	b.Steps = append(b.Steps, Step{Name: name, Took: took})
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	b.log.Info("box: "+name, "took", took.Round(time.Millisecond))
	return nil
}

func (b *Box) start(ctx context.Context, opts Options, bins binaryPaths) error {
	begin := time.Now()
	err := b.step("network", func() (err error) {
		b.net, err = boxnet.Open(ctx, b.log)
		if err == nil {
			b.Slot, b.HostIP = b.net.Slot, b.net.HostIP
		}
		return err
	})
	if err != nil {
		return err
	}
	err = b.step("kube-apiserver", func() (err error) {
		if err := os.MkdirAll(filepath.Join(b.Dir, "kubeapi"), 0o700); err != nil {
			return err
		}
		b.api, err = kubeapitest.Start(ctx, kubeapitest.Options{
			Binary:   bins.kubeapi,
			Dir:      filepath.Join(b.Dir, "kubeapi"),
			ListenIP: b.HostIP.String(),
			Env:      []string{b.Env()},
			Tokens:   opts.Tokens,
			Args:     opts.APIServerArgs,
		})
		if err != nil {
			return err
		}
		b.Kubeconfig, b.Config = b.api.Kubeconfig, b.api.Config
		// Knative's types still use v1 Endpoints; the warnings say so on
		// every call.
		b.Config.WarningHandler = rest.NoWarnings{}
		return nil
	})
	if err != nil {
		return err
	}
	kube, err := kubernetes.NewForConfig(b.Config)
	if err != nil {
		return err
	}
	err = b.step("kube-controller-manager", func() error { return b.startControllerManager(bins) })
	if err != nil {
		return err
	}
	err = b.step("kubelet", func() (err error) {
		images := map[string]string{
			repository(HarnessImage): bins.harness,
			repository(QueueImage):   bins.knative["queue"],
		}
		for k, v := range opts.Images {
			images[k] = v
		}
		b.Kubelet, err = kubelet.Start(ctx, kubelet.Config{
			Client: kube,
			Net:    b.net,
			Images: images,
			Dir:    filepath.Join(b.Dir, "pods"),
			Log:    b.log,
		})
		return err
	})
	if err != nil {
		return err
	}
	k := &knative{b: b, kube: kube, bins: bins, opts: opts}
	if err := k.install(ctx); err != nil {
		return err
	}
	err = b.step("ingress", func() error {
		nc, err := netclient.NewForConfig(b.Config)
		if err != nil {
			return err
		}
		b.ingress, err = ingress.Start(ctx, ingress.Config{
			Networking: nc,
			Kube:       kube,
			Listen:     "127.0.0.1:0",
			Domain:     IngressDomain,
			Log:        b.log,
		})
		if err == nil {
			b.IngressURL = b.ingress.URL
		}
		return err
	})
	if err != nil {
		return err
	}
	b.log.Info("box: up", "took", time.Since(begin).Round(time.Millisecond), "slot", b.Slot, "host", b.HostIP, "ingress", b.IngressURL, "dir", b.Dir)
	return nil
}

// ComponentIP is the address of one of Knative's components: "webhook",
// "controller", "autoscaler" or "activator".
func (b *Box) ComponentIP(name string) netip.Addr { return b.compIPs[name] }

// KubeconfigFor writes a kubeconfig for the user of one of
// Options.Tokens to path: the box's apiserver, its CA, that token.
func (b *Box) KubeconfigFor(token, path string) error {
	cfg, err := clientcmd.LoadFromFile(b.Kubeconfig)
	if err != nil {
		return err
	}
	for _, ai := range cfg.AuthInfos {
		ai.Token = token
	}
	return clientcmd.WriteToFile(*cfg, path)
}

// StartupTime is the sum of the start's steps.
func (b *Box) StartupTime() time.Duration {
	var d time.Duration
	for _, s := range b.Steps {
		d += s.Took
	}
	return d
}

// Serving returns a Knative Serving client for the box.
func (b *Box) Serving() servingclient.Interface { return servingclient.NewForConfigOrDie(b.Config) }

// Kube returns a Kubernetes client for the box.
func (b *Box) Kube() kubernetes.Interface { return kubernetes.NewForConfigOrDie(b.Config) }

// Stop tears the box down: the ingress, every pod (each container gets a
// short grace period), the Knative components, kube-controller-manager,
// the apiserver, the network, and Dir if Start created it. It is safe to
// call twice.
func (b *Box) Stop() error {
	b.mu.Lock()
	if b.stopped {
		b.mu.Unlock()
		return nil
	}
	b.stopped = true
	b.mu.Unlock()
	var errs []error
	if b.ingress != nil {
		b.ingress.Stop()
	}
	if b.Kubelet != nil {
		b.Kubelet.Stop()
	}
	var wg sync.WaitGroup
	for _, c := range b.procs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.p.Stop(5 * time.Second)
		}()
	}
	wg.Wait()
	if b.api != nil {
		errs = append(errs, b.api.Stop())
	}
	if b.net != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		errs = append(errs, b.net.Close(ctx))
		cancel()
	}
	if b.ownDir && os.Getenv(KeepEnv) == "" {
		errs = append(errs, os.RemoveAll(b.Dir))
	} else if b.ownDir {
		b.log.Info("box: kept its directory ("+KeepEnv+" is set)", "dir", b.Dir)
	}
	return errors.Join(errs...)
}

// Leftovers lists what of the box still exists on the machine after
// Stop: processes, network namespaces, veths, addresses. Empty means a
// clean teardown.
func (b *Box) Leftovers(ctx context.Context) ([]string, error) {
	return boxnet.Leftovers(ctx, b.Slot)
}

// LogTails returns the last n bytes of every log of the box — the
// apiserver, the components, every container of every pod — each under a
// header.
func (b *Box) LogTails(n int) string {
	var files []string
	_ = filepath.WalkDir(b.Dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(p, ".log") {
			files = append(files, p)
		}
		return nil
	})
	sort.Strings(files)
	var sb strings.Builder
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		if len(data) > n {
			data = data[len(data)-n:]
		}
		rel, _ := filepath.Rel(b.Dir, f)
		fmt.Fprintf(&sb, "===== %s (last %d bytes) =====\n%s\n", rel, len(data), data)
	}
	return sb.String()
}

// SkipInShortMode skips t under go test -short (make test-short): a box
// needs root and takes minutes to start, far more than the edit loop's
// quick tier allows. make test runs every box test; this is the only
// way they skip.
func SkipInShortMode(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("Knative in a box (root, minutes): skipped in -short mode (make test runs it)")
	}
}

// StartForTest starts a box for t and tears it down when t ends. When t
// has failed, the cleanup prints the tails of every log first. Either way
// it then fails t if anything of the box is left on the machine. It fails
// t, never skips it, when the machine cannot run a box (it skips only in
// -short mode).
func StartForTest(t testing.TB, opts Options) *Box {
	t.Helper()
	SkipInShortMode(t)
	if opts.Log == nil {
		opts.Log = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	b, err := Start(context.Background(), opts)
	if err != nil {
		t.Fatalf("%v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("knative in a box, logs:\n%s", b.LogTails(6000))
		}
		if err := b.Stop(); err != nil {
			t.Errorf("stop knative in a box: %v", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		left, err := b.Leftovers(ctx)
		if err != nil {
			t.Errorf("look for leftovers of the box: %v", err)
		}
		if len(left) > 0 {
			t.Errorf("knative in a box left behind:\n  %s", strings.Join(left, "\n  "))
		}
	})
	return b
}

// testWriter writes the box's log lines to the test's log.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// FindRoot finds lap's repository from the working directory: the
// nearest directory above it with e2e/knserving/go.mod.
func FindRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for range 30 { // bounded: a path has fewer components than this
		if _, err := os.Stat(filepath.Join(dir, "e2e", "knserving", "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			break
		}
		dir = parent
	}
	return "", errors.New("lap's repository not found above the working directory (set box.Options.Root)")
}

type binaryPaths struct {
	kubeapi, kcm, harness string
	knative               map[string]string
}

// knativeCommands are the Knative Serving commands the box runs.
var knativeCommands = []string{"controller", "webhook", "autoscaler", "activator", "queue"}

// binaries finds the built binaries under root/bin, or says how to build
// them.
func binaries(root string) (binaryPaths, error) {
	bin := filepath.Join(root, "bin")
	p := binaryPaths{
		kubeapi: filepath.Join(bin, "lap-kubeapi"),
		kcm:     filepath.Join(bin, "lap-kube-controller-manager"),
		harness: filepath.Join(bin, "lap-harness"),
		knative: map[string]string{},
	}
	if env := os.Getenv(kubeapitest.BinaryEnv); env != "" {
		p.kubeapi = env
	}
	need := []string{p.kubeapi, p.kcm, p.harness}
	for _, c := range knativeCommands {
		p.knative[c] = filepath.Join(bin, "knative", c)
		need = append(need, p.knative[c])
	}
	var missing []string
	for _, f := range need {
		if _, err := os.Stat(f); err != nil {
			missing = append(missing, f)
		}
	}
	if len(missing) > 0 {
		return p, fmt.Errorf("knative in a box needs %s: run `make box` (make test does) at %s", strings.Join(missing, ", "), root)
	}
	return p, nil
}

// repository is an image reference without its tag or digest.
func repository(image string) string {
	if i := strings.Index(image, "@"); i >= 0 {
		image = image[:i]
	}
	if i := strings.LastIndex(image, ":"); i > strings.LastIndex(image, "/") {
		image = image[:i]
	}
	return image
}

// component is a process of the box's control plane.
type component struct {
	name string
	p    *proc.Process
}

// startControllerManager runs kube-controller-manager on the host; it
// serves nothing (secure port 0) and only talks to the apiserver.
func (b *Box) startControllerManager(bins binaryPaths) error {
	dir := b.api.Dir
	args := []string{
		bins.kcm,
		"--kubeconfig=" + b.Kubeconfig,
		"--leader-elect=false",
		"--controllers=*",
		"--secure-port=0",
		"--service-account-private-key-file=" + filepath.Join(dir, "sa.key"),
		"--root-ca-file=" + filepath.Join(dir, "certs", "apiserver.crt"),
		"--authentication-skip-lookup",
		"--cluster-name=box",
		"--v=1",
	}
	p, err := proc.Start(proc.Spec{
		Argv: args,
		Env:  []string{"PATH=" + os.Getenv("PATH")},
		Slot: b.Slot,
		Log:  filepath.Join(b.Dir, "logs", "kube-controller-manager.log"),
	})
	if err != nil {
		return err
	}
	b.procs = append(b.procs, &component{name: "kube-controller-manager", p: p})
	return nil
}

// exited reports a component that has exited, for readiness waits.
func (b *Box) exited() error {
	for _, c := range b.procs {
		if _, done := c.p.Exited(); done {
			return fmt.Errorf("%s exited with code %d", c.name, c.p.ExitCode())
		}
	}
	return nil
}

// sortedNames returns m's keys in order.
func sortedNames[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
