// Package failures tests that the built lapd survives what goes wrong in
// production, on loopback with local sandboxes and the scripted fake LLM:
// lapd SIGKILLed in the middle of many streaming turns, a harness killed
// mid-turn, an upstream LLM that fails or hangs, and a data dir that fills
// up. Each checks what clients get, what the durable log holds, and that
// lapd goes on serving.
package failures

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"lap.dev/lap/control/api"
	"lap.dev/lap/e2e/fakellm"
	"lap.dev/lap/e2e/platform"
	"lap.dev/lap/internal/waitfor"
	"lap.dev/lap/store"
)

func TestMain(m *testing.M) {
	os.Exit(platform.Main(m))
}

// viaGateway routes the harnesses' LLM calls through lapd's gateway to the
// fake, as in production.
var viaGateway = map[string]string{"LAP_SANDBOX_GATEWAY_URL": ""}

func settings(extra map[string]string) map[string]string {
	out := map[string]string{"WARM_POOL_SIZE": "0"}
	for k, v := range viaGateway {
		out[k] = v
	}
	for k, v := range extra {
		out[k] = v
	}
	return out
}

// script answers by the user's words: "fast N" at once, "slow N" with a
// bash command that runs for ten minutes (until aborted), anything else
// with "re: <text>".
func script(r fakellm.Request) fakellm.Reply {
	text := r.LastUserText()
	switch {
	case strings.HasPrefix(text, "slow "):
		if r.Last().Role == "tool" {
			return fakellm.Text("finished " + text)
		}
		return fakellm.CallTool("bash", map[string]any{"command": "sleep 600", "timeout_s": 900})
	case strings.HasPrefix(text, "fast "):
		return fakellm.Text("answer to " + text)
	}
	return fakellm.Text("re: " + text)
}

// TestLapdKilledDuringStreamingTurns SIGKILLs lapd while 50 sessions
// stream a turn each: half have been answered (their clients saw `done`),
// half are running a long tool. After a restart every answered turn is in
// the log as completed, every running one as failed — none missing, none
// twice — and every session answers its next message.
func TestLapdKilledDuringStreamingTurns(t *testing.T) {
	t.Parallel()
	const sessions = 50
	// The restarted lapd listens where the first did, as in production:
	// the harnesses that outlive it reach its gateway at that address.
	p := platform.New(t, settings(map[string]string{"LAP_LISTEN": "127.0.0.1:" + platform.FreePort(t)}))
	p.LLM.Respond(script)
	l := p.Start()
	l.CreateAgent("survivor")
	ss := l.ReadySessions("survivor", sessions)

	text := func(i int) string {
		if i%2 == 0 {
			return fmt.Sprintf("fast %d", i)
		}
		return fmt.Sprintf("slow %d", i)
	}
	outcomes := make([]platform.Outcome, sessions)
	delivered := make(chan int, sessions)
	var wg sync.WaitGroup
	for i, s := range ss {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, err := l.StreamMessage(context.Background(), s.ID, text(i))
			if err != nil {
				outcomes[i] = platform.Outcome{Broken: err}
				return
			}
			outcomes[i] = st.Finish()
			if outcomes[i].Done != nil {
				delivered <- i
			}
		}()
	}
	// Kill once every fast turn is answered and every slow one runs its
	// tool (the harness has the model's call to bash).
	for range sessions / 2 {
		select {
		case <-delivered:
		case <-platform.Context(t).Done():
			t.Fatal("the fast turns were not answered")
		}
	}
	waitfor.Within(t, platform.Deadline, "every slow turn in its tool", func() bool {
		n := 0
		for _, r := range p.LLM.Requests() {
			if strings.HasPrefix(r.LastUserText(), "slow ") {
				n++
			}
		}
		return n >= sessions/2
	})
	l.Kill()
	wg.Wait()

	for i, o := range outcomes {
		if i%2 == 0 {
			require.NotNil(t, o.Done, "fast turn %d: %+v", i, o)
			assert.Equal(t, "answer to "+text(i), o.Done.Text())
		} else {
			assert.Nil(t, o.Done, "slow turn %d cannot have been answered", i)
			assert.NotNil(t, o.Broken, "slow turn %d: its stream broke with lapd", i)
		}
	}

	l = p.Start()
	defer l.Stop()
	for i, s := range ss {
		got := summary(l.Messages(s.ID))
		if i%2 == 0 {
			assert.Equal(t, []string{"1 user completed " + text(i), "2 assistant completed answer to " + text(i)}, got, "session %d", i)
		} else {
			assert.Equal(t, []string{"1 user failed(Interrupted) " + text(i)}, got, "session %d", i)
		}
	}

	// Every session takes its next message, the interrupted ones too
	// (their harnesses outlived lapd, still in the tool).
	errs := make(chan error, sessions)
	for i, s := range ss {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var m api.Message
			status, body, err := l.Call(context.Background(), http.MethodPost, api.BasePath+"/sessions/"+s.ID+"/message", api.SendMessageRequest{Text: fmt.Sprintf("next %d", i)}, &m)
			switch {
			case err != nil:
			case status != http.StatusOK || m.Info.Error != nil:
				err = fmt.Errorf("session %d: next message: %d %s", i, status, body)
			case m.Text() != fmt.Sprintf("re: next %d", i):
				err = fmt.Errorf("session %d: next message answered %q", i, m.Text())
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		assert.NoError(t, err)
	}
	for i, s := range ss {
		got := summary(l.Messages(s.ID))
		next := fmt.Sprintf("next %d", i)
		if i%2 == 0 {
			assert.Equal(t, []string{"1 user completed " + text(i), "2 assistant completed answer to " + text(i),
				"3 user completed " + next, "4 assistant completed re: " + next}, got, "session %d", i)
		} else {
			assert.Equal(t, []string{"1 user failed(Interrupted) " + text(i), "2 user completed " + next, "3 assistant completed re: " + next}, got, "session %d", i)
		}
	}
}

