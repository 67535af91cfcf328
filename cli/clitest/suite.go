package clitest

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"lap.dev/lap/control/api"
)

// Target is a lapd for ChatSuite: the fake Server or a real one.
type Target struct {
	Bin   string // the built lap binary (BuildLap)
	URL   string // the server's root, e.g. http://127.0.0.1:3000
	Key   string // its master key
	Agent string // an existing agent whose harness has a chat API
	// Harness is the agent's harness_id, checked in the first line.
	Harness string
	// Reply, when set, checks the reply to a message in a new session
	// (turn 1) and after resuming (turn 2); else any non-empty reply passes.
	Reply func(turn int, message string) string
}

// Env is the environment the suite gives lap: a private HOME and the
// target's URL and key, nothing inherited but PATH.
func (tg Target) Env(home string) []string {
	return []string{
		"HOME=" + home,
		"PATH=" + os.Getenv("PATH"),
		"TERM=xterm-256color",
		"LAP_URL=" + tg.URL,
		"LAP_MASTER_KEY=" + tg.Key,
	}
}

var (
	agentLineRE   = regexp.MustCompile(`^✓ agent (\S+) \(([0-9a-f]{8}), harness=(\S+)\)$`)
	sessionLineRE = regexp.MustCompile(`^✓ session ([0-9a-f]{8})$`)
	footerRE      = regexp.MustCompile(`^\[\d+(\.\d)?s · [\d,]+ in / [\d,]+ out tokens · \$[\d.]+\]$`)
)

// ChatSuite checks chat mode end to end through a pseudo-terminal, the
// checks of issue 6: `lap <agent>` prints the five lines, a typed message
// gets a streamed reply, Ctrl-D exits 0 with the resume hint, `lap resume`
// continues the same conversation, `echo hi | lap <agent>` prints a reply
// and exits 0, and a wrong key exits non-zero saying so.
func ChatSuite(t *testing.T, tg Target) {
	var session, resumeID string // 8 hex and the hint's prefix, from the first subtest

	t.Run("five lines, a reply, Ctrl-D", func(t *testing.T) {
		tm := StartTerm(t, tg.Bin, tg.Env(t.TempDir()), tg.Agent)
		lines := tm.WaitFor("the chat prompt", func(l []string) bool { return len(l) >= 5 && l[4] == ">" })
		m := agentLineRE.FindStringSubmatch(lines[0])
		if m == nil || m[1] != tg.Agent || (tg.Harness != "" && m[3] != tg.Harness) {
			t.Fatalf("line 1 = %q, want ✓ agent %s (<8 hex>, harness=%s)", lines[0], tg.Agent, tg.Harness)
		}
		sm := sessionLineRE.FindStringSubmatch(lines[1])
		if sm == nil {
			t.Fatalf("line 2 = %q, want ✓ session <8 hex>", lines[1])
		}
		session = sm[1]
		want := []string{"waiting for sandbox. ready", "Chat mode — Ctrl-D to exit", ">"}
		if got := lines[2:5]; !equal(got, want) {
			t.Fatalf("lines 3-5 = %q, want %q", got, want)
		}
		if raw := tm.Raw(); !strings.Contains(raw[strings.LastIndex(raw, "Chat mode"):], "> ") {
			t.Fatalf("the prompt is not \"> \": output ends %q", tail(raw, 20))
		}

		msg := "hello from the pty test"
		tm.Send(msg + "\r")
		reply := waitReply(t, tm, msg)
		checkReply(t, tg, 1, msg, reply)

		tm.Send("\x04")
		// The hint names the session by its 8 hex digits (its full id in
		// the rare case that another session shares them).
		_, hm := tm.WaitLine(0, regexp.MustCompile(`^session `+session+` kept; resume it with: lap resume (`+session+`[0-9a-f-]*)$`))
		resumeID = hm[1]
		if code := tm.Wait(); code != 0 {
			t.Fatalf("Ctrl-D: exit code %d, want 0", code)
		}
	})
	if session == "" {
		return
	}

	t.Run("resume continues the conversation", func(t *testing.T) {
		tm := StartTerm(t, tg.Bin, tg.Env(t.TempDir()), "resume", resumeID)
		tm.WaitLine(0, regexp.MustCompile(`^✓ session `+session+` \(resumed, 2 messages\)$`))
		tm.WaitFor("the chat prompt", func(l []string) bool { return len(l) > 0 && l[len(l)-1] == ">" })
		msg := "and once more"
		tm.Send(msg + "\r")
		reply := waitReply(t, tm, msg)
		checkReply(t, tg, 2, msg, reply)
		tm.Send("\x03") // Ctrl-C at an empty prompt leaves too
		tm.WaitLine(0, regexp.MustCompile(`^session `+session+` kept; resume it with: lap resume `+session+`[0-9a-f-]*$`))
		if code := tm.Wait(); code != 0 {
			t.Fatalf("Ctrl-C at the prompt: exit code %d, want 0", code)
		}
		msgs := tg.messages(t, session)
		var users []string
		for _, m := range msgs {
			if m.Info.Role == "user" {
				users = append(users, m.Text())
			}
		}
		if want := []string{"hello from the pty test", msg}; len(msgs) != 4 || !equal(users, want) {
			t.Fatalf("session %s log: %d messages, user turns %q; want 4 messages, user turns %q", session, len(msgs), users, want)
		}
	})

	t.Run("echo hi | lap agent", func(t *testing.T) {
		cmd := exec.Command(tg.Bin, tg.Agent)
		cmd.Env = tg.Env(t.TempDir())
		cmd.Stdin = strings.NewReader("hi\n")
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := runWithDeadline(cmd); err != nil {
			t.Fatalf("echo hi | lap %s: %v\nstderr:\n%s", tg.Agent, err, stderr.String())
		}
		reply := strings.TrimSpace(stdout.String())
		if reply == "" {
			t.Fatalf("echo hi | lap %s printed no reply; stderr:\n%s", tg.Agent, stderr.String())
		}
		if tg.Reply != nil && reply != tg.Reply(1, "hi") {
			t.Fatalf("echo hi | lap %s = %q, want %q", tg.Agent, reply, tg.Reply(1, "hi"))
		}
	})

	t.Run("wrong key", func(t *testing.T) {
		bad := tg
		bad.Key = "not-the-master-key-at-all"
		tm := StartTerm(t, tg.Bin, bad.Env(t.TempDir()), tg.Agent)
		code := tm.Wait()
		screen := strings.Join(tm.Lines(), "\n")
		if code == 0 || !strings.Contains(screen, "master key rejected") {
			t.Fatalf("wrong key: exit %d, screen:\n%s\nwant a non-zero exit and \"master key rejected\"", code, screen)
		}
	})
}

