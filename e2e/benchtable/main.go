// Command benchtable runs lap's benchmarks — the ones each package keeps
// next to its code — and prints their figures as one table: `make bench`.
//
// Each package's benchmarks run -count times (-benchtime 1x: every
// benchmark repeats its own samples inside one run and reports medians and
// percentiles); a figure in the table is the median over those runs.
// Where a figure compares two paths (lapd against calling the harness
// directly, the gateway against calling the upstream directly) both were
// measured in the same run, interleaved, and the table shows their ratio.
// The headline rows carry lap's goals; every other figure any benchmark
// reports follows under "other figures".
package main

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"regexp"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "benchtable:", err)
		os.Exit(1)
	}
}

// pkg is a package whose benchmarks run, and how often.
type pkg struct {
	path  string
	count int
}

// packages run in this order. The headline ones run count times; the
// others (their figures are listed under "other figures") once, as they
// did before this table, since some take minutes.
func packages(count int) []pkg {
	return []pkg{
		{"./e2e/lapdlocal", count},
		{"./sandboxes/local", count},
		{"./control", count},
		{"./store", count},
		{"./control/gateway", count},
		{"./e2e/scale", count},
		{"./cmd/lap-harness", count},
		{"./e2e/load", count},
		{"./knative", 1},
		{"./cli", 1},
		{"./sandboxes/claude-agent-sdk", 1},
		{"./sandboxes/ttyharness", 1},
		{"./e2e/lapdbox", 1},
	}
}

// results holds every run's figures: benchmark (with package) → unit →
// one value per run.
type results map[string]map[string][]float64

// median is the median over runs of a figure, and whether there is one.
func (r results) median(bench, unit string) (float64, bool) {
	xs := r[bench][unit]
	if len(xs) == 0 {
		return 0, false
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2], true
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("benchtable", flag.ContinueOnError)
	fs.SetOutput(stderr)
	count := fs.Int("count", 3, "runs of each headline package's benchmarks; figures are medians over them")
	only := fs.String("only", "", "run only the packages whose path contains this (for a quick look)")
	goCmd := fs.String("go", "go", "the go command")
	if err := fs.Parse(args); err != nil {
		return err
	}
	res := results{}
	var failed []string
	started := time.Now()
	for _, p := range packages(*count) {
		if *only != "" && !strings.Contains(p.path, *only) {
			continue
		}
		fmt.Fprintf(stderr, "benchtable: %s (%d run(s)) …\n", p.path, p.count)
		began := time.Now()
		out, err := bench(ctx, *goCmd, p)
		parse(p.path, out, res)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			failed = append(failed, p.path)
			fmt.Fprintf(stderr, "benchtable: %s failed: %v\n%s\n", p.path, err, tail(out, 40))
			continue
		}
		fmt.Fprintf(stderr, "benchtable: %s done in %s\n", p.path, time.Since(began).Round(time.Second))
	}
	printTable(stdout, res, *count, time.Since(started))
	if len(failed) > 0 {
		return fmt.Errorf("benchmarks failed in %s", strings.Join(failed, ", "))
	}
	return nil
}

// bench runs one package's benchmarks and returns their output.
func bench(ctx context.Context, goCmd string, p pkg) ([]byte, error) {
	cmd := exec.CommandContext(ctx, goCmd, "test", "-run", "^$", "-bench", ".", "-benchtime", "1x",
		"-count", strconv.Itoa(p.count), "-timeout", "60m", p.path)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.Bytes(), err
}

// benchLine is a result line: name, iterations, then value-unit pairs.
var benchLine = regexp.MustCompile(`^(Benchmark\S+?)(?:-\d+)?\s+\d+\s+(.*)$`)

// parse adds the figures in a package's output to res, keyed by package
// and benchmark ("./control BenchmarkX/sub").
func parse(pkgPath string, out []byte, res results) {
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		m := benchLine.FindStringSubmatch(strings.TrimSpace(sc.Text()))
		if m == nil {
			continue
		}
		name := pkgPath + " " + m[1]
		fields := strings.Fields(m[2])
		for i := 0; i+1 < len(fields); i += 2 {
			v, err := strconv.ParseFloat(fields[i], 64)
			if err != nil {
				continue
			}
			if res[name] == nil {
				res[name] = map[string][]float64{}
			}
			res[name][fields[i+1]] = append(res[name][fields[i+1]], v)
		}
	}
}

