package box

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"lap.dev/lap/e2e/box/boxnet"
	"lap.dev/lap/e2e/box/ingress"
	"lap.dev/lap/e2e/box/proc"
	"lap.dev/lap/e2e/kubeapitest"
)

// The box's own Knative settings, on top of the release's ConfigMaps and
// lap's patches (config/deploy/knative-patches).
var boxConfig = map[string]map[string]string{
	// Test windows: a revision without traffic is at zero seconds after
	// its last request. The activator stays in every request's path
	// (target-burst-capacity -1): with no cluster DNS and no ClusterIPs,
	// the autoscaler's probe before scaling to zero could not reach pods
	// otherwise.
	"config-autoscaler": {
		"stable-window":                      "6s",
		"scale-to-zero-grace-period":         "6s",
		"scale-to-zero-pod-retention-period": "0s",
		"target-burst-capacity":              "-1",
	},
	"config-deployment": {"queue-sidecar-image": QueueImage},
	"config-network":    {"ingress-class": ingress.Class},
}

// boxRegistry is the registry of the box's images.
const boxRegistry = "box.local"

// controlPlane are Knative Serving's components the box runs, in start
// order after the webhook.
var controlPlane = []string{"controller", "autoscaler", "activator"}

// knative installs and starts Knative Serving in the box.
type knative struct {
	b     *Box
	kube  kubernetes.Interface
	bins  binaryPaths
	opts  Options
	comps map[string]*knComponent
	// objects to apply, by phase
	crds, resources, webhooks []*unstructured.Unstructured
	services                  []*corev1.Service
}

// knComponent is one of Knative's Deployments, run as a process.
type knComponent struct {
	name   string
	deploy *appsv1.Deployment
	ns     boxnet.Namespace
}

func (k *knative) install(ctx context.Context) error {
	steps := []struct {
		name string
		f    func(context.Context) error
	}{
		{"knative manifests", k.read},
		{"knative namespaces", k.namespaces},
		{"knative resources", k.apply},
		{"knative webhook", k.startWebhook},
		{"knative controller, autoscaler, activator", k.startControlPlane},
	}
	for _, s := range steps {
		if err := k.b.step(s.name, func() error { return s.f(ctx) }); err != nil {
			return err
		}
	}
	return nil
}

// read loads the release files from the modules knserving pins.
func (k *knative) read(ctx context.Context) error {
	mods := map[string]string{}
	for _, m := range []string{"knative.dev/serving", "knative.dev/networking", "knative.dev/caching"} {
		dir, err := moduleDir(ctx, k.b.root, m)
		if err != nil {
			return err
		}
		mods[m] = dir
	}
	serving := filepath.Join(mods["knative.dev/serving"], "config", "core")
	networking := filepath.Join(mods["knative.dev/networking"], "config")
	read := func(paths ...string) ([]*unstructured.Unstructured, error) {
		return kubeapitest.ReadManifests(paths...)
	}
	var err error
	k.crds, err = read(
		filepath.Join(serving, "300-resources"),
		filepath.Join(networking, "certificate.yaml"),
		filepath.Join(networking, "domain-claim.yaml"),
		filepath.Join(networking, "ingress.yaml"),
		filepath.Join(networking, "serverlessservice.yaml"),
		filepath.Join(mods["knative.dev/caching"], "config", "image.yaml"),
	)
	if err != nil {
		return err
	}
	ns, err := read(filepath.Join(serving, "100-namespace.yaml"))
	if err != nil {
		return err
	}
	configMaps, err := read(filepath.Join(serving, "configmaps"), filepath.Join(networking, "config-network.yaml"))
	if err != nil {
		return err
	}
	if err := k.configure(configMaps); err != nil {
		return err
	}
	hooks, err := read(filepath.Join(serving, "webhooks"))
	if err != nil {
		return err
	}
	k.resources = append(append(ns, configMaps...), ofKind(hooks, "Secret")...)
	k.webhooks = append(ofKind(hooks, "MutatingWebhookConfiguration"), ofKind(hooks, "ValidatingWebhookConfiguration")...)

	k.comps = map[string]*knComponent{}
	for _, name := range append([]string{"webhook"}, controlPlane...) {
		objs, err := read(filepath.Join(serving, "deployments", name+".yaml"))
		if err != nil {
			return err
		}
		for _, o := range objs {
			switch o.GetKind() {
			case "Deployment":
				d := &appsv1.Deployment{}
				if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, d); err != nil {
					return fmt.Errorf("deployment %s: %w", name, err)
				}
				k.comps[name] = &knComponent{name: name, deploy: d}
			case "Service":
				s := &corev1.Service{}
				if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, s); err != nil {
					return fmt.Errorf("service in %s: %w", name, err)
				}
				k.services = append(k.services, s)
			}
		}
		if k.comps[name] == nil {
			return fmt.Errorf("%s.yaml has no Deployment", name)
		}
	}
	return nil
}