// waitReply waits for the turn started by typing msg to end (its footer and
// a new prompt) and returns the reply's lines, blank ones dropped.
func waitReply(t *testing.T, tm *Term, msg string) []string {
	t.Helper()
	start, _ := tm.WaitLine(0, regexp.MustCompile(`^> `+regexp.QuoteMeta(msg)+`$`))
	var reply []string
	tm.WaitFor("the footer and the next prompt", func(l []string) bool {
		for i := start + 1; i < len(l)-1; i++ {
			if footerRE.MatchString(l[i]) && l[len(l)-1] == ">" {
				reply = nil
				for _, r := range l[start+1 : i] {
					if s := strings.TrimSpace(r); s != "" {
						reply = append(reply, s)
					}
				}
				return true
			}
		}
		return false
	})
	if len(reply) == 0 {
		t.Fatalf("empty reply to %q; screen:\n%s", msg, strings.Join(tm.Lines(), "\n"))
	}
	return reply
}

func checkReply(t *testing.T, tg Target, turn int, msg string, reply []string) {
	t.Helper()
	if tg.Reply == nil {
		return
	}
	if got, want := strings.Join(reply, " "), tg.Reply(turn, msg); got != want {
		t.Fatalf("reply to %q = %q, want %q", msg, got, want)
	}
}

// messages reads a session's log straight from the API, which resolves
// the short id.
func (tg Target) messages(t *testing.T, short string) []api.Message {
	t.Helper()
	// The log is {data: [...]}; a bare array is accepted too.
	var raw json.RawMessage
	tg.get(t, "/sessions/"+short+"/messages", &raw)
	var msgs api.List[api.Message]
	if bytes.HasPrefix(bytes.TrimSpace(raw), []byte("[")) {
		if err := json.Unmarshal(raw, &msgs.Data); err != nil {
			t.Fatalf("GET messages: %v", err)
		}
	} else if err := json.Unmarshal(raw, &msgs); err != nil {
		t.Fatalf("GET messages: %v", err)
	}
	return msgs.Data
}

func (tg Target) get(t *testing.T, path string, out any) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, tg.URL+api.BasePath+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+tg.Key)
	resp, err := (&http.Client{Timeout: Deadline}).Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", path, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
}

// EnsureAgent creates the agent req.Name on the server at url unless it
// exists, so ChatSuite can run against a fresh lapd.
func EnsureAgent(t *testing.T, url, key string, req api.CreateAgentRequest) {
	t.Helper()
	tg := Target{URL: url, Key: key}
	r, err := http.NewRequest(http.MethodGet, url+api.BasePath+"/agents/"+req.Name, nil)
	if err != nil {
		t.Fatal(err)
	}
	r.Header.Set("Authorization", "Bearer "+key)
	resp, err := (&http.Client{Timeout: Deadline}).Do(r)
	if err != nil {
		t.Fatalf("GET agent %s: %v", req.Name, err)
	}
	resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		return
	}
	body, _ := json.Marshal(req)
	r, err = http.NewRequest(http.MethodPost, tg.URL+api.BasePath+"/agents", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	r.Header.Set("Authorization", "Bearer "+key)
	r.Header.Set("Content-Type", "application/json")
	resp, err = (&http.Client{Timeout: Deadline}).Do(r)
	if err != nil {
		t.Fatalf("create agent %s: %v", req.Name, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated && resp.StatusCode != http.StatusOK {
		var e api.ErrorBody
		_ = json.NewDecoder(resp.Body).Decode(&e)
		t.Fatalf("create agent %s: %s %s", req.Name, resp.Status, e.Error.Message)
	}
}

// runWithDeadline runs cmd, killing it if it outlives Deadline.
func runWithDeadline(cmd *exec.Cmd) error {
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(Deadline):
		_ = cmd.Process.Kill()
		<-done
		return errors.New("did not exit within the deadline")
	}
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[len(s)-n:]
}