// cell is one figure of a headline row.
type cell struct {
	bench, unit string
}

// row is a headline figure: its cells formatted together, the goal, and
// an optional ratio of two figures from the same run.
type row struct {
	figure string
	cells  []cell
	format string // fmt verbs, one per cell
	goal   string
	// met, when set, says whether the goal holds for the cells' values.
	met func(v []float64) bool
	// ratio, when set, is num/den of two figures of the same run, shown
	// with its own label.
	ratio    *[2]cell
	ratioFmt string
}

const (
	relay     = "./control BenchmarkMessageRelayOverhead/sessions=100/store=disk/turn=100ms/arrivals=spread"
	relayB    = "./control BenchmarkMessageRelayOverhead/sessions=100/store=disk/turn=100ms/arrivals=burst"
	relayT    = "./control BenchmarkMessageRelayOverhead/sessions=100/store=tmpfs/turn=100ms/arrivals=spread"
	relay1    = "./control BenchmarkMessageRelayOverhead/sessions=1/store=disk/turn=instant/arrivals=burst"
	sessions  = "./e2e/lapdlocal BenchmarkSessionCreate"
	local     = "./sandboxes/local BenchmarkLocalSandbox"
	appends   = "./store BenchmarkMessageAppend/writers=100"
	appends1  = "./store BenchmarkMessageAppend/writers=1"
	gateway   = "./control/gateway BenchmarkGatewayOverhead"
	scale     = "./e2e/scale BenchmarkLargeStore"
	harnessM  = "./cmd/lap-harness BenchmarkIdleRSS"
	harnessT  = "./cmd/lap-harness BenchmarkStartToReady"
	loadBench = "./e2e/load BenchmarkLoad"
	box       = "./e2e/lapdbox BenchmarkLapOnKnative"
)

func atMost(limits ...float64) func([]float64) bool {
	return func(v []float64) bool {
		for i, l := range limits {
			if v[i] > l {
				return false
			}
		}
		return true
	}
}

func atLeast(l float64) func([]float64) bool { return func(v []float64) bool { return v[0] >= l } }

