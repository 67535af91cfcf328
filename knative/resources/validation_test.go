package resources

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/util/validation"
	"knative.dev/pkg/apis"
	"knative.dev/serving/pkg/apis/config"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"
	autoscalerconfig "knative.dev/serving/pkg/autoscaler/config"
	revisionresources "knative.dev/serving/pkg/reconciler/configuration/resources"
	serviceresources "knative.dev/serving/pkg/reconciler/service/resources"
	"sigs.k8s.io/yaml"

	"lap.dev/lap/sandboxes"
)

// deployConfigContext returns a context carrying Knative's configuration
// as lap's manifests patch it (config/deploy/knative-patches), the way
// Knative's webhook sees it in a lap cluster. Validating against it ties
// the builders to the manifests: a revision timeout above the patched
// ceiling, or a base revision's zero initial scale without
// allow-zero-initial-scale, fails here.
func deployConfigContext(t testing.TB) context.Context {
	t.Helper()
	load := func(name string) *corev1.ConfigMap {
		b, err := os.ReadFile(filepath.Join("..", "..", "config", "deploy", "knative-patches", name+".yaml"))
		require.NoError(t, err)
		var cm corev1.ConfigMap
		require.NoError(t, yaml.Unmarshal(b, &cm))
		require.Equal(t, name, cm.Name)
		return &cm
	}
	defaults, err := config.NewDefaultsConfigFromConfigMap(load("config-defaults"))
	require.NoError(t, err)
	features, err := config.NewFeaturesConfigFromConfigMap(load("config-features"))
	require.NoError(t, err)
	autoscaler, err := autoscalerconfig.NewConfigFromConfigMap(load("config-autoscaler"))
	require.NoError(t, err)
	return config.ToContext(context.Background(), &config.Config{Defaults: defaults, Features: features, Autoscaler: autoscaler})
}

// admit does to svc what Knative's webhook does on create (old == nil) or
// update: default it, then validate it; it fails the test on any error.
func admit(ctx context.Context, t *testing.T, old, svc *servingv1.Service) *servingv1.Service {
	t.Helper()
	svc = svc.DeepCopy()
	if old != nil {
		ctx = apis.WithinUpdate(ctx, old)
	} else {
		ctx = apis.WithinCreate(ctx)
	}
	svc.SetDefaults(ctx)
	if err := svc.Validate(ctx).Filter(apis.ErrorLevel); err != nil {
		t.Fatalf("Knative rejects the Service: %v", err)
	}
	return svc
}

// knativeRevision is the Revision Knative's controllers make from svc's
// template, admitted by the revision webhook.
func knativeRevision(ctx context.Context, t *testing.T, svc *servingv1.Service) *servingv1.Revision {
	t.Helper()
	cfg := serviceresources.MakeConfiguration(svc)
	cfg.Generation = 1
	rev := revisionresources.MakeRevision(ctx, cfg, time.Now())
	rev.SetDefaults(apis.WithinCreate(ctx))
	if err := rev.Validate(apis.WithinCreate(ctx)).Filter(apis.ErrorLevel); err != nil {
		t.Fatalf("Knative rejects revision %s: %v", rev.Name, err)
	}
	return rev
}

