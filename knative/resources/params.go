package resources

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
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
// the configuration (knative.ParamsFromConfig).
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