var headline = []row{
	{figure: "warm session ready: create → ready (100 sessions, through lapd)", format: "%.1f ms p50, %.1f ms p99",
		cells: []cell{{sessions, "warm-p50-ms"}, {sessions, "warm-p99-ms"}}, goal: "≤ 20 ms p50, ≤ 100 ms p99", met: atMost(20, 100)},
	{figure: "cold local session ready: create → ready (a harness started)", format: "%.0f ms p50, %.0f ms p99",
		cells: []cell{{sessions, "cold-p50-ms"}, {sessions, "cold-p99-ms"}}, goal: "≤ 300 ms p50", met: atMost(300)},
	{figure: "cold local sandbox, backend alone: provision → harness answering", format: "%.0f ms p50, %.0f ms p99",
		cells: []cell{{local, "provision-p50-ms"}, {local, "provision-p99-ms"}}, goal: "≤ 300 ms p50", met: atMost(300)},
	{figure: "message overhead vs the harness directly, 100 sessions (100 ms turns, spread arrivals)", format: "%.1f ms p50, %.1f ms p99",
		cells: []cell{{relay, "overhead-p50-ms"}, {relay, "overhead-p99-ms"}}, goal: "≤ 2 ms p50, ≤ 10 ms p99", met: atMost(2, 10),
		ratio: &[2]cell{{relay, "lapd-p50-ms"}, {relay, "direct-p50-ms"}}, ratioFmt: "lapd/direct p50 %.3f×"},
	{figure: "  same, all 100 messages arriving at once (burst)", format: "%.1f ms p50, %.1f ms p99",
		cells: []cell{{relayB, "overhead-p50-ms"}, {relayB, "overhead-p99-ms"}}, goal: "—",
		ratio: &[2]cell{{relayB, "lapd-p50-ms"}, {relayB, "direct-p50-ms"}}, ratioFmt: "lapd/direct p50 %.3f×"},
	{figure: "  same, bbolt file on tmpfs (lapd's own cost, no disk)", format: "%.1f ms p50, %.1f ms p99",
		cells: []cell{{relayT, "overhead-p50-ms"}, {relayT, "overhead-p99-ms"}}, goal: "—",
		ratio: &[2]cell{{relayT, "lapd-p50-ms"}, {relayT, "direct-p50-ms"}}, ratioFmt: "lapd/direct p50 %.3f×"},
	{figure: "  same, one session on an idle lapd", format: "%.2f ms p50, %.2f ms p99",
		cells: []cell{{relay1, "overhead-p50-ms"}, {relay1, "overhead-p99-ms"}}, goal: "—"},
	{figure: "load: 200 sessions × 20 messages, local harnesses, LLM via the gateway: errors", format: "%.0f",
		cells: []cell{{loadBench, "errors"}}, goal: "0", met: atMost(0)},
	{figure: "  lapd's added latency per message (vs the same harnesses directly)", format: "%.1f ms p50, %.1f ms p99",
		cells: []cell{{loadBench, "added-p50-ms"}, {loadBench, "added-p99-ms"}}, goal: "—",
		ratio: &[2]cell{{loadBench, "lapd-p50-ms"}, {loadBench, "direct-p50-ms"}}, ratioFmt: "lapd/direct p50 %.2f×"},
	{figure: "  turns answered through lapd", format: "%.0f turns/s",
		cells: []cell{{loadBench, "lapd-turns/s"}}, goal: "—"},
	{figure: "durable messages/s: log appends, each fsynced, 100 writers", format: "%.0f /s",
		cells: []cell{{appends, "appends/s"}}, goal: "≥ 2,000 /s", met: atLeast(2000)},
	{figure: "  same, one writer (each append its own commit)", format: "%.0f /s",
		cells: []cell{{appends1, "appends/s"}}, goal: "—"},
	{figure: "LLM gateway overhead per request (whole answer / first streamed byte)", format: "%.2f ms / %.2f ms p50",
		cells: []cell{{gateway, "added-ms-p50-whole"}, {gateway, "added-ms-p50-stream-first-byte"}}, goal: "—",
		ratio: &[2]cell{{gateway, "added-ms-p50-whole"}, {gateway, "direct-ms-p50-whole"}}, ratioFmt: "added/direct %.2f"},
	{figure: "GET /sessions page (50), 100k sessions and 10k agents stored: first page", format: "%.2f ms p50",
		cells: []cell{{scale, "sessions-first-p50-ms"}}, goal: "≤ 10 ms", met: atMost(10)},
	{figure: "  a page 1,000 pages deep / one agent's / one status's / GET /agents", format: "%.2f / %.2f / %.2f / %.2f ms",
		cells: []cell{{scale, "sessions-deep-p50-ms"}, {scale, "sessions-agent-p50-ms"}, {scale, "sessions-status-p50-ms"}, {scale, "agents-first-p50-ms"}},
		goal:  "≤ 10 ms", met: atMost(10, 10, 10, 10)},
	{figure: "lapd RSS with 100k sessions and 10k agents stored (anonymous part)", format: "%.0f MB (%.0f MB)",
		cells: []cell{{scale, "lapd-rss-MB"}, {scale, "lapd-anon-MB"}}, goal: "≤ 150 MB", met: atMost(150)},
	{figure: "  after a client read 50,000 of the sessions (file pages mapped in)", format: "%.0f MB (%.0f MB)",
		cells: []cell{{scale, "walked-rss-MB"}, {scale, "walked-anon-MB"}}, goal: "—"},
	{figure: "  lapd start on that store, to listening", format: "%.0f ms",
		cells: []cell{{scale, "startup-ms"}}, goal: "—"},
	{figure: "idle harness (lap-harness) RSS", format: "%.1f MB",
		cells: []cell{{harnessM, "rss-MB-p50"}}, goal: "≤ 25 MB", met: atMost(25)},
	{figure: "  lap-harness start → ready (no clone)", format: "%.1f ms p50",
		cells: []cell{{harnessT, "ms-p50"}}, goal: "—"},
	{figure: "lap on Knative in a box: warm claim, create session → ready", format: "%.0f ms p50, %.0f ms p90",
		cells: []cell{{box, "warm-claim-ms-p50"}, {box, "warm-claim-ms-p90"}}, goal: "—"},
	{figure: "  cold provision: create → new revision Ready → harness up", format: "%.0f ms p50, %.0f ms p90",
		cells: []cell{{box, "cold-ready-ms-p50"}, {box, "cold-ready-ms-p90"}}, goal: "—"},
	{figure: "  resume from zero: message → pod back → answer", format: "%.0f ms p50, %.0f ms p90",
		cells: []cell{{box, "resume-from-zero-ms-p50"}, {box, "resume-from-zero-ms-p90"}}, goal: "—"},
	{figure: "  memory per sandbox pod (queue-proxy + lap-harness)", format: "%.0f MiB p50",
		cells: []cell{{box, "pod-MiB-p50"}}, goal: "—"},
}