// summary writes a log as "seq role status text" lines.
func summary(msgs []api.Message) []string {
	var out []string
	for _, m := range msgs {
		status := m.Info.Status
		if m.Info.Error != nil {
			status += "(" + m.Info.Error.Name + ")"
		}
		out = append(out, fmt.Sprintf("%d %s %s %s", m.Info.Seq, m.Info.Role, status, m.Text()))
	}
	return out
}

// TestHarnessKilledMidTurn kills a session's harness while its turn runs
// a tool: the streaming client gets a clean error event, the log records
// the turn as failed, and the next message is answered by a restarted
// harness.
func TestHarnessKilledMidTurn(t *testing.T) {
	t.Parallel()
	p := platform.New(t, settings(map[string]string{"LOCAL_STOP_ON_EXIT": "true"}))
	p.LLM.Respond(script)
	l := p.Start()
	defer l.Stop()
	l.CreateAgent("fragile")
	s := l.ReadySession("fragile")

	st, err := l.StreamMessage(context.Background(), s.ID, "slow 1")
	require.NoError(t, err)
	waitfor.Within(t, platform.Deadline, "the turn in its tool", func() bool {
		reqs := p.LLM.Requests()
		return len(reqs) > 0 && reqs[len(reqs)-1].LastUserText() == "slow 1"
	})
	pid := p.HarnessPID(s.SandboxID)
	require.NoError(t, syscall.Kill(pid, syscall.SIGKILL))
	o := st.Finish()
	require.NotNil(t, o.Error, "a clean error event, not a broken stream: %+v", o)
	assert.Equal(t, api.CodeHarness, o.Error.Code)
	assert.Contains(t, o.Error.Message, "session "+s.ID)

	got := summary(l.Messages(s.ID))
	require.Len(t, got, 1)
	assert.Equal(t, "1 user failed(HarnessError) slow 1", got[0])

	m := l.Send(s.ID, "are you back?")
	assert.Equal(t, "re: are you back?", m.Text())
	assert.NotEqual(t, pid, p.HarnessPID(s.SandboxID), "a new harness process")
	assert.True(t, platform.Alive(p.HarnessPID(s.SandboxID)))
}

