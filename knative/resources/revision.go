package resources

import (
	"maps"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"knative.dev/serving/pkg/apis/autoscaling"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"

	"lap.dev/lap/sandboxes"
)

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
		// A turn is one request that sends nothing until the turn ends.
		// Knative 1.15 defaults the time to a response's first byte to
		// revision-timeout-seconds (300) whenever that is shorter than
		// TimeoutSeconds, and queue-proxy and the activator both enforce
		// it, so without this every turn longer than five minutes is cut.
		ResponseStartTimeoutSeconds: ptr(p.TimeoutSeconds),
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
		Image:           p.Images[HarnessID(agent)],
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
