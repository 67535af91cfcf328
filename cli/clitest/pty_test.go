package clitest

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestScreenLines(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		out  string
		want []string
	}{
		{"plain", "a\r\nb\r\n", []string{"a", "b"}},
		{"colours dropped", "\x1b[32m✓\x1b[0m ok\r\n", []string{"✓ ok"}},
		{"carriage return and erase", "waiting.\r\x1b[Kwaiting. ready\r\n", []string{"waiting. ready"}},
		{"cursor up and clear below", "raw one\r\nraw two\r\n\r\x1b[2A\x1b[J  rendered\r\n", []string{"  rendered"}},
		{"readline redraw", "\x1b[J\x1b[2K\r>  \b\x1b[J\x1b[2K\r> h\x1b[J\x1b[2K\r> hi\r\n", []string{"> hi"}},
		{"wrap at width", "abcdefghij", []string{"abcde", "fghij"}},
		{"osc dropped", "\x1b]11;?\x07x", []string{"x"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cols := 80
			if tt.name == "wrap at width" {
				cols = 5
			}
			if diff := cmp.Diff(tt.want, ScreenLines(tt.out, cols)); diff != "" {
				t.Errorf("ScreenLines(%q) (-want +got):\n%s", tt.out, diff)
			}
		})
	}
}
