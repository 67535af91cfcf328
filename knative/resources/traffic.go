package resources

import servingv1 "knative.dev/serving/pkg/apis/serving/v1"

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

// BaseRevisionOf is the revision the untagged target of traffic names:
// the agent's base revision; "" if there is none.
func BaseRevisionOf(traffic []servingv1.TrafficTarget) string {
	for _, t := range traffic {
		if t.Tag == "" && t.RevisionName != "" {
			return t.RevisionName
		}
	}
	return ""
}

// FindTag returns the target of traffic tagged tag, and whether there is
// one.
func FindTag(traffic []servingv1.TrafficTarget, tag string) (servingv1.TrafficTarget, bool) {
	for _, t := range traffic {
		if t.Tag == tag {
			return t, true
		}
	}
	return servingv1.TrafficTarget{}, false
}
