package box_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"knative.dev/serving/pkg/apis/autoscaling"
	"knative.dev/serving/pkg/apis/serving"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"

	"lap.dev/lap/e2e/box"
	"lap.dev/lap/e2e/fakellm"
	"lap.dev/lap/internal/waitfor"
	"lap.dev/lap/sandboxes/protocol"
)

// TestPlainService runs a Knative Service of lap-harness pods through the
// box: the default route answers through the ingress, a tagged 0%
// revision answers at its tag (host and header), and both scale to zero
// and come back on the next request.
func TestPlainService(t *testing.T) {
	b := box.StartForTest(t, box.Options{})
	t.Logf("box up in %s: %s", b.StartupTime().Round(time.Millisecond), steps(b))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	llm := serveLLM(t, b)
	kube, sc := b.Kube(), b.Serving()
	const ns = "demo"
	_, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	require.NoError(t, err)
	// Each revision's harness token comes from a Secret, one by envFrom,
	// one by a key reference; a request carrying a token reaches only the
	// revision that holds it.
	_, err = kube.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "tokens"},
		Data:       map[string][]byte{"HARNESS_AUTH_TOKEN": []byte("token-v1"), "v2": []byte("token-v2")},
	}, metav1.CreateOptions{})
	require.NoError(t, err)

	step := stepper(t)
	svc := &servingv1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "hello", Namespace: ns},
		Spec: servingv1.ServiceSpec{
			ConfigurationSpec: servingv1.ConfigurationSpec{Template: harnessTemplate("hello-v1", llm.url, func(c *corev1.Container) {
				c.EnvFrom = []corev1.EnvFromSource{{SecretRef: &corev1.SecretEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "tokens"}}}}
			})},
			RouteSpec: servingv1.RouteSpec{Traffic: []servingv1.TrafficTarget{{RevisionName: "hello-v1", Percent: ptr[int64](100)}}},
		},
	}
	step("ksvc Ready", func() {
		_, err := sc.ServingV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{})
		require.NoError(t, err)
		svc = waitService(t, ctx, b, ns, "hello", func(s *servingv1.Service) bool { return s.IsReady() })
	})
	host := svc.Status.URL.Host
	client := &http.Client{Timeout: time.Minute}

	step("first answer through the ingress", func() {
		require.Equal(t, http.StatusOK, get(t, client, b.IngressURL, host, nil, "/session", "token-v1"))
	})
	step("a turn: ingress → activator → queue-proxy → lap-harness → fake LLM", func() {
		llm.Enqueue(fakellm.Text("hello from the box"))
		id := createSession(t, client, b.IngressURL, host, "token-v1")
		reply := sendMessage(t, client, b.IngressURL, host, "token-v1", id, "say hello")
		require.NotEmpty(t, reply.Parts)
		assert.Equal(t, "hello from the box", reply.Parts[len(reply.Parts)-1].Text)
		assert.Equal(t, "say hello", llm.Requests()[0].LastUserText())
	})

	step("tagged 0% revision Ready", func() {
		cur, err := sc.ServingV1().Services(ns).Get(ctx, "hello", metav1.GetOptions{})
		require.NoError(t, err)
		cur.Spec.Template = harnessTemplate("hello-v2", llm.url, func(c *corev1.Container) {
			c.Env = append(c.Env, corev1.EnvVar{Name: "HARNESS_AUTH_TOKEN", ValueFrom: &corev1.EnvVarSource{
				SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "tokens"}, Key: "v2"},
			}})
		})
		cur.Spec.Traffic = append(cur.Spec.Traffic, servingv1.TrafficTarget{Tag: "canary", RevisionName: "hello-v2", Percent: ptr[int64](0)})
		_, err = sc.ServingV1().Services(ns).Update(ctx, cur, metav1.UpdateOptions{})
		require.NoError(t, err)
		svc = waitService(t, ctx, b, ns, "hello", func(s *servingv1.Service) bool {
			return s.IsReady() && s.Status.LatestReadyRevisionName == "hello-v2" && tagURL(s, "canary") != ""
		})
	})
	tagHost := tagURL(svc, "canary")
	step("the tag answers by host and by header", func() {
		assert.Equal(t, http.StatusOK, get(t, client, b.IngressURL, tagHost, nil, "/session", "token-v2"))
		assert.Equal(t, http.StatusOK, get(t, client, b.IngressURL, host, map[string]string{"Knative-Serving-Tag": "canary"}, "/session", "token-v2"))
		// The default route still goes to v1 only.
		assert.Equal(t, http.StatusUnauthorized, get(t, client, b.IngressURL, host, nil, "/session", "token-v2"))
		assert.Equal(t, http.StatusOK, get(t, client, b.IngressURL, host, nil, "/session", "token-v1"))
	})

	step("both revisions scale to zero (no pod left in the API)", func() {
		for _, rev := range []string{"hello-v1", "hello-v2"} {
			waitPods(t, ctx, b, ns, rev, 0)
		}
	})
	step("the tag answers from zero", func() {
		assert.Equal(t, http.StatusOK, get(t, client, b.IngressURL, tagHost, nil, "/session", "token-v2"))
	})
	pods := waitPods(t, ctx, b, ns, "hello-v2", 1)
	ip := net.ParseIP(pods[0].Status.PodIP)
	require.NotNil(t, ip, "pod IP")
	assert.True(t, b.HostIP.Is4() && ip.To4() != nil && ip.To4()[0] == 198 && ip.To4()[1]&0xfe == 18, "pod IP %s is in 198.18.0.0/15", ip)

	step("kubectl logs reaches the kubelet", func() {
		raw, err := kube.CoreV1().Pods(ns).GetLogs(pods[0].Name, &corev1.PodLogOptions{Container: "user-container", TailLines: ptr[int64](50)}).DoRaw(ctx)
		require.NoError(t, err)
		assert.NotEmpty(t, raw)
	})
	step("service deleted → pods gone", func() {
		require.NoError(t, sc.ServingV1().Services(ns).Delete(ctx, "hello", metav1.DeleteOptions{}))
		waitPods(t, ctx, b, ns, "", 0)
	})
}