// configure applies lap's patches, the box's settings and the caller's
// overrides to the release's ConfigMaps.
func (k *knative) configure(configMaps []*unstructured.Unstructured) error {
	patches, err := kubeapitest.ReadManifests(filepath.Join(k.b.root, "config", "deploy", "knative-patches"))
	if err != nil {
		return fmt.Errorf("lap's Knative patches: %w", err)
	}
	layers := []map[string]map[string]string{dataOf(ofKind(patches, "ConfigMap")), boxConfig, k.opts.Config}
	for _, cm := range configMaps {
		data, _, _ := unstructured.NestedStringMap(cm.Object, "data")
		if data == nil {
			data = map[string]string{}
		}
		for _, layer := range layers {
			for key, v := range layer[cm.GetName()] {
				data[key] = v
			}
		}
		if cm.GetName() == "config-deployment" {
			skip := strings.Split(data["registries-skipping-tag-resolving"], ",")
			if !containsString(skip, boxRegistry) {
				data["registries-skipping-tag-resolving"] = strings.Trim(strings.Join(append(skip, boxRegistry), ","), ",")
			}
		}
		if err := unstructured.SetNestedStringMap(cm.Object, data, "data"); err != nil {
			return err
		}
	}
	return nil
}

func dataOf(cms []*unstructured.Unstructured) map[string]map[string]string {
	out := map[string]map[string]string{}
	for _, cm := range cms {
		data, _, _ := unstructured.NestedStringMap(cm.Object, "data")
		out[cm.GetName()] = data
	}
	return out
}

func ofKind(objs []*unstructured.Unstructured, kind string) []*unstructured.Unstructured {
	var out []*unstructured.Unstructured
	for _, o := range objs {
		if o.GetKind() == kind {
			out = append(out, o)
		}
	}
	return out
}

func containsString(list []string, s string) bool {
	for _, v := range list {
		if strings.TrimSpace(v) == s {
			return true
		}
	}
	return false
}

