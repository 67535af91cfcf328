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
