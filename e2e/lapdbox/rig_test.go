// Package lapdbox runs the built lapd with LAP_BACKEND=knative on Knative in
// a box (e2e/box): lapd outside the "cluster", as lapd's ServiceAccount
// under config/deploy's RBAC, reaching its sandboxes through the box's
// ingress, with the scripted fake LLM as its upstream.
package lapdbox

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"knative.dev/serving/pkg/apis/serving"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"
	servingclient "knative.dev/serving/pkg/client/clientset/versioned"

	"lap.dev/lap/control/api"
	"lap.dev/lap/e2e/box"
	"lap.dev/lap/e2e/box/proc"
	"lap.dev/lap/e2e/fakellm"
	"lap.dev/lap/e2e/kubeapitest"
	"lap.dev/lap/internal/waitfor"
	"lap.dev/lap/knative/resources"
)

// lapd runs as the ServiceAccount config/deploy gives it.
const (
	lapdUser      = "system:serviceaccount:lap-system:lapd"
	agentsNS      = "lap-agents"
	upstreamKey   = "sk-upstream-real-key"
	harnessPrompt = "You are lap's box test agent."
)

// rig is lapd on Knative in a box.
type rig struct {
	t    testing.TB
	box  *box.Box
	kube kubernetes.Interface
	sc   servingclient.Interface
	// lapdKube acts as lapd's ServiceAccount.
	lapdKube kubernetes.Interface
	llm      *fakellm.Server
	root     string
	dir      string
	audit    string
	env      []string
	lapd     *proc.Process
	url      string // lapd's API
	key      string // MASTER_KEY
	client   *http.Client
	repo     string // file:// URL of the agents' git repository
}

// rigOptions tune the rig.
type rigOptions struct {
	// idle is SESSION_IDLE_TIMEOUT.
	idle time.Duration
}

func newRig(t testing.TB, opts rigOptions) *rig {
	t.Helper()
	root, err := box.FindRoot()
	require.NoError(t, err)
	lapdBin := filepath.Join(root, "bin", "lapd")
	if _, err := os.Stat(lapdBin); err != nil {
		t.Fatalf("%s not built: run `make test` (or make build) at %s", lapdBin, root)
	}
	r := &rig{t: t, root: root, dir: t.TempDir(), client: &http.Client{Timeout: 5 * time.Minute}}
	token := randomHex(16)
	r.audit = filepath.Join(r.dir, "audit.log")
	policy := filepath.Join(r.dir, "audit-policy.yaml")
	require.NoError(t, os.WriteFile(policy, []byte(auditPolicy), 0o644))

	start := time.Now()
	r.box = box.StartForTest(t, box.Options{
		// Knative's default time to a response's first byte is
		// revision-timeout-seconds (300 s in a cluster); 4 s here, so a
		// turn that answers after slowTurn proves lap's revisions set
		// their own (a turn sends nothing until it ends).
		Config: map[string]map[string]string{"config-defaults": {"revision-timeout-seconds": "4"}},
		Tokens: []kubeapitest.Token{kubeapitest.ServiceAccountToken(token, "lap-system", "lapd")},
		APIServerArgs: []string{
			"--audit-policy-file=" + policy,
			"--audit-log-path=" + r.audit,
		},
	})
	t.Logf("box up in %s (%s)", time.Since(start).Round(time.Millisecond), steps(r.box))
	r.kube, r.sc = r.box.Kube(), r.box.Serving()

	// lapd's namespaces and least-privilege Role, as deployed.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	objs, err := kubeapitest.ReadManifests(filepath.Join(root, "config", "deploy", "00-namespaces.yaml"), filepath.Join(root, "config", "deploy", "10-rbac.yaml"))
	require.NoError(t, err)
	require.NoError(t, kubeapitest.Apply(ctx, r.box.Config, objs...))
	kubeconfig := filepath.Join(r.dir, "lapd.kubeconfig")
	require.NoError(t, r.box.KubeconfigFor(token, kubeconfig))
	lapdCfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	require.NoError(t, err)
	r.lapdKube, err = kubernetes.NewForConfig(lapdCfg)
	require.NoError(t, err)

	// The upstream LLM, on loopback: only lapd talks to it.
	r.llm = fakellm.Start(t)
	r.llm.Respond(echo)
	r.repo = gitRepo(t, filepath.Join(r.dir, "repo"))

	// A fixed address on the box's host side: sandboxes keep the gateway
	// URL they were created with across lapd's restarts.
	ln, err := net.Listen("tcp", net.JoinHostPort(r.box.HostIP.String(), "0"))
	require.NoError(t, err)
	addr := ln.Addr().String()
	ln.Close()
	r.url = "http://" + addr
	r.key = "box-master-" + randomHex(12)
	idle := opts.idle
	if idle == 0 {
		idle = 15 * time.Minute
	}
	r.env = []string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + r.dir,
		r.box.Env(),
		"MASTER_KEY=" + r.key,
		"LAP_DATA_DIR=" + filepath.Join(r.dir, "lapd-data"),
		"LAP_LISTEN=" + addr,
		"LAP_SANDBOX_GATEWAY_URL=" + r.url + "/llm",
		"LAP_BACKEND=knative",
		"LAP_LOG_LEVEL=debug",
		"KNATIVE_KUBECONFIG=" + kubeconfig,
		"KNATIVE_NAMESPACE=" + agentsNS,
		"KNATIVE_INGRESS_URL=" + r.box.IngressURL,
		"HARNESS_IMAGE_LAP=" + box.HarnessImage,
		"LITELLM_API_BASE=" + r.llm.URL(),
		"LITELLM_API_KEY=" + upstreamKey,
		"LAP_ALLOW_UNPRICED_MODELS=true", // fake-model has no price
		"WARM_POOL_SIZE=0",
		"SESSION_IDLE_TIMEOUT=" + idle.String(),
	}
	r.startLapd()
	t.Cleanup(r.stopLapd)
	return r
}