// TestKnativeAcceptsLifecycle runs every object the backend writes, in the
// order it writes them, through Knative's own defaulting and validation,
// including the update rules (a changed template needs a new name).
func TestKnativeAcceptsLifecycle(t *testing.T) {
	t.Parallel()
	ctx := deployConfigContext(t)
	p := testParams()
	agent := testAgent()

	// Every harness's default image passes as the template's image.
	for _, h := range sandboxes.Harnesses() {
		if strings.HasPrefix(h.Image, "ko://") {
			continue // resolved by ko at deploy time; see TestUnresolvedKoImage
		}
		p := testParams()
		p.Images = map[string]string{h.ID: h.Image}
		a := agent
		a.HarnessID = h.ID
		admit(ctx, t, nil, MakeService(a, p))
	}

	// EnsureAgent: the Service with its base revision.
	svc := admit(ctx, t, nil, MakeService(agent, p))
	base := knativeRevision(ctx, t, svc)
	require.Equal(t, "reviewer-g3", base.Name)

	// Provision three sandboxes, one template update each.
	ids := []string{
		"0193a1b2-c3d4-7e5f-8a9b-00000000000a",
		"0193a1b2-c3d4-7e5f-8a9b-00000000000b",
		"0193a1b2-c3d4-7e5f-8a9b-00000000000c",
	}
	for _, id := range ids {
		next := svc.DeepCopy()
		tmpl := MakeSandboxTemplate(testSpec(id, sandboxes.RoleWarm), p)
		next.Spec.Template = tmpl
		next.Spec.Traffic = WithTarget(next.Spec.Traffic, SandboxTarget(SandboxTag(id), tmpl.Name))
		svc = admit(ctx, t, svc, next)
		knativeRevision(ctx, t, svc)
	}
	require.Equal(t, 3, SandboxTags(svc.Spec.Traffic))

	// Suspend the first, then resume it.
	next := svc.DeepCopy()
	next.Spec.Traffic, _ = WithoutTag(next.Spec.Traffic, SandboxTag(ids[0]))
	svc = admit(ctx, t, svc, next)
	next = svc.DeepCopy()
	next.Spec.Traffic = WithTarget(next.Spec.Traffic, SandboxTarget(SandboxTag(ids[0]), SandboxRevisionName(agent.Name, ids[0])))
	svc = admit(ctx, t, svc, next)

	// Destroy the latest: its tag goes and the template points back at
	// the base revision. Knative reuses an existing revision for a
	// template only when the specs are equal (CheckNameAvailability).
	next = svc.DeepCopy()
	next.Spec.Traffic, _ = WithoutTag(next.Spec.Traffic, SandboxTag(ids[2]))
	next.Spec.Template = BaseTemplateFrom(base)
	svc = admit(ctx, t, svc, next)
	if !equality.Semantic.DeepEqual(svc.Spec.Template.Spec, base.Spec) {
		t.Fatal("template reverted to the base revision differs from that revision's spec; Knative would refuse to reuse it")
	}

	// A new generation: a new base revision takes the default route.
	agent.Generation++
	next = svc.DeepCopy()
	next.Spec.Template = MakeBaseTemplate(agent, p)
	next.Spec.Traffic = WithBase(next.Spec.Traffic, next.Spec.Template.Name)
	ApplyAgentMeta(next, agent, p)
	svc = admit(ctx, t, svc, next)
	knativeRevision(ctx, t, svc)
	require.Equal(t, "reviewer-g4", svc.Spec.Traffic[0].RevisionName)

	// The agent's Secret and a sandbox's are valid Kubernetes Secrets.
	for _, secret := range []*corev1.Secret{
		MakeSecret(agent, p, "base-tok"),
		MakeSandboxSecret(testSpec(ids[0], sandboxes.RoleWarm), p, nil),
	} {
		if errs := validation.IsDNS1123Subdomain(secret.Name); len(errs) > 0 {
			t.Errorf("Secret name %q: %v", secret.Name, errs)
		}
		for k := range secret.Data {
			if errs := validation.IsConfigMapKey(k); len(errs) > 0 {
				t.Errorf("Secret %s key %q: %v", secret.Name, k, errs)
			}
		}
	}
	// The longest agent name still gives a valid sandbox Secret name.
	long := strings.Repeat("a", 40)
	require.NoError(t, ValidateAgentName(long))
	if errs := validation.IsDNS1123Subdomain(SandboxSecretName(long, ids[0])); len(errs) > 0 {
		t.Errorf("sandbox Secret name of a 40-character agent: %v", errs)
	}
}

// TestKnativeRejectsWhatTheManifestsForbid shows the validation above can
// fail: without lap's config-defaults patch, an hour-long revision timeout
// is refused.
func TestKnativeRejectsWhatTheManifestsForbid(t *testing.T) {
	t.Parallel()
	svc := MakeService(testAgent(), testParams())
	ctx := apis.WithinCreate(context.Background())
	svc.SetDefaults(ctx)
	err := svc.Validate(ctx).Filter(apis.ErrorLevel)
	require.Error(t, err)
	require.Contains(t, err.Error(), "timeoutSeconds")

	// Changing a template without renaming it is refused too.
	ctx = deployConfigContext(t)
	old := MakeService(testAgent(), testParams())
	old.SetDefaults(apis.WithinCreate(ctx))
	next := old.DeepCopy()
	next.Spec.Template.Spec.Containers[0].Image = "kind.local/other:dev"
	uctx := apis.WithinUpdate(ctx, old)
	next.SetDefaults(uctx)
	require.Error(t, next.Validate(uctx).Filter(apis.ErrorLevel))
}

// TestTurnsOutlastKnativesResponseStartDefault: a turn is one request that
// sends nothing until it ends, so the time to its first byte must be the
// revision's whole timeout. Knative 1.15 otherwise defaults it to
// revision-timeout-seconds (300 s), which queue-proxy and the activator
// enforce, and cuts every turn longer than five minutes.
func TestTurnsOutlastKnativesResponseStartDefault(t *testing.T) {
	t.Parallel()
	ctx := deployConfigContext(t)
	p := testParams()
	svc := admit(ctx, t, nil, MakeService(testAgent(), p))
	for _, rev := range []*servingv1.Revision{
		knativeRevision(ctx, t, svc),
		knativeRevision(ctx, t, func() *servingv1.Service {
			next := svc.DeepCopy()
			next.Spec.Template = MakeSandboxTemplate(testSpec("0193a1b2-c3d4-7e5f-8a9b-00000000000a", sandboxes.RoleWarm), p)
			return admit(ctx, t, svc, next)
		}()),
	} {
		require.NotNil(t, rev.Spec.ResponseStartTimeoutSeconds, "revision %s", rev.Name)
		assert.Equal(t, p.TimeoutSeconds, *rev.Spec.ResponseStartTimeoutSeconds, "responseStartTimeoutSeconds of %s", rev.Name)
		assert.Equal(t, p.TimeoutSeconds, *rev.Spec.TimeoutSeconds, "timeoutSeconds of %s", rev.Name)
	}
}
