package resources

import (
	"maps"
	"strconv"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"knative.dev/networking/pkg/apis/networking"
	"knative.dev/serving/pkg/apis/serving"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"

	"lap.dev/lap/sandboxes"
)

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
	svc.Annotations[AnnotationHarness] = HarnessID(agent)
	svc.Annotations[LabelGeneration] = strconv.FormatInt(agent.Generation, 10)
}
