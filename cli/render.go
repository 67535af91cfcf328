package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/charmbracelet/glamour"
	"github.com/mattn/go-runewidth"
	"github.com/muesli/termenv"

	"lap.dev/lap/control/api"
	"lap.dev/lap/sandboxes/protocol"
)

// style colours the CLI's own lines; with colour off it is plain text.
type style struct{ color bool }

func (s style) wrap(code, text string) string {
	if !s.color {
		return text
	}
	return "\x1b[" + code + "m" + text + "\x1b[0m"
}

func (s style) dim(t string) string   { return s.wrap("2", t) }
func (s style) green(t string) string { return s.wrap("32", t) }
func (s style) red(t string) string   { return s.wrap("31", t) }

// colorProfile picks the markdown colours the terminal can show, from the
// usual environment variables.
func colorProfile(getenv func(string) string) termenv.Profile {
	switch {
	case getenv("NO_COLOR") != "":
		return termenv.Ascii
	case getenv("COLORTERM") == "truecolor" || getenv("COLORTERM") == "24bit":
		return termenv.TrueColor
	case strings.Contains(getenv("TERM"), "256color"):
		return termenv.ANSI256
	case getenv("TERM") == "dumb":
		return termenv.Ascii
	}
	return termenv.ANSI
}

// markdown renders a reply for the terminal. A nil *markdown (stdout is
// not a terminal) leaves text as it is.
type markdown struct{ r *glamour.TermRenderer }

func newMarkdown(getenv func(string) string, width int) *markdown {
	style := getenv("GLAMOUR_STYLE")
	if style == "" || style == "auto" {
		// Auto-detection queries the terminal and can stall on one that
		// does not answer; dark is the common case and GLAMOUR_STYLE=light
		// is there for the rest.
		style = "dark"
	}
	r, err := glamour.NewTermRenderer(
		glamour.WithStandardStyle(style),
		glamour.WithWordWrap(min(max(width-4, 20), 120)),
		glamour.WithColorProfile(colorProfile(getenv)),
	)
	if err != nil {
		return nil
	}
	return &markdown{r: r}
}

func (m *markdown) render(text string) string {
	if m == nil {
		return text
	}
	out, err := m.r.Render(text)
	if err != nil {
		return text
	}
	lines := strings.Split(out, "\n")
	for i, l := range lines {
		// glamour pads every line to the wrap width with styled spaces;
		// without them a resized terminal does not rewrap the reply badly.
		if trimmed := trailingPad.ReplaceAllString(l, ""); trimmed != l {
			lines[i] = trimmed
			if trimmed != "" {
				lines[i] += "\x1b[0m"
			}
		}
	}
	// glamour frames a document with blank lines; the chat has its own.
	for len(lines) > 0 && lines[0] == "" {
		lines = lines[1:]
	}
	for len(lines) > 0 && lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	}
	return strings.Join(lines, "\n")
}

// trailingPad matches the spaces and colour codes at the end of a line.
var trailingPad = regexp.MustCompile(`(?:\x1b\[[0-9;]*m| )+$`)

// turnRenderer prints one streamed turn: text as it arrives, one status line
// per tool call, and a footer. Reply text goes to out; tool lines, the footer
// and errors go to status (the same stream in chat mode, stderr in scripts).
//
// On a terminal a tool call's line is rewritten in place as it moves from
// pending to completed, and each text block is re-rendered as markdown once
// it is complete (when it still fits on the screen). Piped, text is written
// as it arrives and each tool call is one plain line when it ends.
type turnRenderer struct {
	out, status io.Writer
	tty         bool // status is a terminal: tool lines are rewritten in place
	width       int
	height      int
	md          *markdown
	st          style

	userMsgs   map[string]bool   // message ids of user messages, whose parts are not shown
	printedLen map[string]int    // text printed per part id
	toolState  map[string]string // last status shown per tool call
	textPart   string            // the text part being streamed
	block      strings.Builder   // its text, for the markdown re-render
	rows, col  int               // screen rows and column the block takes so far
	openTool   string            // call id of a tool line not yet ended (tty)
	anyText    bool
	outCol     int // column of out (0 = at the start of a line)
}