// auditPolicy records every write lapd makes, with the object it sent.
const auditPolicy = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived", "ResponseStarted"]
rules:
- level: Request
  users: ["` + lapdUser + `"]
  verbs: ["create", "update", "patch", "delete", "deletecollection"]
- level: None
`

// startLapd starts lapd and waits until /readyz answers.
func (r *rig) startLapd() {
	r.t.Helper()
	start := time.Now()
	p, err := proc.Start(proc.Spec{
		Argv: []string{filepath.Join(r.root, "bin", "lapd")},
		Env:  r.env,
		Dir:  r.dir,
		Slot: r.box.Slot,
		Log:  filepath.Join(r.box.Dir, "logs", "lapd.log"),
	})
	require.NoError(r.t, err)
	r.lapd = p
	ok := waitfor.Poll(context.Background(), 2*time.Minute, 50*time.Millisecond, func() bool {
		if _, exited := p.Exited(); exited {
			return true
		}
		res, err := http.Get(r.url + "/readyz")
		if err != nil {
			return false
		}
		res.Body.Close()
		return res.StatusCode == http.StatusOK
	})
	if _, exited := p.Exited(); exited || !ok {
		r.t.Fatalf("lapd did not get ready (exit code %d):\n%s", p.ExitCode(), r.lapdLog(4000))
	}
	r.t.Logf("lapd ready in %s", time.Since(start).Round(time.Millisecond))
}

// stopLapd stops lapd as a SIGTERM does (its running turns may finish).
func (r *rig) stopLapd() {
	if r.lapd != nil {
		r.lapd.Stop(time.Minute)
		r.lapd = nil
	}
}

func (r *rig) lapdLog(n int) string {
	b, _ := os.ReadFile(filepath.Join(r.box.Dir, "logs", "lapd.log"))
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// call sends an API request with the master key and decodes the answer
// into out (unless nil); it returns the status.
func (r *rig) call(method, path string, in, out any) int {
	r.t.Helper()
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		require.NoError(r.t, err)
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, r.url+"/api/v1/managed_agents"+path, body)
	require.NoError(r.t, err)
	req.Header.Set("Authorization", "Bearer "+r.key)
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := r.client.Do(req)
	require.NoError(r.t, err)
	defer res.Body.Close()
	raw, err := io.ReadAll(res.Body)
	require.NoError(r.t, err)
	if out != nil && res.StatusCode/100 == 2 {
		require.NoError(r.t, json.Unmarshal(raw, out), "%s %s: %s", method, path, raw)
	}
	if res.StatusCode/100 != 2 {
		r.t.Logf("%s %s: %d %s", method, path, res.StatusCode, raw)
	}
	return res.StatusCode
}

// mustCall is call that fails the test on a non-2xx answer.
func (r *rig) mustCall(method, path string, in, out any) {
	r.t.Helper()
	if code := r.call(method, path, in, out); code/100 != 2 {
		r.t.Fatalf("%s %s: status %d\nlapd log:\n%s", method, path, code, r.lapdLog(3000))
	}
}

// message sends a turn and returns the assistant's text.
func (r *rig) message(sessionID, text string) string {
	r.t.Helper()
	var m api.Message
	r.mustCall(http.MethodPost, "/sessions/"+sessionID+"/message", api.SendMessageRequest{Text: text}, &m)
	if m.Info.Error != nil {
		r.t.Fatalf("turn failed: %+v", *m.Info.Error)
	}
	var out []string
	for _, p := range m.Parts {
		if p.Type == "text" {
			out = append(out, p.Text)
		}
	}
	return strings.Join(out, "")
}

func (r *rig) session(id string) api.Session {
	r.t.Helper()
	var s api.Session
	r.mustCall(http.MethodGet, "/sessions/"+id, nil, &s)
	return s
}

// service is the agent's Knative Service; nil once it is gone.
func (r *rig) service(name string) *servingv1.Service {
	r.t.Helper()
	svc, err := r.sc.ServingV1().Services(agentsNS).Get(context.Background(), name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	require.NoError(r.t, err)
	return svc
}

// sandboxTags lists the sandbox tags of the Service's route, as written
// (spec) and as served (status, with URLs).
func sandboxTags(svc *servingv1.Service) (spec, status map[string]string) {
	spec, status = map[string]string{}, map[string]string{}
	for _, t := range svc.Spec.Traffic {
		if strings.HasPrefix(t.Tag, "s-") {
			spec[t.Tag] = t.RevisionName
		}
	}
	for _, t := range svc.Status.Traffic {
		if strings.HasPrefix(t.Tag, "s-") && t.URL != nil {
			status[t.Tag] = t.RevisionName
		}
	}
	return spec, status
}

// pods lists the running pods of a revision (not being deleted) and all
// of its pods.
func (r *rig) pods(revision string) (running, all []corev1.Pod) {
	r.t.Helper()
	list, err := r.kube.CoreV1().Pods(agentsNS).List(context.Background(), metav1.ListOptions{LabelSelector: serving.RevisionLabelKey + "=" + revision})
	require.NoError(r.t, err)
	for _, p := range list.Items {
		if p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning && podReady(p) {
			running = append(running, p)
		}
	}
	return running, list.Items
}

func podReady(p corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// revisionExists reports whether a revision is in the API (and not being
// deleted).
func (r *rig) revisionExists(name string) bool {
	r.t.Helper()
	rev, err := r.sc.ServingV1().Revisions(agentsNS).Get(context.Background(), name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return false
	}
	require.NoError(r.t, err)
	return rev.DeletionTimestamp == nil
}

// sandboxRevisions lists lap's sandbox revisions of an agent by name,
// with their labels.
func (r *rig) sandboxRevisions(agent string) map[string]map[string]string {
	r.t.Helper()
	list, err := r.sc.ServingV1().Revisions(agentsNS).List(context.Background(), metav1.ListOptions{
		LabelSelector: serving.ServiceLabelKey + "=" + agent + "," + resources.LabelSandboxID,
	})
	require.NoError(r.t, err)
	out := map[string]map[string]string{}
	for _, rev := range list.Items {
		if rev.DeletionTimestamp == nil {
			out[rev.Name] = rev.Labels
		}
	}
	return out
}

// sandboxSecrets lists the names of an agent's sandbox Secrets.
func (r *rig) sandboxSecrets(agentID string) []string {
	r.t.Helper()
	list, err := r.kube.CoreV1().Secrets(agentsNS).List(context.Background(), metav1.ListOptions{
		LabelSelector: resources.LabelAgentID + "=" + agentID + "," + resources.LabelSandboxID,
	})
	require.NoError(r.t, err)
	var out []string
	for _, s := range list.Items {
		out = append(out, s.Name)
	}
	return out
}

// assertTokensInSecret checks that a sandbox revision carries no token,
// only references to its Secret, which holds them.
func (r *rig) assertTokensInSecret(revision string) {
	r.t.Helper()
	rev, err := r.sc.ServingV1().Revisions(agentsNS).Get(context.Background(), revision, metav1.GetOptions{})
	require.NoError(r.t, err)
	secret, err := r.kube.CoreV1().Secrets(agentsNS).Get(context.Background(), revision, metav1.GetOptions{})
	require.NoError(r.t, err, "the sandbox Secret of %s", revision)
	for _, key := range []string{"HARNESS_AUTH_TOKEN", "LITELLM_API_KEY"} {
		assert.NotEmpty(r.t, secret.Data[key], "%s in the Secret of %s", key, revision)
		for _, e := range rev.Spec.Containers[0].Env {
			if e.Name == key {
				assert.Empty(r.t, e.Value, "%s as a plain value in %s", key, revision)
				if assert.NotNil(r.t, e.ValueFrom, key) && assert.NotNil(r.t, e.ValueFrom.SecretKeyRef, key) {
					assert.Equal(r.t, revision, e.ValueFrom.SecretKeyRef.Name, key)
				}
			}
		}
	}
}

// eventually polls cond until it holds, failing the test after timeout
// with what describe says about the last state.
func (r *rig) eventually(what string, timeout time.Duration, cond func() bool, describe func() string) {
	r.t.Helper()
	if !waitfor.Poll(context.Background(), timeout, 50*time.Millisecond, cond) {
		msg := ""
		if describe != nil {
			msg = describe()
		}
		r.t.Fatalf("%s: not within %s\n%s\nlapd log:\n%s", what, timeout, msg, r.lapdLog(4000))
	}
}

// auditEvent is one write lapd made, from the apiserver's audit log.
type auditEvent struct {
	Verb      string `json:"verb"`
	ObjectRef struct {
		Resource    string `json:"resource"`
		Name        string `json:"name"`
		Subresource string `json:"subresource"`
	} `json:"objectRef"`
	ResponseStatus struct {
		Code int `json:"code"`
	} `json:"responseStatus"`
	RequestObject json.RawMessage `json:"requestObject"`
	Received      time.Time       `json:"requestReceivedTimestamp"`
}

// writes returns lapd's API writes received in [from, to].
func (r *rig) writes(from, to time.Time) []auditEvent {
	r.t.Helper()
	f, err := os.Open(r.audit)
	if os.IsNotExist(err) {
		return nil
	}
	require.NoError(r.t, err)
	defer f.Close()
	var out []auditEvent
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var e auditEvent
		if json.Unmarshal(sc.Bytes(), &e) != nil {
			continue
		}
		if !e.Received.Before(from) && !e.Received.After(to) {
			out = append(out, e)
		}
	}
	require.NoError(r.t, sc.Err())
	return out
}

// describe renders an audit event for a failure message.
func (e auditEvent) String() string {
	return fmt.Sprintf("%s %s/%s %s (%d)", e.Verb, e.ObjectRef.Resource, e.ObjectRef.Name, e.ObjectRef.Subresource, e.ResponseStatus.Code)
}

// newSandboxTemplate reports whether a write is a Service update that
// sets a template for a sandbox revision not in existing: a provision.
func (e auditEvent) newSandboxTemplate(existing map[string]map[string]string) (string, bool) {
	if e.ObjectRef.Resource != "services" || e.Verb != "update" {
		return "", false
	}
	var svc servingv1.Service
	if json.Unmarshal(e.RequestObject, &svc) != nil {
		return "", false
	}
	name := svc.Spec.Template.Name
	_, known := existing[name]
	return name, svc.Spec.Template.Labels[resources.LabelSandboxID] != "" && !known
}

// newSandboxSecret reports whether a write creates the Secret of a
// sandbox revision not in existing: the first write of a provision.
func (e auditEvent) newSandboxSecret(existing map[string]map[string]string) (string, bool) {
	if e.ObjectRef.Resource != "secrets" || e.Verb != "create" {
		return "", false
	}
	var s corev1.Secret
	if json.Unmarshal(e.RequestObject, &s) != nil {
		return "", false
	}
	_, known := existing[s.Name]
	return s.Name, s.Labels[resources.LabelSandboxID] != "" && !known
}

// slowPrefix makes the fake LLM stream its answer over about slowTurn:
// longer than the box's response-start default (4 s).
const (
	slowPrefix = "slowly:"
	slowTurn   = 8 * time.Second
)

// echo is the fake LLM's answer: every user message of the conversation
// it was sent, so a reply shows the history the harness had. A last
// message starting with slowPrefix is answered in four chunks over
// slowTurn.
func echo(req fakellm.Request) fakellm.Reply {
	var users []string
	for _, m := range req.Messages {
		if m.Role == "user" {
			users = append(users, m.Text)
		}
	}
	reply := fakellm.Text("heard: " + strings.Join(users, " | "))
	if len(users) > 0 && strings.HasPrefix(users[len(users)-1], slowPrefix) {
		reply.Chunks, reply.ChunkDelay = 4, slowTurn/4
	}
	return reply
}

// gitRepo makes a repository with one commit on main and returns its
// file:// URL; sandbox pods run on this machine's filesystem.
func gitRepo(t testing.TB, dir string) string {
	t.Helper()
	require.NoError(t, os.MkdirAll(dir, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "README.md"), []byte("# box repo\n"), 0o644))
	for _, args := range [][]string{
		{"init", "-q", "-b", "main"},
		{"add", "README.md"},
		{"-c", "user.name=box", "-c", "user.email=box@lap.dev", "commit", "-q", "-m", "first"},
	} {
		out, err := exec.Command("git", append([]string{"-C", dir}, args...)...).CombinedOutput()
		require.NoError(t, err, "git %v: %s", args, out)
	}
	return "file://" + dir
}

// stepper runs named steps, logs how long each took and keeps the
// figures.
type stepper struct {
	t     testing.TB
	mu    sync.Mutex
	times map[string]time.Duration
	order []string
}

func newStepper(t testing.TB) *stepper {
	return &stepper{t: t, times: map[string]time.Duration{}}
}

func (s *stepper) step(name string, f func()) {
	s.t.Helper()
	start := time.Now()
	f()
	took := time.Since(start)
	s.mu.Lock()
	s.times[name] = took
	s.order = append(s.order, name)
	s.mu.Unlock()
	s.t.Logf("step %-66s %8s", name, took.Round(time.Millisecond))
}

func steps(b *box.Box) string {
	var parts []string
	for _, s := range b.Steps {
		parts = append(parts, fmt.Sprintf("%s %s", s.Name, s.Took.Round(time.Millisecond)))
	}
	return strings.Join(parts, ", ")
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// rss sums the resident memory of processes, in bytes.
func rss(pids []int) int64 {
	var total int64
	for _, pid := range pids {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
				total += kb * 1024
			}
		}
	}
	return total
}
