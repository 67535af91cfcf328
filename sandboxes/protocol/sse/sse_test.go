package sse

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/google/go-cmp/cmp"
)

// ev is an Event with string data, for readable tables.
type ev struct {
	Type, Data, ID string
}

// chunkings are the ways a test stream is handed to a Reader: whole, a
// byte at a time (every line end split from what follows), and with an
// error-free empty read before each byte.
var chunkings = map[string]func(string) io.Reader{
	"whole":    func(s string) io.Reader { return strings.NewReader(s) },
	"one byte": func(s string) io.Reader { return iotest.OneByteReader(strings.NewReader(s)) },
	"half":     func(s string) io.Reader { return iotest.HalfReader(strings.NewReader(s)) },
}

func TestReaderNext(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		in    string
		want  []ev
		end   error
		retry time.Duration
	}{
		{"empty stream", "", nil, io.EOF, 0},
		{"one event", "data: hi\n\n", []ev{{"message", "hi", ""}}, io.EOF, 0},
		{"named events", "event: ready\ndata: {\"a\":1}\n\nevent: done\ndata: {}\n\n",
			[]ev{{"ready", `{"a":1}`, ""}, {"done", "{}", ""}}, io.EOF, 0},
		{"multi-line data joined with LF", "data: a\ndata: b\ndata: c\n\n", []ev{{"message", "a\nb\nc", ""}}, io.EOF, 0},
		{"CRLF line ends", "event: x\r\ndata: 1\r\ndata: 2\r\n\r\n", []ev{{"x", "1\n2", ""}}, io.EOF, 0},
		{"CR line ends", "event: x\rdata: 1\rdata: 2\r\rdata: 3\r\r", []ev{{"x", "1\n2", ""}, {"message", "3", ""}}, io.EOF, 0},
		{"mixed line ends", "data: a\r\ndata: b\rdata: c\n\r\n", []ev{{"message", "a\nb\nc", ""}}, io.EOF, 0},
		{"comments skipped", ": ping\n\n:\n: another\ndata: x\n: inside\n\n", []ev{{"message", "x", ""}}, io.EOF, 0},
		{"no space after colon", "event:e\ndata:{}\n\n", []ev{{"e", "{}", ""}}, io.EOF, 0},
		{"only one leading space removed", "data:  two\n\n", []ev{{"message", " two", ""}}, io.EOF, 0},
		{"colon in value kept", "data: a: b\n\n", []ev{{"message", "a: b", ""}}, io.EOF, 0},
		{"field without colon", "data\n\ndata\ndata\n\n", []ev{{"message", "", ""}, {"message", "\n", ""}}, io.EOF, 0},
		{"empty data dispatches", "data:\n\n", []ev{{"message", "", ""}}, io.EOF, 0},
		{"no data: not dispatched", "event: lone\n\ndata: x\n\n", []ev{{"message", "x", ""}}, io.EOF, 0},
		{"type does not carry over", "event: a\ndata: 1\n\ndata: 2\n\n", []ev{{"a", "1", ""}, {"message", "2", ""}}, io.EOF, 0},
		{"id carries over", "id: 7\ndata: a\n\ndata: b\n\nid\ndata: c\n\n",
			[]ev{{"message", "a", "7"}, {"message", "b", "7"}, {"message", "c", ""}}, io.EOF, 0},
		{"id with NUL ignored", "id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n", []ev{{"message", "a", "1"}, {"message", "b", "1"}}, io.EOF, 0},
		{"id without data sets last id", "id: 9\n\ndata: a\n\n", []ev{{"message", "a", "9"}}, io.EOF, 0},
		{"retry", "retry: 1500\ndata: a\n\n", []ev{{"message", "a", ""}}, io.EOF, 1500 * time.Millisecond},
		{"bad retry ignored", "retry: 15s\nretry:\nretry: -1\ndata: a\n\n", []ev{{"message", "a", ""}}, io.EOF, 0},
		{"unknown fields ignored", "foo: bar\nData: no\ndata: yes\n\n", []ev{{"message", "yes", ""}}, io.EOF, 0},
		{"BOM skipped", "\xEF\xBB\xBFdata: a\n\n", []ev{{"message", "a", ""}}, io.EOF, 0},
		{"only the first BOM", "\xEF\xBB\xBF\xEF\xBB\xBFdata: a\n\ndata: b\n\n", []ev{{"message", "b", ""}}, io.EOF, 0},
		{"BOM alone", "\xEF\xBB\xBF", nil, io.EOF, 0},
		{"blank lines between events", "\n\n\ndata: a\n\n\n\n", []ev{{"message", "a", ""}}, io.EOF, 0},
		{"cut mid-event", "data: a\n\nevent: done\ndata: {", []ev{{"message", "a", ""}}, io.ErrUnexpectedEOF, 0},
		{"cut before the blank line", "data: a\n", nil, io.ErrUnexpectedEOF, 0},
		{"cut in a field line", "data: a\n\nda", []ev{{"message", "a", ""}}, io.ErrUnexpectedEOF, 0},
		{"trailing comment is a clean end", "data: a\n\n: bye", []ev{{"message", "a", ""}}, io.EOF, 0},
		{"UTF-8 kept", "data: héllo ✓\n\n", []ev{{"message", "héllo ✓", ""}}, io.EOF, 0},
		{"long line", "data: " + strings.Repeat("x", 100<<10) + "\n\ndata: end\n\n",
			[]ev{{"message", strings.Repeat("x", 100<<10), ""}, {"message", "end", ""}}, io.EOF, 0},
	}
	for _, tt := range tests {
		for how, chunk := range chunkings {
			t.Run(tt.name+"/"+how, func(t *testing.T) {
				t.Parallel()
				r := NewReader(chunk(tt.in))
				var got []ev
				var err error
				for range 100 {
					var e Event
					if e, err = r.Next(); err != nil {
						break
					}
					got = append(got, ev{e.Type, string(e.Data), e.ID})
				}
				if diff := cmp.Diff(tt.want, got); diff != "" {
					t.Errorf("events (-want +got):\n%s", diff)
				}
				if !errors.Is(err, tt.end) {
					t.Errorf("end = %v, want %v", err, tt.end)
				}
				if r.Retry() != tt.retry {
					t.Errorf("Retry() = %v, want %v", r.Retry(), tt.retry)
				}
			})
		}
	}
}

