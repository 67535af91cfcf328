package kubelet

import (
	"context"
	"fmt"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// defaultPath is the PATH of a container that sets none, as container
// images commonly do.
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// envName is what Kubernetes accepts as the name of an envFrom variable.
var envName = regexp.MustCompile(`^[-._a-zA-Z][-._a-zA-Z0-9]*$`)

// environment builds the container's environment as a kubelet does:
// envFrom first, then env (which wins), with $(VAR) references expanded
// and values naming a volume's mountPath rewritten to the volume's
// directory.
func (c *container) environment(ctx context.Context) ([]string, error) {
	vars := map[string]string{}
	var order []string
	set := func(k, v string) {
		if _, ok := vars[k]; !ok {
			order = append(order, k)
		}
		vars[k] = v
	}
	ns := c.w.pod.Namespace
	for _, ef := range c.spec.EnvFrom {
		switch {
		case ef.SecretRef != nil:
			s, err := c.w.k.client.CoreV1().Secrets(ns).Get(ctx, ef.SecretRef.Name, metav1.GetOptions{})
			if apierrors.IsNotFound(err) && optional(ef.SecretRef.Optional) {
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("envFrom secret %q: %w", ef.SecretRef.Name, err)
			}
			for _, k := range sortedKeys(s.Data) {
				if envName.MatchString(ef.Prefix + k) {
					set(ef.Prefix+k, string(s.Data[k]))
				}
			}
		case ef.ConfigMapRef != nil:
			cm, err := c.w.k.client.CoreV1().ConfigMaps(ns).Get(ctx, ef.ConfigMapRef.Name, metav1.GetOptions{})
			if apierrors.IsNotFound(err) && optional(ef.ConfigMapRef.Optional) {
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("envFrom configmap %q: %w", ef.ConfigMapRef.Name, err)
			}
			for _, k := range sortedKeys(cm.Data) {
				if envName.MatchString(ef.Prefix + k) {
					set(ef.Prefix+k, cm.Data[k])
				}
			}
		}
	}
	for _, e := range c.spec.Env {
		if e.ValueFrom == nil {
			set(e.Name, expand(e.Value, func(k string) (string, bool) { v, ok := vars[k]; return v, ok }))
			continue
		}
		v, skip, err := c.valueFrom(ctx, e.ValueFrom)
		if err != nil {
			return nil, fmt.Errorf("env %s: %w", e.Name, err)
		}
		if !skip {
			set(e.Name, v)
		}
	}
	if _, ok := vars["PATH"]; !ok {
		set("PATH", defaultPath)
	}
	if _, ok := vars["HOSTNAME"]; !ok {
		set("HOSTNAME", c.w.pod.Name)
	}
	env := make([]string, 0, len(order))
	for _, k := range order {
		env = append(env, k+"="+c.mapPath(vars[k]))
	}
	return env, nil
}

// valueFrom resolves one env source; skip reports an optional key that is
// absent, which leaves the variable unset.
func (c *container) valueFrom(ctx context.Context, src *corev1.EnvVarSource) (v string, skip bool, err error) {
	ns := c.w.pod.Namespace
	switch {
	case src.FieldRef != nil:
		v, err = c.w.fieldRef(src.FieldRef.FieldPath)
		return v, false, err
	case src.ResourceFieldRef != nil:
		v, err = c.w.resourceFieldRef(c.spec.Name, src.ResourceFieldRef)
		return v, false, err
	case src.SecretKeyRef != nil:
		ref := src.SecretKeyRef
		s, err := c.w.k.client.CoreV1().Secrets(ns).Get(ctx, ref.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) && optional(ref.Optional) {
			return "", true, nil
		}
		if err != nil {
			return "", false, fmt.Errorf("secret %q: %w", ref.Name, err)
		}
		b, ok := s.Data[ref.Key]
		if !ok {
			if optional(ref.Optional) {
				return "", true, nil
			}
			return "", false, fmt.Errorf("secret %q has no key %q", ref.Name, ref.Key)
		}
		return string(b), false, nil
	case src.ConfigMapKeyRef != nil:
		ref := src.ConfigMapKeyRef
		cm, err := c.w.k.client.CoreV1().ConfigMaps(ns).Get(ctx, ref.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) && optional(ref.Optional) {
			return "", true, nil
		}
		if err != nil {
			return "", false, fmt.Errorf("configmap %q: %w", ref.Name, err)
		}
		s, ok := cm.Data[ref.Key]
		if !ok {
			if optional(ref.Optional) {
				return "", true, nil
			}
			return "", false, fmt.Errorf("configmap %q has no key %q", ref.Name, ref.Key)
		}
		return s, false, nil
	}
	return "", false, fmt.Errorf("empty valueFrom")
}

// fieldRef resolves a downward-API field of the pod.
func (w *podWorker) fieldRef(path string) (string, error) {
	p := w.pod
	if k, ok := subscript(path, "metadata.labels"); ok {
		return p.Labels[k], nil
	}
	if k, ok := subscript(path, "metadata.annotations"); ok {
		return p.Annotations[k], nil
	}
	switch path {
	case "metadata.name":
		return p.Name, nil
	case "metadata.namespace":
		return p.Namespace, nil
	case "metadata.uid":
		return string(p.UID), nil
	case "spec.nodeName":
		return w.k.name, nil
	case "spec.serviceAccountName":
		return p.Spec.ServiceAccountName, nil
	case "status.hostIP", "status.hostIPs":
		return w.k.hostIP, nil
	case "status.podIP", "status.podIPs":
		return w.podIP(), nil
	}
	return "", fmt.Errorf("fieldRef %q is not supported", path)
}

// subscript parses "prefix['key']".
func subscript(path, prefix string) (string, bool) {
	rest, ok := strings.CutPrefix(path, prefix+"['")
	if !ok || !strings.HasSuffix(rest, "']") {
		return "", false
	}
	return strings.TrimSuffix(rest, "']"), true
}

// resourceFieldRef resolves a container's request or limit, rounded up to
// the divisor; a limit that is not set is the Node's capacity.
func (w *podWorker) resourceFieldRef(self string, ref *corev1.ResourceFieldSelector) (string, error) {
	name := ref.ContainerName
	if name == "" {
		name = self
	}
	i := slices.IndexFunc(w.pod.Spec.Containers, func(c corev1.Container) bool { return c.Name == name })
	if i < 0 {
		return "", fmt.Errorf("resourceFieldRef: no container %q", name)
	}
	res := w.pod.Spec.Containers[i].Resources
	kind, rname, ok := strings.Cut(ref.Resource, ".")
	if !ok {
		return "", fmt.Errorf("resourceFieldRef %q is not supported", ref.Resource)
	}
	list := res.Limits
	if kind == "requests" {
		list = res.Requests
	}
	q, set := list[corev1.ResourceName(rname)]
	if !set {
		switch corev1.ResourceName(rname) {
		case corev1.ResourceCPU:
			q = *resource.NewQuantity(int64(runtime.NumCPU()), resource.DecimalSI)
		case corev1.ResourceMemory:
			q = *resource.NewQuantity(memTotal(), resource.BinarySI)
		default:
			q = resource.Quantity{}
		}
		if kind == "requests" {
			q = resource.Quantity{}
		}
	}
	div := ref.Divisor
	if div.IsZero() {
		div = resource.MustParse("1")
	}
	if corev1.ResourceName(rname) == corev1.ResourceCPU {
		n := (q.MilliValue() + div.MilliValue() - 1) / div.MilliValue()
		return fmt.Sprint(max(n, 1)), nil
	}
	return fmt.Sprint((q.Value() + div.Value() - 1) / div.Value()), nil
}

// mapPath rewrites a value naming a volume's mountPath (or a path below
// it) to the volume's directory: the box has no mount namespaces, so this
// is how a container finds its emptyDir.
func (c *container) mapPath(v string) string {
	best := ""
	var dir string
	for _, m := range c.spec.VolumeMounts {
		mp := filepath.Clean(m.MountPath)
		if (v == mp || strings.HasPrefix(v, mp+"/")) && len(mp) > len(best) {
			best = mp
			dir = filepath.Join(c.w.dir, "volumes", m.Name, m.SubPath)
		}
	}
	if best == "" {
		return v
	}
	return dir + v[len(best):]
}

// expand replaces $(NAME) with lookup's value, as Kubernetes does in env
// values and args: $$ is a literal $, and an unknown name stays as it is.
func expand(s string, lookup func(string) (string, bool)) string {
	if !strings.Contains(s, "$") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' || i+1 >= len(s) {
			b.WriteByte(s[i])
			continue
		}
		switch s[i+1] {
		case '$':
			b.WriteByte('$')
			i++
		case '(':
			end := strings.IndexByte(s[i+2:], ')')
			if end < 0 {
				b.WriteString(s[i:])
				return b.String()
			}
			name := s[i+2 : i+2+end]
			if v, ok := lookup(name); ok {
				b.WriteString(v)
			} else {
				b.WriteString(s[i : i+3+end])
			}
			i += 2 + end
		default:
			b.WriteByte('$')
		}
	}
	return b.String()
}

func envLookup(env []string) func(string) (string, bool) {
	m := make(map[string]string, len(env))
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		m[k] = v
	}
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func optional(b *bool) bool { return b != nil && *b }

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
