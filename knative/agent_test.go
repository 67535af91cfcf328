package knative

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"

	"lap.dev/lap/knative/resources"
	"lap.dev/lap/sandboxes"
)

func TestEnsureAgent(t *testing.T) {
	t.Parallel()
	r := newRig(t, "")
	agent := newAgent("evolving")
	require.NoError(t, r.b.EnsureAgent(r.ctx(), agent))
	sb := r.provision(agent, sandboxes.RoleSession)

	// A new generation takes the default route; running sandboxes stay.
	agent.Generation = 2
	agent.Secrets = map[string]string{"GITHUB_TOKEN": "ghp_rotated", "NPM_TOKEN": "npm_x"}
	before, err := r.kube.CoreV1().Secrets(r.ns).Get(r.ctx(), "evolving-secrets", metav1.GetOptions{})
	require.NoError(t, err)
	require.NoError(t, r.b.EnsureAgent(r.ctx(), agent))
	svc := r.service("evolving")
	assert.Equal(t, "evolving-g2", svc.Spec.Template.Name)
	assert.Equal(t, []servingv1.TrafficTarget{resources.BaseTarget("evolving-g2"), resources.SandboxTarget(sb.Data[DataTag], sb.Data[DataRevision])}, svc.Spec.Traffic)
	assert.Equal(t, "evolving-g2", svc.Status.LatestCreatedRevisionName)
	assert.Equal(t, "2", svc.Annotations[resources.LabelGeneration])
	after, err := r.kube.CoreV1().Secrets(r.ns).Get(r.ctx(), "evolving-secrets", metav1.GetOptions{})
	require.NoError(t, err)
	assert.Equal(t, "ghp_rotated", string(after.Data["GITHUB_TOKEN"]))
	assert.Equal(t, "npm_x", string(after.Data["NPM_TOKEN"]))
	assert.Equal(t, before.Data[resources.BaseTokenKey], after.Data[resources.BaseTokenKey], "the base token survives updates")
	sb, err = r.b.Resume(r.ctx(), sb)
	require.NoError(t, err, "the old generation's sandbox still runs")
	assert.True(t, sb.Running)

	// A same-named Service of another agent is not taken over.
	other := newAgent("evolving")
	err = r.b.EnsureAgent(r.ctx(), other)
	require.ErrorContains(t, err, "belongs to agent")
	_, err = r.b.Provision(r.ctx(), newSpec(other, sandboxes.RoleSession))
	require.ErrorContains(t, err, "not lap's agent")
	require.ErrorContains(t, r.b.DeleteAgent(r.ctx(), other), "not lap's agent")

	// Names Knative cannot take, and unresolved images, fail clearly.
	bad := newAgent("9lives")
	require.ErrorContains(t, r.b.EnsureAgent(r.ctx(), bad), "cannot name a Knative Service")
	noImage := newAgent("opencode-agent")
	noImage.HarnessID = "nope"
	require.ErrorContains(t, r.b.EnsureAgent(r.ctx(), noImage), `unknown harness "nope"`)
}

func TestUnresolvedKoImage(t *testing.T) {
	t.Parallel()
	r := newRig(t, "", withEnv("HARNESS_IMAGE_LAP", ""))
	err := r.b.EnsureAgent(r.ctx(), newAgent("ko-agent"))
	require.ErrorContains(t, err, "HARNESS_IMAGE_LAP")
	require.ErrorContains(t, err, "ko://lap.dev/lap/cmd/lap-harness")
}