func newTurnRenderer(out, status io.Writer, tty bool, width, height int, md *markdown, st style) *turnRenderer {
	return &turnRenderer{
		out: out, status: status, tty: tty, width: max(width, 20), height: height, md: md, st: st,
		userMsgs:   map[string]bool{},
		printedLen: map[string]int{},
		toolState:  map[string]string{},
	}
}

// event handles one harness event of the turn.
func (r *turnRenderer) event(ev protocol.Event) {
	switch ev.Type {
	case protocol.EventMessageUpdated:
		if info := ev.Properties.Info; info != nil && info.Role == protocol.RoleUser {
			r.userMsgs[info.ID] = true
		}
	case protocol.EventPartUpdated:
		p := ev.Properties.Part
		if p == nil || r.userMsgs[p.MessageID] {
			return
		}
		switch p.Type {
		case protocol.PartText:
			r.text(p, ev.Properties.Delta)
		case protocol.PartTool:
			r.tool(*p)
		}
	}
}

// text prints new text of a text part: the delta, or what the whole text
// has beyond what was printed when an event carries no delta.
func (r *turnRenderer) text(p *protocol.Part, delta string) {
	key := p.ID
	if key == "" {
		key = p.MessageID + "/text"
	}
	if key != r.textPart {
		r.endText()
		r.textPart = key
	}
	done := r.printedLen[key]
	if delta == "" {
		if len(p.Text) <= done || !strings.HasPrefix(p.Text, r.block.String()) {
			return
		}
		delta = p.Text[done:]
	}
	r.printedLen[key] = done + len(delta)
	r.writeText(delta)
}

func (r *turnRenderer) writeText(s string) {
	if s == "" {
		return
	}
	if r.openTool != "" {
		fmt.Fprint(r.status, "\n")
		r.openTool = ""
	}
	r.anyText = true
	r.block.WriteString(s)
	io.WriteString(r.out, s)
	for _, c := range s {
		switch c {
		case '\n':
			r.rows++
			r.col = 0
		case '\t':
			r.col += 8 - r.col%8
		default:
			w := runewidth.RuneWidth(c)
			if r.col+w > r.width {
				r.rows++
				r.col = 0
			}
			r.col += w
		}
	}
	r.outCol = r.col
}

// endText closes the current text block: on a terminal it replaces the raw
// text by its markdown rendering, if it can still reach its first line.
func (r *turnRenderer) endText() {
	if r.block.Len() == 0 {
		return
	}
	text := r.block.String()
	switch {
	case r.md != nil && r.height > 0 && r.rows < r.height-1:
		fmt.Fprint(r.out, "\r")
		if r.rows > 0 {
			fmt.Fprintf(r.out, "\x1b[%dA", r.rows)
		}
		fmt.Fprint(r.out, "\x1b[J"+r.md.render(text)+"\n")
	case r.col != 0:
		fmt.Fprint(r.out, "\n")
	}
	r.block.Reset()
	r.textPart = ""
	r.rows, r.col, r.outCol = 0, 0, 0
}

// tool shows a tool call's progress.
func (r *turnRenderer) tool(p protocol.Part) {
	id := p.CallID
	if id == "" {
		id = p.ID
	}
	status := protocol.ToolPending
	if p.State != nil && p.State.Status != "" {
		status = p.State.Status
	}
	if r.toolState[id] == status {
		return
	}
	final := status == protocol.ToolCompleted || status == protocol.ToolError
	if !r.tty && !final {
		r.toolState[id] = status
		return
	}
	if r.toolState[id] == protocol.ToolCompleted || r.toolState[id] == protocol.ToolError {
		return // a late update of a finished call
	}
	r.toolState[id] = status
	r.endText()
	line := r.toolLine(p, status)
	switch {
	case r.tty && r.openTool == id:
		fmt.Fprint(r.status, "\r\x1b[K"+line)
	case r.tty:
		if r.openTool != "" {
			fmt.Fprint(r.status, "\n")
		}
		fmt.Fprint(r.status, line)
	default:
		fmt.Fprintln(r.status, line)
		return
	}
	r.openTool = id
	if final {
		fmt.Fprint(r.status, "\n")
		r.openTool = ""
	}
}

