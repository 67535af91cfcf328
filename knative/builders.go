package knative

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"knative.dev/networking/pkg/apis/networking"
	"knative.dev/serving/pkg/apis/autoscaling"
	"knative.dev/serving/pkg/apis/serving"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"

	"lap.dev/lap/sandboxes"
)

// Labels and annotations lap puts on its objects. Revisions inherit the
// template's labels, and their pods inherit the revision's, so every pod
// of a sandbox carries its sandbox id.
const (
	LabelManagedBy  = "app.kubernetes.io/managed-by"
	ManagedBy       = "lap"
	LabelAgentID    = "lap.dev/agent-id"
	LabelSandboxID  = "lap.dev/sandbox-id"
	LabelRole       = "lap.dev/role"
	LabelGeneration = "lap.dev/generation"
	// AnnotationHarness names the agent's harness_id on its Service.
	AnnotationHarness = "lap.dev/harness"
	// RoleBase marks an agent's base revision, which serves the default
	// route and no session.
	RoleBase = "base"
)

// Fixed parts of a sandbox pod.
const (
	// ContainerName is the harness container in every revision.
	ContainerName = "harness"
	// ContainerPort is where the harness listens; Knative passes it as PORT.
	ContainerPort = 8080
	// WorkspacePath is the emptyDir the harness clones into ($WORKSPACE).
	WorkspacePath = "/workspace"
	// TmpPath is a writable emptyDir for /tmp and $HOME on a read-only root.
	TmpPath = "/tmp"
	// BaseTokenKey is the key of the agent Secret holding the base
	// revision's HARNESS_AUTH_TOKEN. It is not a valid C identifier, so it
	// cannot clash with an agent's env_vars.
	BaseTokenKey = "lap-base-harness-token"
	// nonRootUID is the conventional "nonroot" user of distroless images.
	nonRootUID = 65532
)

// tmpSize bounds the /tmp emptyDir; the workspace has its own setting.
var tmpSize = resource.MustParse("1Gi")

// Params are the cluster-wide inputs of the builders, resolved once from
// the configuration.
type Params struct {
	Namespace string
	// Images maps harness_id to its container image.
	Images map[string]string
	// Resources of the harness container.
	Resources corev1.ResourceRequirements
	// WorkspaceSize bounds the workspace emptyDir; nil = unbounded.
	WorkspaceSize *resource.Quantity
	// TimeoutSeconds is every revision's request timeout.
	TimeoutSeconds int64
	// ClusterLocal keeps the Services off the public ingress.
	ClusterLocal bool
}

// ServiceName is the Knative Service of an agent: its name.
func ServiceName(agent sandboxes.AgentSpec) string { return agent.Name }

// SecretName is the per-agent Secret holding the agent's env_vars.
func SecretName(agentName string) string { return agentName + "-secrets" }

// BaseRevisionName is the agent's base revision at a generation.
func BaseRevisionName(agentName string, generation int64) string {
	return agentName + "-g" + strconv.FormatInt(generation, 10)
}

// ShortID is the 8 hex characters that name a sandbox's revision and tag.
// For a UUID they are its last 8 hex digits: random in both v4 and v7,
// whereas a v7's first 8 are a timestamp shared by every id of the same
// minute. Other ids are hashed.
func ShortID(sandboxID string) string {
	hexOnly := strings.ReplaceAll(strings.ToLower(sandboxID), "-", "")
	if _, err := hex.DecodeString(hexOnly); err == nil && len(hexOnly) >= 16 {
		return hexOnly[len(hexOnly)-8:]
	}
	sum := sha256.Sum256([]byte(sandboxID))
	return hex.EncodeToString(sum[:4])
}

// SandboxTag is the traffic tag of a sandbox: "s-<8hex>".
func SandboxTag(sandboxID string) string { return "s-" + ShortID(sandboxID) }

// SandboxRevisionName is a sandbox's revision: "<agent>-s-<8hex>".
func SandboxRevisionName(agentName, sandboxID string) string {
	return agentName + "-" + SandboxTag(sandboxID)
}

// SandboxSecretName is the Secret of a sandbox's own environment: named
// as its revision, so a sandbox's record (or its revision) is enough to
// find it, and never like an agent's "<agent>-secrets".
func SandboxSecretName(agentName, sandboxID string) string {
	return SandboxRevisionName(agentName, sandboxID)
}

// isSandboxTag tells lap's sandbox tags from any other tag on a route.
func isSandboxTag(tag string) bool { return strings.HasPrefix(tag, "s-") }

