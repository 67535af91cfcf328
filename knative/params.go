package knative

import (
	"fmt"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"lap.dev/lap/config"
	"lap.dev/lap/knative/resources"
	"lap.dev/lap/sandboxes"
)

// ParamsFromConfig resolves the builders' inputs from lap's settings.
func ParamsFromConfig(cfg config.Config) (resources.Params, error) {
	k := cfg.Knative
	p := resources.Params{
		Namespace:      cfg.KnativeNamespace,
		Images:         map[string]string{},
		TimeoutSeconds: int64(k.RevisionTimeout / time.Second),
		ClusterLocal:   k.ClusterLocal,
	}
	for _, h := range sandboxes.Harnesses() {
		p.Images[h.ID] = h.Image
		if img := k.HarnessImages[h.ImageSetting()]; img != "" {
			p.Images[h.ID] = img
		}
	}
	quantities := []struct {
		setting, value string
		list           *corev1.ResourceList
		name           corev1.ResourceName
	}{
		{"KNATIVE_SANDBOX_CPU_REQUEST", k.CPURequest, &p.Resources.Requests, corev1.ResourceCPU},
		{"KNATIVE_SANDBOX_CPU_LIMIT", k.CPULimit, &p.Resources.Limits, corev1.ResourceCPU},
		{"KNATIVE_SANDBOX_MEMORY_REQUEST", k.MemoryRequest, &p.Resources.Requests, corev1.ResourceMemory},
		{"KNATIVE_SANDBOX_MEMORY_LIMIT", k.MemoryLimit, &p.Resources.Limits, corev1.ResourceMemory},
	}
	for _, q := range quantities {
		if q.value == "" {
			continue
		}
		v, err := resource.ParseQuantity(q.value)
		if err != nil {
			return p, fmt.Errorf("%s=%q: %w", q.setting, q.value, err)
		}
		if *q.list == nil {
			*q.list = corev1.ResourceList{}
		}
		(*q.list)[q.name] = v
	}
	for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		req, hasReq := p.Resources.Requests[r]
		lim, hasLim := p.Resources.Limits[r]
		if hasReq && hasLim && req.Cmp(lim) > 0 {
			return p, fmt.Errorf("sandbox %s request %s exceeds its limit %s", r, req.String(), lim.String())
		}
	}
	if k.WorkspaceSize != "" {
		v, err := resource.ParseQuantity(k.WorkspaceSize)
		if err != nil {
			return p, fmt.Errorf("KNATIVE_SANDBOX_WORKSPACE_SIZE=%q: %w", k.WorkspaceSize, err)
		}
		p.WorkspaceSize = &v
	}
	return p, nil
}

// image returns the harness's image, or why it cannot be used.
func (b *Backend) image(harness string) (string, error) {
	h, ok := sandboxes.LookupHarness(harness)
	if !ok {
		return "", fmt.Errorf("unknown harness %q (known: %s)", harness, strings.Join(sandboxes.HarnessIDs(), ", "))
	}
	img := b.p.Images[h.ID]
	if strings.HasPrefix(img, "ko://") {
		return "", fmt.Errorf("harness %s has image %s, a ko reference that only `ko resolve` turns into an image: set %s (config/deploy does, through ko)", h.ID, img, h.ImageSetting())
	}
	if _, err := name.ParseReference(img); err != nil {
		return "", fmt.Errorf("harness %s image %q (%s): %w", h.ID, img, h.ImageSetting(), err)
	}
	return img, nil
}
