package resources

import (
	"testing"
)

func TestNames(t *testing.T) {
	t.Parallel()
	tests := []struct {
		id, short string
	}{
		// The tag is made of the last 8 hex digits (ids were once UUIDv7s,
		// whose first 8 are the same for a minute's ids).
		{"0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", "2e3f4a5b"},
		{"0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5c", "2e3f4a5c"},
		{"0193A1B2-C3D4-7E5F-8A9B-0C1D2E3F4A5B", "2e3f4a5b"},
		{"not-a-uuid", "2184a32a"},
	}
	for _, tt := range tests {
		t.Run(tt.id, func(t *testing.T) {
			t.Parallel()
			if got := ShortID(tt.id); got != tt.short {
				t.Errorf("ShortID(%q) = %q, want %q", tt.id, got, tt.short)
			}
			if got, want := SandboxTag(tt.id), "s-"+tt.short; got != want {
				t.Errorf("SandboxTag(%q) = %q, want %q", tt.id, got, want)
			}
			if got, want := SandboxRevisionName("reviewer", tt.id), "reviewer-s-"+tt.short; got != want {
				t.Errorf("SandboxRevisionName = %q, want %q", got, want)
			}
		})
	}
	if got := BaseRevisionName("reviewer", 12); got != "reviewer-g12" {
		t.Errorf("BaseRevisionName = %q, want reviewer-g12", got)
	}
}

func TestValidateAgentName(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		ok   bool
	}{
		{"reviewer", true},
		{"a", true},
		{"my-agent-2", true},
		{"0123456789012345678901234567890123456789", false}, // leading digit
		{"abcdefghij-abcdefghij-abcdefghij-abcdefg", true},  // 40 characters
		{"abcdefghij-abcdefghij-abcdefghij-abcdefghij-abcdefghij-abc", false},
		{"Reviewer", false},
		{"", false},
	}
	for _, tt := range tests {
		if err := ValidateAgentName(tt.name); (err == nil) != tt.ok {
			t.Errorf("ValidateAgentName(%q) = %v, want ok=%v", tt.name, err, tt.ok)
		}
	}
}