// A read error ends Next with that error, not with an end of stream.
func TestReaderReadError(t *testing.T) {
	t.Parallel()
	broken := errors.New("connection reset")
	r := NewReader(io.MultiReader(strings.NewReader("data: a\n\ndata: b\n"), iotest.ErrReader(broken)))
	e, err := r.Next()
	if err != nil || string(e.Data) != "a" {
		t.Fatalf("Next() = %q, %v; want a", e.Data, err)
	}
	if _, err := r.Next(); !errors.Is(err, broken) {
		t.Errorf("Next() error = %v, want %v", err, broken)
	}
}

// An event longer than the maximum fails with ErrTooLarge instead of
// being buffered; so does a single line.
func TestReaderMaxEventSize(t *testing.T) {
	t.Parallel()
	for _, in := range []string{
		"data: " + strings.Repeat("x", 200) + "\n\n",
		strings.Repeat("data: xxxxxxxxxx\n", 20) + "\n",
	} {
		r := NewReader(strings.NewReader(in))
		r.SetMaxEventSize(100)
		if _, err := r.Next(); !errors.Is(err, ErrTooLarge) {
			t.Errorf("Next() error = %v, want ErrTooLarge", err)
		}
		r = NewReader(strings.NewReader(in))
		r.SetMaxEventSize(0)
		if _, err := r.Next(); err != nil {
			t.Errorf("Next() without a bound: %v", err)
		}
	}
}