// toolLine words one tool call: "✓ bash: ls -la", fitted to the width.
func (r *turnRenderer) toolLine(p protocol.Part, status string) string {
	title := toolTitle(p)
	var mark string
	switch status {
	case protocol.ToolCompleted:
		mark = r.st.green("✓")
	case protocol.ToolError:
		mark = r.st.red("✗")
		if p.State != nil && p.State.Error != "" {
			title += ": " + firstLine(p.State.Error)
		}
	case protocol.ToolRunning:
		mark = r.st.dim("…")
	default:
		mark = r.st.dim("·")
	}
	if r.tty {
		title = fitTitle(title, r.width-3)
	}
	return mark + " " + title
}

// toolTitle is the harness's title for a call, or the tool's name and the
// most telling field of its input.
func toolTitle(p protocol.Part) string {
	if p.State != nil && p.State.Title != "" {
		return firstLine(p.State.Title)
	}
	name := orDash(p.Tool)
	if p.State == nil || len(p.State.Input) == 0 {
		return name
	}
	var in map[string]any
	if json.Unmarshal(p.State.Input, &in) != nil {
		return name
	}
	for _, k := range []string{"command", "cmd", "file_path", "filePath", "path", "pattern", "url", "query", "description"} {
		if s, ok := in[k].(string); ok && s != "" {
			return name + ": " + firstLine(s)
		}
	}
	keys := make([]string, 0, len(in))
	for k := range in {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if s, ok := in[k].(string); ok && s != "" {
			return name + ": " + firstLine(s)
		}
	}
	return name
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i] + " …"
	}
	return s
}

// finish ends the turn with the final message: anything the stream did not
// show (a server that sent no deltas), the error if the turn failed, and the
// footer with elapsed time, tokens and cost.
func (r *turnRenderer) finish(m api.Message, elapsed time.Duration) {
	if !r.anyText {
		for _, p := range m.Parts {
			if p.Type == protocol.PartText && p.Text != "" {
				r.text(&protocol.Part{ID: "final/" + p.ID, Type: p.Type, Text: p.Text}, p.Text)
			}
		}
	}
	for _, p := range m.Parts {
		if p.Type == protocol.PartTool && p.State != nil {
			if s := r.toolState[p.CallID]; s != protocol.ToolCompleted && s != protocol.ToolError {
				r.tool(p)
			}
		}
	}
	r.endText()
	r.closeTool()
	if e := m.Info.Error; e != nil {
		r.failure(e)
	}
	r.footer(m.Info.Tokens, m.Info.Cost, elapsed)
}

func (r *turnRenderer) failure(e *protocol.MessageError) {
	switch e.Name {
	case "Aborted":
		fmt.Fprintln(r.status, r.st.red("⏹ aborted"))
	default:
		msg := e.Message
		if e.Status != 0 {
			msg = fmt.Sprintf("%s (HTTP %d)", msg, e.Status)
		}
		fmt.Fprintln(r.status, r.st.red("✗ "+e.Name+": "+msg))
	}
}

func (r *turnRenderer) closeTool() {
	if r.openTool != "" {
		fmt.Fprint(r.status, "\n")
		r.openTool = ""
	}
}

// footer prints "[3.2s · 1,234 in / 56 out tokens · $0.0012]".
func (r *turnRenderer) footer(t protocol.Tokens, cost float64, elapsed time.Duration) {
	fmt.Fprintln(r.status, r.st.dim(fmt.Sprintf("[%s · %s in / %s out tokens · %s]",
		seconds(elapsed), thousands(t.Input), thousands(t.Output), dollars(cost))))
}

// abandon ends the output of a turn that ended without its final message.
func (r *turnRenderer) abandon(why string) {
	r.endText()
	r.closeTool()
	fmt.Fprintln(r.status, r.st.red(why))
}
