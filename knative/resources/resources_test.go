package resources

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"lap.dev/lap/sandboxes"
)

// Fixtures shared by the builder and validation tests.
const (
	testSandboxID = "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"
	testAgentID   = "0193a1b2-0000-7000-8000-00000000a9e7"
)

func testAgent() sandboxes.AgentSpec {
	return sandboxes.AgentSpec{
		ID:         testAgentID,
		Name:       "reviewer",
		HarnessID:  "lap",
		Generation: 3,
		Env: map[string]string{
			"REPO_URL":         "https://git.example/acme/app.git",
			"BRANCH":           "main",
			"AGENT_PROMPT":     "You review pull requests.",
			"LAP_MODEL":        "mock/tools",
			"LITELLM_API_BASE": "http://lapd.lap-system.svc.cluster.local/llm",
		},
		Secrets: map[string]string{"GITHUB_TOKEN": "ghp_x"},
	}
}

func testSpec(id, role string) sandboxes.Spec {
	return sandboxes.Spec{
		ID:    id,
		Role:  role,
		Agent: testAgent(),
		Env: map[string]string{
			"HARNESS_AUTH_TOKEN": "tok-" + id,
			"LITELLM_API_KEY":    "lapsb_" + id,
			"PORT":               "4096", // Knative sets PORT itself
		},
	}
}

func testParams() Params {
	ws := resource.MustParse("10Gi")
	return Params{
		Namespace: "lap-agents",
		Images:    map[string]string{"lap": "kind.local/lap-harness:dev", "opencode": "lap.dev/harness-opencode:latest"},
		Resources: corev1.ResourceRequirements{
			Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("250m"), corev1.ResourceMemory: resource.MustParse("512Mi")},
			Limits:   corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("2"), corev1.ResourceMemory: resource.MustParse("2Gi")},
		},
		WorkspaceSize:  &ws,
		TimeoutSeconds: 3600,
		ClusterLocal:   true,
	}
}

// wantPodSpec is the pod every lap revision runs, with the given env.

func wantPodSpec(env []corev1.EnvVar, envFrom []corev1.EnvFromSource) corev1.PodSpec {
	p := testParams()
	tmp := resource.MustParse("1Gi")
	return corev1.PodSpec{
		Containers: []corev1.Container{{
			Name:            "harness",
			Image:           "kind.local/lap-harness:dev",
			ImagePullPolicy: corev1.PullIfNotPresent,
			Ports:           []corev1.ContainerPort{{Name: "http1", ContainerPort: 8080}},
			Env:             env,
			EnvFrom:         envFrom,
			Resources:       p.Resources,
			ReadinessProbe:  &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/"}}},
			VolumeMounts: []corev1.VolumeMount{
				{Name: "workspace", MountPath: "/workspace"},
				{Name: "tmp", MountPath: "/tmp"},
			},
			SecurityContext: &corev1.SecurityContext{
				RunAsNonRoot:             ptr(true),
				RunAsUser:                ptr[int64](65532),
				RunAsGroup:               ptr[int64](65532),
				ReadOnlyRootFilesystem:   ptr(true),
				AllowPrivilegeEscalation: ptr(false),
				Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
				SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
			},
		}},
		Volumes: []corev1.Volume{
			{Name: "workspace", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{SizeLimit: p.WorkspaceSize}}},
			{Name: "tmp", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{SizeLimit: &tmp}}},
		},
		AutomountServiceAccountToken: ptr(false),
		EnableServiceLinks:           ptr(false),
	}
}

func agentEnv() []corev1.EnvVar {
	return []corev1.EnvVar{
		{Name: "AGENT_PROMPT", Value: "You review pull requests."},
		{Name: "BRANCH", Value: "main"},
	}
}