// An event whose blank line ends in a CR is returned at once, without
// waiting to see whether an LF follows (it may never come).
func TestReaderDoesNotWaitAfterCR(t *testing.T) {
	t.Parallel()
	pr, pw := io.Pipe()
	defer pw.Close()
	r := NewReader(pr)
	got := make(chan string, 2)
	go func() {
		for {
			e, err := r.Next()
			if err != nil {
				close(got)
				return
			}
			got <- string(e.Data)
		}
	}()
	for _, want := range []string{"a", "b"} {
		go func() { _, _ = io.WriteString(pw, "data: "+want+"\r\r") }()
		select {
		case data := <-got:
			if data != want {
				t.Fatalf("event = %q, want %q", data, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("event %q not returned while the stream waits after its CR", want)
		}
	}
	// The LF of a CRLF split across writes still ends only that line.
	go func() {
		_, _ = io.WriteString(pw, "data: c\r")
		_, _ = io.WriteString(pw, "\n\r\n")
	}()
	select {
	case data := <-got:
		if data != "c" {
			t.Fatalf("event = %q, want c", data)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("event c not returned")
	}
}

// A frame cut by a read error is returned as far as it came (a relay
// passes on what the upstream sent), and the error at the next call.
func TestReaderNextFrameReadError(t *testing.T) {
	t.Parallel()
	broken := errors.New("connection reset")
	r := NewReader(io.MultiReader(strings.NewReader("data: a\n\ndata: b"), iotest.ErrReader(broken)))
	for _, want := range []string{"data: a\n\n", "data: b"} {
		f, err := r.NextFrame()
		if err != nil || string(f) != want {
			t.Fatalf("NextFrame() = %q, %v; want %q", f, err, want)
		}
	}
	if _, err := r.NextFrame(); !errors.Is(err, broken) {
		t.Errorf("NextFrame() error = %v, want %v", err, broken)
	}
}

// Lines that end exactly at the end of the reader's buffer, whatever their
// line end, and a CRLF split by it, read as any other.
func TestReaderBufferEdges(t *testing.T) {
	t.Parallel()
	for n := initialBuffer - 12; n < initialBuffer+4; n++ {
		for _, end := range []string{"\n", "\r", "\r\n"} {
			x := strings.Repeat("x", n)
			in := "data: " + x + end + end + "data: b" + end + end
			for how, chunk := range chunkings {
				r := NewReader(chunk(in))
				var got []string
				for {
					e, err := r.Next()
					if err != nil {
						break
					}
					got = append(got, string(e.Data))
				}
				if len(got) != 2 || got[0] != x || got[1] != "b" {
					t.Errorf("n=%d end=%q %s: read %d events", n, end, how, len(got))
				}
				r = NewReader(chunk(in))
				var frames []string
				for {
					f, err := r.NextFrame()
					if err != nil {
						break
					}
					frames = append(frames, string(f))
				}
				if strings.Join(frames, "") != in || len(frames) != 2 {
					t.Errorf("n=%d end=%q %s: %d frames do not make the stream", n, end, how, len(frames))
				}
			}
		}
	}
}

func TestReaderLastEventID(t *testing.T) {
	t.Parallel()
	r := NewReader(strings.NewReader("id: 1\ndata: a\n\nid: 2\n\n"))
	if _, err := r.Next(); err != nil || r.LastEventID() != "1" {
		t.Fatalf("after the first event: %v, LastEventID() = %q", err, r.LastEventID())
	}
	if _, err := r.Next(); err != io.EOF || r.LastEventID() != "2" {
		t.Errorf("at the end: %v, LastEventID() = %q, want EOF and 2", err, r.LastEventID())
	}
}

func TestReaderNextFrame(t *testing.T) {
	t.Parallel()
	long := "data: " + strings.Repeat("x", 100<<10) + "\n\n"
	tests := []struct {
		name string
		in   string
		want []string
	}{
		{"empty", "", nil},
		{"events one by one", "data: a\n\ndata: b\n\n", []string{"data: a\n\n", "data: b\n\n"}},
		{"comments are frames", ": ping\n\ndata: a\n\n", []string{": ping\n\n", "data: a\n\n"}},
		{"CRLF", "event: x\r\ndata: a\r\n\r\n", []string{"event: x\r\ndata: a\r\n\r\n"}},
		{"CR", "data: a\r\rdata: b\r\r", []string{"data: a\r\r", "data: b\r\r"}},
		{"CR then CRLF", "data: a\r\n\rdata: b\r\r\n", []string{"data: a\r\n\r", "data: b\r\r\n"}},
		{"last frame without blank line", "data: a\n\ndata: tail", []string{"data: a\n\n", "data: tail"}},
		{"a line longer than the buffer", long + "data: end\n\n", []string{long, "data: end\n\n"}},
		{"BOM kept", "\xEF\xBB\xBFdata: a\n\n", []string{"\xEF\xBB\xBFdata: a\n\n"}},
		{"leading blank lines", "\n\ndata: a\n\n", []string{"\n", "\n", "data: a\n\n"}},
	}
	for _, tt := range tests {
		for how, chunk := range chunkings {
			t.Run(tt.name+"/"+how, func(t *testing.T) {
				t.Parallel()
				r := NewReader(chunk(tt.in))
				r.SetMaxEventSize(0)
				var got []string
				var err error
				for range 100 {
					var f []byte
					if f, err = r.NextFrame(); err != nil {
						break
					}
					got = append(got, string(f))
				}
				if err != io.EOF {
					t.Errorf("end = %v, want EOF", err)
				}
				if strings.Join(got, "") != tt.in {
					t.Errorf("frames %q do not make the stream %q", got, tt.in)
				}
				if diff := cmp.Diff(tt.want, got); diff != "" {
					t.Errorf("frames (-want +got):\n%s", diff)
				}
			})
		}
	}
}

func TestParseFrame(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		frame string
		want  ev
		ok    bool
	}{
		{"event", "event: message_delta\r\ndata: {\"a\":\ndata: 1}\r\nid: 3\r\n\r\n", ev{"message_delta", "{\"a\":\n1}", "3"}, true},
		{"comment only", ": keep-alive\n\n", ev{}, false},
		{"no blank line", "data: tail", ev{"message", "tail", ""}, true},
		{"CR", "data: a\rdata: b\r\r", ev{"message", "a\nb", ""}, true},
		{"BOM", "\xEF\xBB\xBFdata: a\n\n", ev{"message", "a", ""}, true},
		{"type without data", "event: x\n\n", ev{}, false},
		{"after a CRLF split at its CR", "\ndata: a\r\n\r\n", ev{"message", "a", ""}, true},
		{"stops at the blank line", "data: a\n\ndata: b\n\n", ev{"message", "a", ""}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e, ok := ParseFrame([]byte(tt.frame))
			if diff := cmp.Diff(tt.want, ev{e.Type, string(e.Data), e.ID}); diff != "" || ok != tt.ok {
				t.Errorf("ParseFrame(%q) ok = %v, want %v; (-want +got):\n%s", tt.frame, ok, tt.ok, diff)
			}
		})
	}
	// A single data line is not copied.
	frame := []byte("data: abc\n\n")
	e, _ := ParseFrame(frame)
	e.Data[0] = 'X'
	if frame[6] != 'X' {
		t.Error("ParseFrame copied a single data line")
	}
}

func TestAppendEvent(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		ev   Event
		want string
		err  error
	}{
		{"data only", Event{Data: []byte(`{"a":1}`)}, "data: {\"a\":1}\n\n", nil},
		{"named", Event{Type: "done", Data: []byte("{}")}, "event: done\ndata: {}\n\n", nil},
		{"with id", Event{Type: "x", ID: "42", Data: []byte("d")}, "event: x\nid: 42\ndata: d\n\n", nil},
		{"empty data", Event{Type: "x"}, "event: x\ndata: \n\n", nil},
		{"multi-line data", Event{Data: []byte("a\nb\r\nc\rd\n")}, "data: a\ndata: b\ndata: c\ndata: d\ndata: \n\n", nil},
		{"line end in type", Event{Type: "a\nb", Data: []byte("x")}, "", ErrBadField},
		{"line end in id", Event{ID: "1\r", Data: []byte("x")}, "", ErrBadField},
		{"NUL in id", Event{ID: "1\x00", Data: []byte("x")}, "", ErrBadField},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := AppendEvent(nil, tt.ev)
			if !errors.Is(err, tt.err) || string(got) != tt.want {
				t.Errorf("AppendEvent(%+v) = %q, %v; want %q, %v", tt.ev, got, err, tt.want, tt.err)
			}
		})
	}
	if got := string(AppendComment(nil, "ping")); got != ": ping\n\n" {
		t.Errorf("AppendComment(ping) = %q", got)
	}
	if got := string(AppendComment(nil, "a\nb")); got != ": a\n: b\n\n" {
		t.Errorf("AppendComment(a\\nb) = %q", got)
	}
}