// TestUpstreamFailures makes the upstream LLM answer 500, 429, or not at
// all: each turn ends with a clean error in info.error (after the
// harness's bounded retries and LAP_LLM_TIMEOUT), the log records it, and
// lapd stays healthy and answers the next message.
func TestUpstreamFailures(t *testing.T) {
	t.Parallel()
	p := platform.New(t, settings(map[string]string{"LAP_LLM_TIMEOUT": "2s", "LOCAL_STOP_ON_EXIT": "true"}))
	p.LLM.Respond(func(r fakellm.Request) fakellm.Reply {
		switch text := r.LastUserText(); {
		case strings.HasPrefix(text, "fail 500"):
			return fakellm.Fail(http.StatusInternalServerError, "upstream exploded")
		case strings.HasPrefix(text, "fail 429"):
			return fakellm.Reply{Status: http.StatusTooManyRequests, Error: "slow down", Header: map[string]string{"Retry-After": "1"}}
		case strings.HasPrefix(text, "hang"):
			return fakellm.Hang()
		}
		return script(r)
	})
	l := p.Start()
	defer l.Stop()
	l.CreateAgent("unlucky")
	cases := []struct {
		text, name string
		status     int    // of the upstream's answer; 0 when it broke off a stream
		message    string // in the error's message
	}{
		{"fail 500", "APIError", http.StatusInternalServerError, "upstream exploded"},
		{"fail 429", "APIError", http.StatusTooManyRequests, "slow down"},
		// The fake starts its streamed answer and then says nothing: the
		// gateway cuts it off after LAP_LLM_TIMEOUT.
		{"hang", "APIError", 0, "did not answer within 2s (LAP_LLM_TIMEOUT)"},
	}
	ss := l.ReadySessions("unlucky", len(cases))
	var wg sync.WaitGroup
	for i, c := range cases {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var m api.Message
			status, body, err := l.Call(platform.Context(t), http.MethodPost, api.BasePath+"/sessions/"+ss[i].ID+"/message", api.SendMessageRequest{Text: c.text}, &m)
			if !assert.NoError(t, err, c.text) || !assert.Equal(t, http.StatusOK, status, "%s: %s", c.text, body) {
				return
			}
			if assert.NotNil(t, m.Info.Error, "%s: %s", c.text, body) {
				assert.Equal(t, c.name, m.Info.Error.Name, c.text)
				assert.Equal(t, c.status, m.Info.Error.Status, "%s: %+v", c.text, m.Info.Error)
				assert.Contains(t, m.Info.Error.Message, c.message, c.text)
			}
		}()
	}
	wg.Wait()
	assert.True(t, l.Healthy())
	for i, c := range cases {
		got := summary(l.Messages(ss[i].ID))
		if assert.Len(t, got, 2, c.text) {
			assert.Equal(t, "1 user completed "+c.text, got[0])
			assert.True(t, strings.HasPrefix(got[1], "2 assistant failed(APIError)"), "%s: %s", c.text, got[1])
		}
		assert.Equal(t, "re: and now?", l.Send(ss[i].ID, "and now?").Text(), "the session goes on")
	}
}

