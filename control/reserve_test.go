package control

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func newReserveTable() *orchestrator {
	return &orchestrator{active: map[string]*turn{}, jobs: map[string]chan struct{}{}}
}

// TestReserveRefusesWhatOverlaps: a second turn, or a job beside a turn
// or a job, is refused as busy.
func TestReserveRefusesWhatOverlaps(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	for _, tt := range []struct {
		name          string
		first, second *turn
	}{
		{"turn then turn", &turn{}, &turn{}},
		{"turn then job", &turn{}, nil},
		{"job then job", nil, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			o := newReserveTable()
			release, err := o.reserve(ctx, "s-1", tt.first)
			require.NoError(t, err)
			_, err = o.reserve(ctx, "s-1", tt.second)
			assert.ErrorIs(t, err, errBusy)
			release()
			again, err := o.reserve(ctx, "s-1", tt.second)
			require.NoError(t, err, "free once released")
			again()
		})
	}
}

// TestTurnWaitsForAJob: a turn that arrives while a maintenance job (a
// suspend) holds the session gets it when the job ends, instead of a
// busy refusal for a turn that is not running.
func TestTurnWaitsForAJob(t *testing.T) {
	t.Parallel()
	o := newReserveTable()
	job, err := o.reserve(t.Context(), "s-1", nil)
	require.NoError(t, err)
	got := make(chan error, 1)
	go func() {
		release, err := o.reserve(t.Context(), "s-1", &turn{})
		if err == nil {
			release()
		}
		got <- err
	}()
	select {
	case err := <-got:
		t.Fatalf("reserve = %v while the job runs, want it to wait", err)
	case <-time.After(50 * time.Millisecond): // it waits: nothing to poll for
	}
	job()
	select {
	case err := <-got:
		assert.NoError(t, err)
	case <-time.After(time.Minute):
		t.Fatal("the turn did not get the session after the job ended")
	}
}

// TestTurnWaitingForAJobStopsWithItsContext.
func TestTurnWaitingForAJobStopsWithItsContext(t *testing.T) {
	t.Parallel()
	o := newReserveTable()
	job, err := o.reserve(t.Context(), "s-1", nil)
	require.NoError(t, err)
	defer job()
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err = o.reserve(ctx, "s-1", &turn{})
	assert.ErrorIs(t, err, context.Canceled)
}

// TestReserveRefusesWhileDraining.
func TestReserveRefusesWhileDraining(t *testing.T) {
	t.Parallel()
	o := newReserveTable()
	o.draining.Store(true)
	_, err := o.reserve(t.Context(), "s-1", &turn{})
	assert.ErrorIs(t, err, errUnavailable)
}