// ValidateAgentName reports whether name can name a Knative Service and
// every object derived from it. Agent names are DNS-1123 labels of at most
// 40 characters; a Knative Service also needs a leading letter, because
// Kubernetes Services are DNS-1035 labels.
func ValidateAgentName(name string) error {
	if errs := validation.IsDNS1035Label(name); len(errs) > 0 {
		return fmt.Errorf("agent name %q cannot name a Knative Service: %s", name, strings.Join(errs, "; "))
	}
	// The longest derived name, a sandbox tag host label, must fit 63.
	if n := len(SandboxTag("x") + "-" + name); n > validation.DNS1123LabelMaxLength {
		return fmt.Errorf("agent name %q is too long for Knative: tag hosts would be %d characters", name, n)
	}
	return nil
}

// MakeSecret builds the agent's Secret: its env_vars, which sandbox pods
// read with envFrom, and the base revision's harness token.
func MakeSecret(agent sandboxes.AgentSpec, p Params, baseToken string) *corev1.Secret {
	data := make(map[string][]byte, len(agent.Secrets)+1)
	for k, v := range agent.Secrets {
		data[k] = []byte(v)
	}
	data[BaseTokenKey] = []byte(baseToken)
	return &corev1.Secret{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
		ObjectMeta: metav1.ObjectMeta{
			Name:      SecretName(agent.Name),
			Namespace: p.Namespace,
			Labels:    agentLabels(agent),
		},
		Type: corev1.SecretTypeOpaque,
		Data: data,
	}
}

// MakeSandboxSecret builds the Secret of a sandbox's own environment
// (spec.Env: its harness and gateway tokens), which its revision reads key
// by key, so no token is in a Revision. owner, when known, lets
// Kubernetes' garbage collector delete it with the agent's Service.
func MakeSandboxSecret(spec sandboxes.Spec, p Params, owner *metav1.OwnerReference) *corev1.Secret {
	data := make(map[string][]byte, len(spec.Env))
	for k, v := range spec.Env {
		if !slices.Contains(reservedEnv, k) {
			data[k] = []byte(v)
		}
	}
	labels := agentLabels(spec.Agent)
	labels[LabelSandboxID] = spec.ID
	s := &corev1.Secret{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
		ObjectMeta: metav1.ObjectMeta{
			Name:      SandboxSecretName(spec.Agent.Name, spec.ID),
			Namespace: p.Namespace,
			Labels:    labels,
		},
		Type: corev1.SecretTypeOpaque,
		Data: data,
	}
	if owner != nil {
		s.OwnerReferences = []metav1.OwnerReference{*owner}
	}
	return s
}

// MakeService builds a new agent's Service: the base revision as the
// template, pinned at 100% of the default route by name.
func MakeService(agent sandboxes.AgentSpec, p Params) *servingv1.Service {
	base := MakeBaseTemplate(agent, p)
	svc := &servingv1.Service{
		TypeMeta: metav1.TypeMeta{APIVersion: servingv1.SchemeGroupVersion.String(), Kind: "Service"},
		ObjectMeta: metav1.ObjectMeta{
			Name:      ServiceName(agent),
			Namespace: p.Namespace,
		},
		Spec: servingv1.ServiceSpec{
			ConfigurationSpec: servingv1.ConfigurationSpec{Template: base},
			RouteSpec:         servingv1.RouteSpec{Traffic: []servingv1.TrafficTarget{BaseTarget(base.Name)}},
		},
	}
	ApplyAgentMeta(svc, agent, p)
	return svc
}

// ApplyAgentMeta sets the agent's labels and annotations on svc, keeping
// any others (Knative's own, an operator's).
func ApplyAgentMeta(svc *servingv1.Service, agent sandboxes.AgentSpec, p Params) {
	if svc.Labels == nil {
		svc.Labels = map[string]string{}
	}
	maps.Copy(svc.Labels, agentLabels(agent))
	if p.ClusterLocal {
		svc.Labels[networking.VisibilityLabelKey] = serving.VisibilityClusterLocal
	} else {
		delete(svc.Labels, networking.VisibilityLabelKey)
	}
	if svc.Annotations == nil {
		svc.Annotations = map[string]string{}
	}
	svc.Annotations[AnnotationHarness] = harnessID(agent)
	svc.Annotations[LabelGeneration] = strconv.FormatInt(agent.Generation, 10)
}