// What a Writer writes, a Reader reads back as it was (a data line end,
// whichever it was, comes back as "\n").
func TestWriterRoundTrip(t *testing.T) {
	t.Parallel()
	events := []Event{
		{Type: "ready", Data: []byte(`{"x":1}`)},
		{Data: []byte("two\nlines")},
		{Type: "with-id", ID: "7", Data: []byte("")},
		{Data: []byte("\n\nblank lines inside\n")},
		{Data: []byte(strings.Repeat("long ", 50000))},
	}
	var out bytes.Buffer
	bw := bufio.NewWriter(&out)
	w := NewWriter(bw)
	for i, e := range events {
		if err := w.Event(e); err != nil {
			t.Fatal(err)
		}
		if bw.Buffered() != 0 {
			t.Fatalf("event %d left unflushed", i)
		}
		if err := w.Comment("keep-alive"); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Retry(3 * time.Second); err != nil {
		t.Fatal(err)
	}
	r := NewReader(&out)
	for _, want := range events {
		got, err := r.Next()
		if err != nil {
			t.Fatal(err)
		}
		wantType := want.Type
		if wantType == "" {
			wantType = "message"
		}
		if got.Type != wantType || string(got.Data) != string(want.Data) || got.ID != want.ID && want.ID != "" {
			t.Errorf("read %q %q %q, wrote %+v", got.Type, got.Data, got.ID, want)
		}
	}
	if _, err := r.Next(); err != io.EOF {
		t.Errorf("end = %v, want EOF", err)
	}
	if r.Retry() != 3*time.Second {
		t.Errorf("Retry() = %v, want 3s", r.Retry())
	}
}

// A Writer on an http.ResponseWriter flushes each event to the client.
func TestWriterFlushesResponses(t *testing.T) {
	t.Parallel()
	next := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		rw.Header().Set("Content-Type", "text/event-stream")
		w := NewWriter(rw)
		for _, d := range []string{"one", "two"} {
			if err := w.Event(Event{Data: []byte(d)}); err != nil {
				return
			}
			select {
			case <-next:
			case <-r.Context().Done():
				return
			}
		}
	}))
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	r := NewReader(resp.Body)
	for _, want := range []string{"one", "two"} {
		e, err := r.Next() // would block until the handler ends if unflushed
		if err != nil || string(e.Data) != want {
			t.Fatalf("Next() = %q, %v; want %q", e.Data, err, want)
		}
		next <- struct{}{}
	}
}