func printTable(w io.Writer, res results, count int, took time.Duration) {
	load := "?"
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		load = strings.Join(strings.Fields(string(b))[:3], " ")
	}
	fmt.Fprintf(w, "\nlap benchmarks — %s, %d CPUs, %s, load average %s; %d run(s) per package, figures are medians over runs; took %s\n\n",
		time.Now().UTC().Format("2006-01-02 15:04 UTC"), runtime.NumCPU(), runtime.Version(), load, count, took.Round(time.Second))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "figure\tlap\tsame-run comparison\tgoal\t")
	fmt.Fprintln(tw, "------\t---\t-------------------\t----\t")
	used := map[cell]bool{}
	for _, r := range headline {
		vals := make([]float64, len(r.cells))
		have := true
		for i, c := range r.cells {
			used[c] = true
			v, ok := res.median(c.bench, c.unit)
			have = have && ok
			vals[i] = v
		}
		figure := "not measured"
		if have {
			args := make([]any, len(vals))
			for i, v := range vals {
				args[i] = v
			}
			figure = fmt.Sprintf(r.format, args...)
		}
		cmp := ""
		if r.ratio != nil {
			used[r.ratio[0]], used[r.ratio[1]] = true, true
			if num, ok := res.median(r.ratio[0].bench, r.ratio[0].unit); ok {
				if den, ok := res.median(r.ratio[1].bench, r.ratio[1].unit); ok && den != 0 {
					cmp = fmt.Sprintf(r.ratioFmt, num/den)
				}
			}
		}
		goal := r.goal
		if r.met != nil && have {
			if r.met(vals) {
				goal += "  ✓"
			} else {
				goal += "  ✗ missed"
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t\n", r.figure, figure, cmp, goal)
	}
	fmt.Fprintln(tw, "\t\t\t\t")
	fmt.Fprintln(tw, "other figures\t\t\t\t")
	for _, line := range others(res, used) {
		fmt.Fprintln(tw, line)
	}
	tw.Flush()
}

// others lists every figure no headline row shows, as table lines.
func others(res results, used map[cell]bool) []string {
	var benches []string
	for b := range res {
		benches = append(benches, b)
	}
	sort.Strings(benches)
	var lines []string
	for _, b := range benches {
		var units []string
		for u := range res[b] {
			if used[cell{b, u}] {
				continue
			}
			if u == "ns/op" {
				continue // with -benchtime 1x it is the whole benchmark's run time
			}
			units = append(units, u)
		}
		sort.Strings(units)
		for _, u := range units {
			v, _ := res.median(b, u)
			lines = append(lines, fmt.Sprintf("  %s\t%s %s\t\t\t", b, strconv.FormatFloat(v, 'g', 4, 64), u))
		}
	}
	return lines
}

// tail returns the last n lines of out.
func tail(out []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(out), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