// MakeBaseTemplate builds the agent's base revision: the harness with the
// agent-wide environment and no secrets, scaled to zero from the start.
// It serves the default route so the Service is routable without any
// session; it is reached by no one in normal operation.
func MakeBaseTemplate(agent sandboxes.AgentSpec, p Params) servingv1.RevisionTemplateSpec {
	c := harnessContainer(agent, p, agent.Env)
	c.Env = append(c.Env, corev1.EnvVar{Name: "HARNESS_AUTH_TOKEN", ValueFrom: &corev1.EnvVarSource{
		SecretKeyRef: &corev1.SecretKeySelector{
			LocalObjectReference: corev1.LocalObjectReference{Name: SecretName(agent.Name)},
			Key:                  BaseTokenKey,
		},
	}})
	sortEnv(c.Env)
	labels := agentLabels(agent)
	labels[LabelRole] = RoleBase
	labels[LabelGeneration] = strconv.FormatInt(agent.Generation, 10)
	return servingv1.RevisionTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{
			Name:   BaseRevisionName(agent.Name, agent.Generation),
			Labels: labels,
			Annotations: map[string]string{
				autoscaling.MinScaleAnnotationKey: "0",
				autoscaling.MaxScaleAnnotationKey: "1",
				// No pod at creation; needs allow-zero-initial-scale.
				autoscaling.InitialScaleAnnotationKey: "0",
			},
		},
		Spec: revisionSpec(c, p),
	}
}

// MakeSandboxTemplate builds a sandbox's revision: one pod, no more and no
// fewer, while its tag is in the route.
func MakeSandboxTemplate(spec sandboxes.Spec, p Params) servingv1.RevisionTemplateSpec {
	// spec.Env overrides the agent's env, from the sandbox's Secret.
	env := maps.Clone(spec.Agent.Env)
	for k := range spec.Env {
		delete(env, k)
	}
	c := harnessContainer(spec.Agent, p, env)
	c.Env = append(c.Env, secretEnv(SandboxSecretName(spec.Agent.Name, spec.ID), spec.Env)...)
	sortEnv(c.Env)
	c.EnvFrom = []corev1.EnvFromSource{{SecretRef: &corev1.SecretEnvSource{
		LocalObjectReference: corev1.LocalObjectReference{Name: SecretName(spec.Agent.Name)},
	}}}
	labels := agentLabels(spec.Agent)
	labels[LabelSandboxID] = spec.ID
	labels[LabelRole] = spec.Role
	labels[LabelGeneration] = strconv.FormatInt(spec.Agent.Generation, 10)
	return servingv1.RevisionTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{
			Name:   SandboxRevisionName(spec.Agent.Name, spec.ID),
			Labels: labels,
			Annotations: map[string]string{
				autoscaling.MinScaleAnnotationKey: "1",
				autoscaling.MaxScaleAnnotationKey: "1",
			},
		},
		Spec: revisionSpec(c, p),
	}
}

func revisionSpec(c corev1.Container, p Params) servingv1.RevisionSpec {
	volumes := []corev1.Volume{
		{Name: "workspace", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{SizeLimit: p.WorkspaceSize}}},
		{Name: "tmp", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{SizeLimit: &tmpSize}}},
	}
	return servingv1.RevisionSpec{
		PodSpec: corev1.PodSpec{
			Containers: []corev1.Container{c},
			Volumes:    volumes,
			// A sandbox runs an agent's tools; it gets no cluster credentials.
			AutomountServiceAccountToken: ptr(false),
			EnableServiceLinks:           ptr(false),
		},
		// One harness serves a session's turn and its event stream at once.
		ContainerConcurrency: ptr[int64](0),
		TimeoutSeconds:       ptr(p.TimeoutSeconds),
	}
}

// secretEnv reads each key of env from the Secret of that name, as the
// variable of the same name.
func secretEnv(secret string, env map[string]string) []corev1.EnvVar {
	vars := make([]corev1.EnvVar, 0, len(env))
	for k := range env {
		if slices.Contains(reservedEnv, k) {
			continue
		}
		vars = append(vars, corev1.EnvVar{Name: k, ValueFrom: &corev1.EnvVarSource{
			SecretKeyRef: &corev1.SecretKeySelector{
				LocalObjectReference: corev1.LocalObjectReference{Name: secret},
				Key:                  k,
			},
		}})
	}
	return vars
}

// reservedEnv are set by Knative itself and refused in a template.
var reservedEnv = []string{"PORT", "K_SERVICE", "K_CONFIGURATION", "K_REVISION"}