// harnessTemplate is a revision of lap-harness.
func harnessTemplate(name string, llm string, edit func(*corev1.Container)) servingv1.RevisionTemplateSpec {
	c := corev1.Container{
		Image: box.HarnessImage,
		Env: []corev1.EnvVar{
			{Name: "LITELLM_API_BASE", Value: llm},
			{Name: "LITELLM_API_KEY", Value: "test-key"},
			{Name: "LAP_MODEL", Value: "fake-model"},
			{Name: "WORKSPACE", Value: "/workspace"},
			{Name: "HOME", Value: "/workspace/home"},
		},
		ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/"}}},
		VolumeMounts:   []corev1.VolumeMount{{Name: "workspace", MountPath: "/workspace"}},
	}
	edit(&c)
	return servingv1.RevisionTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{
			Name:        name,
			Annotations: map[string]string{autoscaling.MinScaleAnnotationKey: "0"},
		},
		Spec: servingv1.RevisionSpec{PodSpec: corev1.PodSpec{
			Containers: []corev1.Container{c},
			Volumes:    []corev1.Volume{{Name: "workspace", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}},
		}},
	}
}

// serveLLM serves a fake LLM on the box's host address, where pods reach
// it, and returns its base URL.
func serveLLM(t *testing.T, b *box.Box) *llmServer {
	t.Helper()
	f := fakellm.New()
	ln, err := net.Listen("tcp", net.JoinHostPort(b.HostIP.String(), "0"))
	require.NoError(t, err)
	srv := &http.Server{Handler: f, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { f.Close(); _ = srv.Close() })
	return &llmServer{Server: f, url: "http://" + ln.Addr().String()}
}

type llmServer struct {
	*fakellm.Server
	url string
}