// Reading a stream of events allocates nothing per event once the buffers
// have grown (the event type string is made once while it repeats).
func TestReaderAllocations(t *testing.T) {
	const event = "event: harness_event\ndata: {\"type\":\"message.part.updated\",\"properties\":{\"delta\":\"hello\"}}\n\n"
	stream := strings.NewReader(strings.Repeat(event, 2000))
	r := NewReader(stream)
	if _, err := r.Next(); err != nil {
		t.Fatal(err)
	}
	allocs := testing.AllocsPerRun(1000, func() {
		if _, err := r.Next(); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("Next allocates %v times per event, want 0", allocs)
	}
	var buf []byte
	w := NewWriter(io.Discard)
	e := Event{Type: "harness_event", Data: []byte(`{"type":"x"}`)}
	allocs = testing.AllocsPerRun(1000, func() {
		buf, _ = AppendEvent(buf[:0], e)
		_ = w.Event(e)
	})
	if allocs != 0 {
		t.Errorf("writing allocates %v times per event, want 0", allocs)
	}
}

func BenchmarkReaderNext(b *testing.B) {
	const event = "data: {\"type\":\"message.part.updated\",\"properties\":{\"sessionID\":\"s1\",\"delta\":\"hello world\"}}\n\n"
	stream := []byte(strings.Repeat(event, 1000))
	b.SetBytes(int64(len(stream)))
	b.ReportAllocs()
	for b.Loop() {
		r := NewReader(bytes.NewReader(stream))
		for {
			if _, err := r.Next(); err != nil {
				break
			}
		}
	}
}

// readAll returns every event (as type, data and id) and the final error.
func readAll(r *Reader) ([]ev, error) {
	var got []ev
	for {
		e, err := r.Next()
		if err != nil {
			return got, err
		}
		got = append(got, ev{e.Type, string(e.Data), e.ID})
	}
}

// However a stream is cut into reads, it reads as the same events, and its
// frames make it byte for byte.
func FuzzReader(f *testing.F) {
	for _, s := range []string{
		"data: a\n\n", "event: x\r\ndata: 1\r\n\r\n", "data: a\rdata: b\r\r", ": c\n\nid: 1\ndata\n\n",
		"\xEF\xBB\xBFretry: 10\ndata: x\n\n", "data: a\r\n\rdata: b\n\r\n", "data: cut",
	} {
		f.Add(s, 3)
	}
	f.Fuzz(func(t *testing.T, in string, size int) {
		size = 1 + abs(size)%64
		want, wantErr := readAll(NewReader(strings.NewReader(in)))
		got, err := readAll(NewReader(&chunked{s: in, n: size}))
		if diff := cmp.Diff(want, got); diff != "" || !errors.Is(err, wantErr) {
			t.Errorf("in reads of %d: (-whole +chunked)\n%s\nend %v, %v", size, diff, wantErr, err)
		}
		r := NewReader(&chunked{s: in, n: size})
		var frames []string
		for {
			f, err := r.NextFrame()
			if err != nil {
				break
			}
			frames = append(frames, string(f))
		}
		if strings.Join(frames, "") != in {
			t.Errorf("frames %q do not make %q", frames, in)
		}
	})
}

func abs(n int) int {
	if n < 0 {
		return -n
	}
	return n
}

// chunked reads s at most n bytes at a time.
type chunked struct {
	s string
	n int
}

func (c *chunked) Read(p []byte) (int, error) {
	if c.s == "" {
		return 0, io.EOF
	}
	k := copy(p[:min(len(p), c.n)], c.s)
	c.s = c.s[k:]
	return k, nil
}
