package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestParseTakesMediansOverRuns(t *testing.T) {
	t.Parallel()
	out := []byte(`goos: linux
BenchmarkMessageAppend/writers=100-2         	       1	      5000 appends/s
BenchmarkMessageAppend/writers=100-2         	       1	      7000 appends/s
--- BENCH: something logged
BenchmarkMessageAppend/writers=100-2         	       1	      6000 appends/s	         0 ns/op
BenchmarkList/sessions/first   	       1	       229.7 µs/page
PASS
`)
	res := results{}
	parse("./store", out, res)
	v, ok := res.median(appends, "appends/s")
	assert.True(t, ok)
	assert.Equal(t, 6000.0, v)
	v, _ = res.median("./store BenchmarkList/sessions/first", "µs/page")
	assert.Equal(t, 229.7, v)
	_, ok = res.median(appends, "nothing")
	assert.False(t, ok)

	var table bytes.Buffer
	printTable(&table, res, 3, 0)
	s := table.String()
	assert.Regexp(t, `durable messages/s: log appends, each fsynced, 100 writers +6000 /s +≥ 2,000 /s  ✓`, s)
	assert.Contains(t, s, "./store BenchmarkList/sessions/first")
	assert.NotContains(t, s, "ns/op", "ns/op, the run time of a 1x benchmark, is left out")
	assert.Equal(t, 1, strings.Count(s, "other figures"))
}