// stepper runs named steps and logs how long each took.
func stepper(t *testing.T) func(name string, f func()) {
	return func(name string, f func()) {
		t.Helper()
		start := time.Now()
		f()
		t.Logf("step %-70s %s", name, time.Since(start).Round(time.Millisecond))
	}
}

func steps(b *box.Box) string {
	var parts []string
	for _, s := range b.Steps {
		parts = append(parts, fmt.Sprintf("%s %s", s.Name, s.Took.Round(time.Millisecond)))
	}
	return strings.Join(parts, ", ")
}

// waitService polls the Service until cond holds.
func waitService(t *testing.T, ctx context.Context, b *box.Box, ns, name string, cond func(*servingv1.Service) bool) *servingv1.Service {
	t.Helper()
	var last *servingv1.Service
	ok := waitfor.Poll(ctx, 3*time.Minute, 100*time.Millisecond, func() bool {
		s, err := b.Serving().ServingV1().Services(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false
		}
		last = s
		return cond(s)
	})
	if !ok {
		js, _ := json.MarshalIndent(last, "", "  ")
		t.Fatalf("service %s/%s did not get there:\n%s", ns, name, js)
	}
	return last
}

// waitPods polls until the revision (all of the namespace when "") has
// n pods in the API, running and ready when n > 0.
func waitPods(t *testing.T, ctx context.Context, b *box.Box, ns, revision string, n int) []corev1.Pod {
	t.Helper()
	sel := ""
	if revision != "" {
		sel = serving.RevisionLabelKey + "=" + revision
	}
	var pods []corev1.Pod
	ok := waitfor.Poll(ctx, 3*time.Minute, 100*time.Millisecond, func() bool {
		list, err := b.Kube().CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: sel})
		if err != nil {
			return false
		}
		pods = list.Items
		if len(pods) != n {
			return false
		}
		for _, p := range pods {
			if p.Status.Phase != corev1.PodRunning || p.DeletionTimestamp != nil {
				return false
			}
		}
		return true
	})
	if !ok {
		t.Fatalf("revision %q: want %d pods, have %d", revision, n, len(pods))
	}
	return pods
}

func tagURL(s *servingv1.Service, tag string) string {
	for _, tr := range s.Status.Traffic {
		if tr.Tag == tag && tr.URL != nil {
			return tr.URL.Host
		}
	}
	return ""
}

// get sends GET path through the ingress with host and the harness token.
func get(t *testing.T, c *http.Client, ingress, host string, header map[string]string, path, token string) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, ingress+path, nil)
	require.NoError(t, err)
	req.Host = host
	for k, v := range header {
		req.Header.Set(k, v)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	res, err := c.Do(req)
	require.NoError(t, err)
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Logf("GET %s (host %s): %s %s", path, host, res.Status, body)
	}
	return res.StatusCode
}

func post(t *testing.T, c *http.Client, ingress, host, path, token string, in, out any) {
	t.Helper()
	body, err := json.Marshal(in)
	require.NoError(t, err)
	req, err := http.NewRequest(http.MethodPost, ingress+path, bytes.NewReader(body))
	require.NoError(t, err)
	req.Host = host
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	res, err := c.Do(req)
	require.NoError(t, err)
	defer res.Body.Close()
	raw, _ := io.ReadAll(res.Body)
	require.Equal(t, http.StatusOK, res.StatusCode, "POST %s: %s", path, raw)
	require.NoError(t, json.Unmarshal(raw, out), "POST %s: %s", path, raw)
}

func createSession(t *testing.T, c *http.Client, ingress, host, token string) string {
	t.Helper()
	var s struct{ ID string }
	post(t, c, ingress, host, "/session", token, map[string]string{"title": "box"}, &s)
	require.NotEmpty(t, s.ID)
	return s.ID
}

func sendMessage(t *testing.T, c *http.Client, ingress, host, token, session, text string) protocol.Message {
	t.Helper()
	var m protocol.Message
	post(t, c, ingress, host, "/session/"+session+"/message", token,
		map[string]any{"parts": []map[string]string{{"type": "text", "text": text}}}, &m)
	return m
}

func ptr[T any](v T) *T { return &v }