func harnessContainer(agent sandboxes.AgentSpec, p Params, env map[string]string) corev1.Container {
	vars := make([]corev1.EnvVar, 0, len(env)+2)
	for k, v := range env {
		if slices.Contains(reservedEnv, k) {
			continue
		}
		vars = append(vars, corev1.EnvVar{Name: k, Value: v})
	}
	vars = append(vars,
		corev1.EnvVar{Name: "WORKSPACE", Value: WorkspacePath},
		corev1.EnvVar{Name: "HOME", Value: TmpPath},
	)
	sortEnv(vars)
	return corev1.Container{
		Name:            ContainerName,
		Image:           p.Images[harnessID(agent)],
		ImagePullPolicy: corev1.PullIfNotPresent,
		Ports:           []corev1.ContainerPort{{Name: "http1", ContainerPort: ContainerPort}},
		Env:             vars,
		Resources:       *p.Resources.DeepCopy(),
		// GET / is the harness's one unauthenticated route; lap's own
		// readiness check (GET /session with the token) follows it.
		ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{
			HTTPGet: &corev1.HTTPGetAction{Path: "/"},
		}},
		VolumeMounts: []corev1.VolumeMount{
			{Name: "workspace", MountPath: WorkspacePath},
			{Name: "tmp", MountPath: TmpPath},
		},
		SecurityContext: &corev1.SecurityContext{
			RunAsNonRoot:             ptr(true),
			RunAsUser:                ptr[int64](nonRootUID),
			RunAsGroup:               ptr[int64](nonRootUID),
			ReadOnlyRootFilesystem:   ptr(true),
			AllowPrivilegeEscalation: ptr(false),
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
			SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
	}
}

func sortEnv(vars []corev1.EnvVar) {
	slices.SortFunc(vars, func(a, b corev1.EnvVar) int { return strings.Compare(a.Name, b.Name) })
}

func harnessID(agent sandboxes.AgentSpec) string {
	if agent.HarnessID == "" {
		return sandboxes.DefaultHarness
	}
	return agent.HarnessID
}

func agentLabels(agent sandboxes.AgentSpec) map[string]string {
	return map[string]string{LabelManagedBy: ManagedBy, LabelAgentID: agent.ID}
}

// BaseTarget routes all of the default route to the base revision, by
// name: a new sandbox template must never take the default traffic.
func BaseTarget(revision string) servingv1.TrafficTarget {
	return servingv1.TrafficTarget{RevisionName: revision, Percent: ptr[int64](100), LatestRevision: ptr(false)}
}

// SandboxTarget is a sandbox's 0% tagged target; while it is in the route
// the revision's min-scale holds and its tag URL reaches it.
func SandboxTarget(tag, revision string) servingv1.TrafficTarget {
	return servingv1.TrafficTarget{Tag: tag, RevisionName: revision, Percent: ptr[int64](0), LatestRevision: ptr(false)}
}

// WithTarget returns traffic with t added, replacing a target of the same
// tag.
func WithTarget(traffic []servingv1.TrafficTarget, t servingv1.TrafficTarget) []servingv1.TrafficTarget {
	out, _ := WithoutTag(traffic, t.Tag)
	return append(out, t)
}

// WithoutTag returns traffic without the target tagged tag, and whether
// there was one.
func WithoutTag(traffic []servingv1.TrafficTarget, tag string) ([]servingv1.TrafficTarget, bool) {
	out := make([]servingv1.TrafficTarget, 0, len(traffic))
	found := false
	for _, t := range traffic {
		if t.Tag == tag {
			found = true
			continue
		}
		out = append(out, t)
	}
	return out, found
}

// WithBase returns traffic with the untagged targets replaced by the base
// revision at 100%, keeping every tag.
func WithBase(traffic []servingv1.TrafficTarget, revision string) []servingv1.TrafficTarget {
	out := []servingv1.TrafficTarget{BaseTarget(revision)}
	for _, t := range traffic {
		if t.Tag != "" {
			out = append(out, t)
		}
	}
	return out
}

// SandboxTags counts the sandbox tags in traffic: the agent's live
// sandboxes.
func SandboxTags(traffic []servingv1.TrafficTarget) int {
	n := 0
	for _, t := range traffic {
		if isSandboxTag(t.Tag) {
			n++
		}
	}
	return n
}

// BaseTemplateFrom rebuilds the template of an existing base revision, so
// the Service's template can point back at it: Knative accepts a template
// naming an existing revision only if the specs are equal, and copying
// the revision's own spec guarantees that.
func BaseTemplateFrom(rev *servingv1.Revision) servingv1.RevisionTemplateSpec {
	labels := map[string]string{}
	for k, v := range rev.Labels {
		if k == LabelManagedBy || strings.HasPrefix(k, "lap.dev/") {
			labels[k] = v
		}
	}
	annotations := map[string]string{}
	for k, v := range rev.Annotations {
		if strings.HasPrefix(k, autoscaling.GroupName+"/") || strings.HasPrefix(k, "lap.dev/") {
			annotations[k] = v
		}
	}
	return servingv1.RevisionTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Name: rev.Name, Labels: labels, Annotations: annotations},
		Spec:       *rev.Spec.DeepCopy(),
	}
}

func ptr[T any](v T) *T { return &v }