// TestDataDirFull puts lapd's data dir on a small tmpfs and fills it: the
// writes that need space fail with a clear 503 and store nothing, what was
// stored before reads back intact, and once space returns lapd writes
// again — without a restart. The bbolt file passes its consistency check
// afterwards.
func TestDataDirFull(t *testing.T) {
	t.Parallel()
	p := platform.New(t, settings(nil))
	mnt := filepath.Join(p.Dir, "mnt")
	require.NoError(t, os.Mkdir(mnt, 0o711))
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=16m,mode=0711", "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount a tmpfs (the tests run as root): %v: %s", err, out)
	}
	t.Cleanup(func() {
		// The sandboxes' records are on the tmpfs: stop the harnesses
		// they name before it goes (this cleanup runs before the
		// platform's), or they outlive the test.
		p.Close()
		if out, err := exec.Command("umount", "-l", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", mnt, err, out)
		}
	})
	data := filepath.Join(mnt, "data")
	p.Env["LAP_DATA_DIR"] = data
	p.LLM.Respond(script)
	l := p.Start()

	prompt := func(name string) string { return name + ": " + strings.Repeat("You are thorough. ", 3500) } // ~62 KB
	create := func(name string) (int, api.ErrorDetail) {
		var eb api.ErrorBody
		status, body := l.Do(http.MethodPost, api.BasePath+"/agents", api.CreateAgentRequest{Name: name, Model: "m", Prompt: prompt(name)}, nil)
		if status != http.StatusCreated {
			require.NoError(t, json.Unmarshal(body, &eb), "%s", body)
		}
		return status, eb.Error
	}
	var stored []string
	for i := range 3 {
		name := fmt.Sprintf("before-%d", i)
		status, e := create(name)
		require.Equal(t, http.StatusCreated, status, "%+v", e)
		stored = append(stored, name)
	}

	// Fill the file system to the last block.
	filler := filepath.Join(mnt, "filler")
	f, err := os.Create(filler)
	require.NoError(t, err)
	chunk := make([]byte, 64<<10)
	for {
		if _, err := f.Write(chunk); err != nil {
			require.ErrorIs(t, err, syscall.ENOSPC)
			break
		}
	}
	require.NoError(t, f.Close())

	// bbolt reuses free pages of its file first; the writes fail once it
	// must grow.
	var full api.ErrorDetail
	for i := 0; full.Code == ""; i++ {
		require.Less(t, i, 300, "the writes never failed")
		name := fmt.Sprintf("during-%d", i)
		switch status, e := create(name); status {
		case http.StatusCreated:
			stored = append(stored, name)
		case http.StatusServiceUnavailable:
			full = e
		default:
			t.Fatalf("create %s on a full disk: %d %+v, want 201 or 503", name, status, e)
		}
	}
	assert.Equal(t, api.CodeUnavailable, full.Code)
	assert.Contains(t, full.Message, "data dir is full")
	assert.True(t, l.Healthy())

	check := func() {
		t.Helper()
		var list api.List[api.Agent]
		status, body := l.Do(http.MethodGet, api.BasePath+"/agents?limit=1000", nil, &list)
		require.Equal(t, http.StatusOK, status, "%s", body)
		var names []string
		for _, a := range list.Data {
			names = append(names, a.Name)
		}
		assert.ElementsMatch(t, stored, names, "what got 201 is stored, what got 503 is not")
		for _, name := range stored {
			var a api.Agent
			status, _ := l.Do(http.MethodGet, api.BasePath+"/agents/"+name, nil, &a)
			if assert.Equal(t, http.StatusOK, status, name) {
				assert.True(t, a.Prompt == prompt(name), "agent %s reads back intact", name)
			}
		}
	}
	check()

	// Space returns: lapd writes again, as it is.
	require.NoError(t, os.Remove(filler))
	status, e := create("after")
	require.Equal(t, http.StatusCreated, status, "%+v", e)
	stored = append(stored, "after")
	s := l.ReadySession("after")
	assert.Equal(t, "re: hello", l.Send(s.ID, "hello").Text())
	check()

	l.Stop()
	st, err := store.Open(filepath.Join(data, store.FileName), store.Options{})
	require.NoError(t, err)
	defer st.Close()
	assert.NoError(t, st.Check())
}
