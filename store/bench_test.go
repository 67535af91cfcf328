package store

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"
)

// BenchmarkMessageAppend measures durable log appends per second (each
// one committed and fsynced before it returns), for one writer and for
// many sessions appending at once. Each figure is the median of rounds.
func BenchmarkMessageAppend(b *testing.B) {
	body := json.RawMessage(`{"info":{"role":"user","time":{"created":1}},"parts":[{"type":"text","text":"Summarise the top-level README in three bullets."}]}`)
	for _, writers := range []int{1, 16, 100} {
		b.Run(fmt.Sprintf("writers=%d", writers), func(b *testing.B) {
			ctx := context.Background()
			s := openTest(b)
			a := mustAgent(b, s, "bench")
			sessions := make([]string, writers)
			for i := range sessions {
				sessions[i] = mustSession(b, s, a.ID, "ready").ID
			}
			const rounds = 5
			perWriter := max(400/writers, 20)
			var rates []float64
			b.ResetTimer()
			for range b.N {
				for range rounds {
					start := time.Now()
					var wg sync.WaitGroup
					for _, id := range sessions {
						wg.Add(1)
						go func() {
							defer wg.Done()
							for range perWriter {
								if _, err := s.AppendMessage(ctx, Message{SessionID: id, Role: "user", Status: MessagePending, Data: body}); err != nil {
									b.Error(err)
									return
								}
							}
						}()
					}
					wg.Wait()
					rates = append(rates, float64(writers*perWriter)/time.Since(start).Seconds())
				}
			}
			slices.Sort(rates)
			b.ReportMetric(rates[len(rates)/2], "appends/s")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// BenchmarkList measures listing pages over a store of 100 agents with
// 10,000 sessions: the first page of each listing, a page deep inside it
// (resumed from a cursor), and a walk over every session page by page.
// Each figure is the median over rounds.
func BenchmarkList(b *testing.B) {
	const agents, perAgent = 100, 100
	ctx := context.Background()
	s := openTest(b)
	statuses := []string{"ready", "idle", "dead"}
	agentIDs := make([]string, agents)
	for i := range agentIDs {
		agentIDs[i] = mustAgent(b, s, fmt.Sprintf("agent-%03d", i)).ID
	}
	// Concurrent creates share commits, so the set-up takes seconds, not
	// 10,000 fsyncs.
	var wg sync.WaitGroup
	for w := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < agents*perAgent; i += 50 {
				_, err := s.CreateSession(ctx, Session{AgentID: agentIDs[i%agents], Status: statuses[i%len(statuses)]})
				if err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if b.Failed() {
		return
	}

	// deep returns the cursor after n pages of 50 of the listing.
	deep := func(list func(cursor string) (string, error), n int) string {
		cursor := ""
		for range n {
			next, err := list(cursor)
			if err != nil || next == "" {
				b.Fatalf("page to depth %d: next %q, err %v", n, next, err)
			}
			cursor = next
		}
		return cursor
	}
	sessions := func(f SessionFilter) func(string) (string, error) {
		return func(cursor string) (string, error) {
			f.Page = Page{Limit: 50, Cursor: cursor}
			_, next, err := s.ListSessions(ctx, f)
			return next, err
		}
	}
	listAgents := func(cursor string) (string, error) {
		_, next, err := s.ListAgents(ctx, AgentFilter{Page: Page{Limit: 50, Cursor: cursor}})
		return next, err
	}
	cases := []struct {
		name   string
		list   func(string) (string, error)
		cursor string
	}{
		{"agents/first", listAgents, ""},
		{"agents/second", listAgents, deep(listAgents, 1)},
		{"sessions/first", sessions(SessionFilter{}), ""},
		{"sessions/deep", sessions(SessionFilter{}), deep(sessions(SessionFilter{}), 100)},
		{"sessions/agent", sessions(SessionFilter{AgentID: agentIDs[7]}), ""},
		{"sessions/status", sessions(SessionFilter{Status: "idle"}), ""},
		{"sessions/status-deep", sessions(SessionFilter{Status: "idle"}), deep(sessions(SessionFilter{Status: "idle"}), 30)},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			const rounds = 200
			var took []float64
			for range b.N {
				for range rounds {
					start := time.Now()
					if _, err := c.list(c.cursor); err != nil {
						b.Fatal(err)
					}
					took = append(took, time.Since(start).Seconds()*1e6)
				}
			}
			slices.Sort(took)
			b.ReportMetric(took[len(took)/2], "µs/page")
			b.ReportMetric(0, "ns/op")
		})
	}
	b.Run("sessions/walk-all", func(b *testing.B) {
		const rounds = 5
		var rates []float64
		for range b.N {
			for range rounds {
				start := time.Now()
				n, cursor := 0, ""
				for {
					page, next, err := s.ListSessions(ctx, SessionFilter{Page: Page{Limit: 100, Cursor: cursor}})
					if err != nil {
						b.Fatal(err)
					}
					n += len(page)
					if next == "" {
						break
					}
					cursor = next
				}
				if n != agents*perAgent {
					b.Fatalf("walk saw %d sessions, want %d", n, agents*perAgent)
				}
				rates = append(rates, float64(n)/time.Since(start).Seconds())
			}
		}
		slices.Sort(rates)
		b.ReportMetric(rates[len(rates)/2], "sessions/s")
		b.ReportMetric(0, "ns/op")
	})
}
