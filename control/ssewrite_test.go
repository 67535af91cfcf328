package control

import (
	"bufio"
	"bytes"
	"testing"
)

// lapd's SSE bytes stay what clients have always read: a named event with
// one data line, and a ping comment. (That encoding them allocates nothing
// is tested in package sse.)
func TestWriteSSEBytes(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	w := bufio.NewWriter(&out)
	if err := writeSSE(w, newEvent("done", map[string]string{"text": "a\nb"})); err != nil {
		t.Fatal(err)
	}
	if err := writePing(w); err != nil {
		t.Fatal(err)
	}
	const want = "event: done\ndata: {\"text\":\"a\\nb\"}\n\n: ping\n\n"
	if got := out.String(); got != want {
		t.Errorf("written %q, want %q", got, want)
	}
}