// namespaces gives each component a network namespace whose /etc/hosts
// answers the cluster names of Knative's Services with the address of the
// component behind each.
func (k *knative) namespaces(ctx context.Context) error {
	ips := map[string]netip.Addr{}
	// Addresses first, so each hosts file can name all of them.
	for _, name := range sortedNames(k.comps) {
		ns, err := k.b.net.AddNamespace(ctx, name, nil)
		if err != nil {
			return err
		}
		k.comps[name].ns = ns
		ips[name] = ns.IP
	}
	k.b.compIPs = ips
	hosts := map[string]netip.Addr{}
	for _, s := range k.services {
		c := k.componentOf(s)
		if c == nil {
			continue
		}
		for _, h := range []string{s.Name + "." + s.Namespace, s.Name + "." + s.Namespace + ".svc", s.Name + "." + s.Namespace + ".svc.cluster.local"} {
			hosts[h] = c.ns.IP
		}
	}
	for _, c := range k.comps {
		dir := filepath.Join("/etc/netns", c.ns.Name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		h := map[string]netip.Addr{c.name + "-box": c.ns.IP}
		for name, ip := range hosts {
			h[name] = ip
		}
		if err := os.WriteFile(filepath.Join(dir, "hosts"), boxnet.HostsFile(h), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// componentOf is the component a Service selects.
func (k *knative) componentOf(s *corev1.Service) *knComponent {
	for _, c := range k.comps {
		labels := c.deploy.Spec.Template.Labels
		match := len(s.Spec.Selector) > 0
		for key, v := range s.Spec.Selector {
			match = match && labels[key] == v
		}
		if match {
			return c
		}
	}
	return nil
}

// apply installs the CRDs, the namespace, the ConfigMaps, the webhook's
// Secret, and the components' Services: selector-less, with Endpoints
// written here at the components' addresses.
func (k *knative) apply(ctx context.Context) error {
	if err := kubeapitest.Apply(ctx, k.b.Config, append(k.crds, k.resources...)...); err != nil {
		return err
	}
	for _, s := range k.services {
		c := k.componentOf(s)
		if c == nil {
			continue
		}
		svc := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: s.Name, Namespace: s.Namespace, Labels: s.Labels},
			Spec:       corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, Ports: s.Spec.Ports},
		}
		if _, err := k.kube.CoreV1().Services(s.Namespace).Create(ctx, svc, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("service %s: %w", s.Name, err)
		}
		subset := corev1.EndpointSubset{Addresses: []corev1.EndpointAddress{{IP: c.ns.IP.String()}}}
		for _, p := range s.Spec.Ports {
			subset.Ports = append(subset.Ports, corev1.EndpointPort{Name: p.Name, Port: int32(c.targetPort(p)), Protocol: corev1.ProtocolTCP})
		}
		ep := &corev1.Endpoints{
			ObjectMeta: metav1.ObjectMeta{Name: s.Name, Namespace: s.Namespace, Labels: s.Labels},
			Subsets:    []corev1.EndpointSubset{subset},
		}
		if _, err := k.kube.CoreV1().Endpoints(s.Namespace).Create(ctx, ep, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("endpoints %s: %w", s.Name, err)
		}
	}
	return nil
}

// targetPort resolves a Service port's target on the component.
func (c *knComponent) targetPort(p corev1.ServicePort) int {
	switch {
	case p.TargetPort.Type == intstr.Int && p.TargetPort.IntVal != 0:
		return int(p.TargetPort.IntVal)
	case p.TargetPort.Type == intstr.String:
		for _, cp := range c.deploy.Spec.Template.Spec.Containers[0].Ports {
			if cp.Name == p.TargetPort.StrVal {
				return int(cp.ContainerPort)
			}
		}
	}
	return int(p.Port)
}

// startWebhook starts the webhook, installs the webhook configurations and
// waits until the webhook has given them its CA bundle and rules: from
// then on every Knative object is defaulted and validated.
func (k *knative) startWebhook(ctx context.Context) error {
	c := k.comps["webhook"]
	if err := k.start(c); err != nil {
		return err
	}
	if err := k.waitReady(ctx, c); err != nil {
		return err
	}
	if err := kubeapitest.Apply(ctx, k.b.Config, k.webhooks...); err != nil {
		return err
	}
	adm := k.kube.AdmissionregistrationV1()
	return k.poll(ctx, "webhook configurations", func() (bool, error) {
		for _, o := range k.webhooks {
			var hooks []admissionv1.WebhookClientConfig
			var rules int
			switch o.GetKind() {
			case "MutatingWebhookConfiguration":
				cfg, err := adm.MutatingWebhookConfigurations().Get(ctx, o.GetName(), metav1.GetOptions{})
				if err != nil {
					return false, err
				}
				for _, h := range cfg.Webhooks {
					hooks, rules = append(hooks, h.ClientConfig), rules+len(h.Rules)
				}
			case "ValidatingWebhookConfiguration":
				cfg, err := adm.ValidatingWebhookConfigurations().Get(ctx, o.GetName(), metav1.GetOptions{})
				if err != nil {
					return false, err
				}
				for _, h := range cfg.Webhooks {
					hooks, rules = append(hooks, h.ClientConfig), rules+len(h.Rules)
				}
			}
			if rules == 0 {
				return false, nil
			}
			for _, h := range hooks {
				if len(h.CABundle) == 0 {
					return false, nil
				}
			}
		}
		return true, nil
	})
}

// startControlPlane starts the controller, the autoscaler and the
// activator and waits until each passes its readiness probe.
func (k *knative) startControlPlane(ctx context.Context) error {
	for _, name := range controlPlane {
		if err := k.start(k.comps[name]); err != nil {
			return err
		}
	}
	var wg sync.WaitGroup
	errs := make([]error, len(controlPlane))
	for i, name := range controlPlane {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = k.waitReady(ctx, k.comps[name])
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// start runs a component in its namespace with its Deployment's
// environment (fieldRefs resolved as a kubelet would) and the box's
// kubeconfig.
func (k *knative) start(c *knComponent) error {
	spec := c.deploy.Spec.Template.Spec.Containers[0]
	env := []string{
		"KUBECONFIG=" + k.b.Kubeconfig,
		"PATH=" + os.Getenv("PATH"),
	}
	for _, e := range spec.Env {
		v := e.Value
		if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			switch e.ValueFrom.FieldRef.FieldPath {
			case "metadata.name":
				v = c.name + "-box"
			case "metadata.namespace":
				v = SystemNamespace
			case "status.podIP":
				v = c.ns.IP.String()
			default:
				return fmt.Errorf("%s: env %s: fieldRef %s", c.name, e.Name, e.ValueFrom.FieldRef.FieldPath)
			}
		} else if e.ValueFrom != nil {
			return fmt.Errorf("%s: env %s: only values and fieldRefs are supported", c.name, e.Name)
		}
		env = append(env, e.Name+"="+v)
	}
	p, err := proc.Start(proc.Spec{
		Argv:  append([]string{k.bins.knative[c.name]}, spec.Args...),
		Env:   env,
		Dir:   k.b.Dir,
		Netns: c.ns.Name,
		Slot:  k.b.Slot,
		Log:   filepath.Join(k.b.Dir, "logs", "knative-"+c.name+".log"),
	})
	if err != nil {
		return err
	}
	k.b.procs = append(k.b.procs, &component{name: "knative " + c.name, p: p})
	return nil
}

// waitReady polls the component's readiness probe, from its Deployment,
// at its address.
func (k *knative) waitReady(ctx context.Context, c *knComponent) error {
	spec := c.deploy.Spec.Template.Spec.Containers[0]
	pr := spec.ReadinessProbe
	if pr == nil || pr.HTTPGet == nil {
		return fmt.Errorf("%s: no httpGet readiness probe in its Deployment", c.name)
	}
	port := pr.HTTPGet.Port.IntValue()
	if pr.HTTPGet.Port.Type == intstr.String {
		for _, p := range spec.Ports {
			if p.Name == pr.HTTPGet.Port.StrVal {
				port = int(p.ContainerPort)
			}
		}
	}
	scheme := strings.ToLower(string(pr.HTTPGet.Scheme))
	if scheme == "" {
		scheme = "http"
	}
	url := scheme + "://" + net.JoinHostPort(c.ns.IP.String(), strconv.Itoa(port)) + pr.HTTPGet.Path
	client := &http.Client{
		Timeout: time.Second,
		Transport: &http.Transport{
			DisableKeepAlives: true,
			TLSClientConfig:   &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // a kubelet does not verify probes
		},
	}
	return k.poll(ctx, c.name+" readiness ("+url+")", func() (bool, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return false, err
		}
		req.Header.Set("User-Agent", "kube-probe/1.34")
		res, err := client.Do(req)
		if err != nil {
			return false, nil
		}
		res.Body.Close()
		return res.StatusCode >= 200 && res.StatusCode < 400, nil
	})
}

// poll checks cond until it holds, a component exits, or ctx ends.
func (k *knative) poll(ctx context.Context, what string, cond func() (bool, error)) error {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		ok, err := cond()
		if ok {
			return nil
		}
		if err != nil {
			last = err
		}
		if err := k.b.exited(); err != nil {
			return fmt.Errorf("waiting for %s: %w", what, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w (last error: %v)", what, ctx.Err(), last)
		case <-tick.C:
		}
	}
}

// moduleDir is where a module of knserving's build list is, downloading
// it if need be.
func moduleDir(ctx context.Context, root, module string) (string, error) {
	cmd := exec.CommandContext(ctx, "go", "mod", "download", "-json", module)
	cmd.Dir = filepath.Join(root, "e2e", "knserving")
	out, err := cmd.Output()
	var m struct{ Dir, Error string }
	if jerr := json.Unmarshal(out, &m); jerr == nil && m.Error != "" {
		return "", fmt.Errorf("go mod download %s: %s", module, m.Error)
	}
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return "", fmt.Errorf("go mod download %s (in e2e/knserving): %w: %s", module, err, strings.TrimSpace(string(ee.Stderr)))
		}
		return "", fmt.Errorf("go mod download %s (in e2e/knserving): %w", module, err)
	}
	if m.Dir == "" {
		return "", fmt.Errorf("go mod download %s: no directory", module)
	}
	return m.Dir, nil
}
