package resources

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"
)

func TestTraffic(t *testing.T) {
	t.Parallel()
	base := BaseTarget("reviewer-g3")
	a := SandboxTarget("s-aaaaaaaa", "reviewer-s-aaaaaaaa")
	b := SandboxTarget("s-bbbbbbbb", "reviewer-s-bbbbbbbb")
	other := servingv1.TrafficTarget{Tag: "canary", RevisionName: "reviewer-g2", Percent: ptr[int64](0)}
	tests := []struct {
		name string
		got  []servingv1.TrafficTarget
		want []servingv1.TrafficTarget
	}{
		{"add", WithTarget([]servingv1.TrafficTarget{base}, a), []servingv1.TrafficTarget{base, a}},
		{"add second", WithTarget([]servingv1.TrafficTarget{base, a}, b), []servingv1.TrafficTarget{base, a, b}},
		{"re-add replaces", WithTarget([]servingv1.TrafficTarget{base, a, b}, a), []servingv1.TrafficTarget{base, b, a}},
		{"remove", first(WithoutTag([]servingv1.TrafficTarget{base, a, b}, "s-aaaaaaaa")), []servingv1.TrafficTarget{base, b}},
		{"remove absent", first(WithoutTag([]servingv1.TrafficTarget{base, b}, "s-aaaaaaaa")), []servingv1.TrafficTarget{base, b}},
		{"new base keeps tags", WithBase([]servingv1.TrafficTarget{base, a, other}, "reviewer-g4"),
			[]servingv1.TrafficTarget{BaseTarget("reviewer-g4"), a, other}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if diff := cmp.Diff(tt.want, tt.got); diff != "" {
				t.Errorf("traffic (-want +got):\n%s", diff)
			}
		})
	}
	if _, found := WithoutTag([]servingv1.TrafficTarget{base, a}, "s-aaaaaaaa"); !found {
		t.Error("WithoutTag(present) found = false")
	}
	if n := SandboxTags([]servingv1.TrafficTarget{base, a, b, other}); n != 2 {
		t.Errorf("SandboxTags = %d, want 2 (the canary tag is not a sandbox)", n)
	}
}

// TestTrafficLookups: what the client layer reads from a route.
func TestTrafficLookups(t *testing.T) {
	t.Parallel()
	base := BaseTarget("reviewer-g3")
	a := SandboxTarget("s-aaaaaaaa", "reviewer-s-aaaaaaaa")
	tests := []struct {
		name     string
		traffic  []servingv1.TrafficTarget
		tag      string
		wantBase string
		want     servingv1.TrafficTarget
		wantOK   bool
	}{
		{"base and a tag", []servingv1.TrafficTarget{base, a}, "s-aaaaaaaa", "reviewer-g3", a, true},
		{"tag absent", []servingv1.TrafficTarget{base}, "s-aaaaaaaa", "reviewer-g3", servingv1.TrafficTarget{}, false},
		// A target by latestRevision names no revision: it is not a base.
		{"no base by name", []servingv1.TrafficTarget{{LatestRevision: ptr(true), Percent: ptr[int64](100)}, a}, "s-aaaaaaaa", "", a, true},
		{"empty route", nil, "s-aaaaaaaa", "", servingv1.TrafficTarget{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := BaseRevisionOf(tt.traffic); got != tt.wantBase {
				t.Errorf("BaseRevisionOf = %q, want %q", got, tt.wantBase)
			}
			got, ok := FindTag(tt.traffic, tt.tag)
			if ok != tt.wantOK {
				t.Errorf("FindTag(%q) found = %v, want %v", tt.tag, ok, tt.wantOK)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("FindTag(%q) (-want +got):\n%s", tt.tag, diff)
			}
		})
	}
}

func first[A, B any](a A, _ B) A { return a }
