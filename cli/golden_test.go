package cli

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/alecthomas/kong"
	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// Golden compares got with testdata/<name>, or rewrites it with -update.
func Golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./cli -update to create it)", err)
	}
	if diff := cmp.Diff(string(want), got); diff != "" {
		t.Errorf("%s differs (-want +got; go test ./cli -update rewrites it):\n%s", path, diff)
	}
}

// commandPaths lists every command of the grammar as its words.
func commandPaths(t *testing.T) [][]string {
	t.Helper()
	var g grammar
	k, err := kong.New(&g, kong.Name("lap"), kong.Vars{"default_url": DefaultURL})
	if err != nil {
		t.Fatal(err)
	}
	var paths [][]string
	var walk func(n *kong.Node, prefix []string)
	walk = func(n *kong.Node, prefix []string) {
		for _, c := range n.Children {
			if c.Type != kong.CommandNode {
				continue
			}
			p := append(append([]string{}, prefix...), c.Name)
			paths = append(paths, p)
			walk(c, p)
		}
	}
	walk(k.Model.Node, nil)
	return paths
}

func TestHelpGolden(t *testing.T) {
	t.Setenv("COLUMNS", "80") // Kong wraps help to $COLUMNS
	paths := append([][]string{nil}, commandPaths(t)...)
	for _, p := range paths {
		name := "lap"
		if len(p) > 0 {
			name = strings.Join(p, "_")
		}
		t.Run(name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			code := Main(append(p, "--help"), Env{Stdout: &out, Stderr: &errOut})
			if code != 0 || errOut.Len() > 0 {
				t.Fatalf("lap %s --help: exit %d, stderr %q", strings.Join(p, " "), code, errOut.String())
			}
			Golden(t, "help/"+name+".golden", out.String())
		})
	}
}

func TestBareLapPrintsHelp(t *testing.T) {
	t.Setenv("COLUMNS", "80")
	var bare, help bytes.Buffer
	if code := Main(nil, Env{Stdout: &bare, Stderr: &bare}); code != 0 {
		t.Fatalf("lap: exit %d", code)
	}
	Main([]string{"--help"}, Env{Stdout: &help, Stderr: &help})
	if bare.String() != help.String() {
		t.Fatalf("lap without arguments does not print the help:\n%s", bare.String())
	}
}

// TestGrammarGolden pins the whole command line: commands, aliases,
// arguments and flags with their types, defaults and enums.
func TestGrammarGolden(t *testing.T) {
	var g grammar
	k, err := kong.New(&g, kong.Name("lap"), kong.Vars{"default_url": DefaultURL})
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	var walk func(n *kong.Node, path string)
	walk = func(n *kong.Node, path string) {
		line := path
		if n.DefaultCmd != nil {
			line += fmt.Sprintf("  (default: %s %s)", n.DefaultCmd.Name, n.DefaultCmd.Tag.Default)
		}
		if len(n.Aliases) > 0 {
			line += "  aliases=" + strings.Join(n.Aliases, ",")
		}
		b.WriteString(line + "\n")
		for _, a := range n.Positional {
			req := "optional"
			if a.Required {
				req = "required"
			}
			fmt.Fprintf(&b, "  arg <%s> %s %s\n", a.Name, a.Target.Type(), req)
		}
		var flags []string
		for _, f := range n.Flags {
			s := "  --" + f.Name
			if f.Short != 0 {
				s += fmt.Sprintf(" -%c", f.Short)
			}
			s += " " + f.Target.Type().String()
			if f.Default != "" {
				s += " default=" + f.Default
			}
			if f.Enum != "" {
				s += " enum=" + f.Enum
			}
			if len(f.Xor) > 0 {
				s += " xor=" + strings.Join(f.Xor, ",")
			}
			flags = append(flags, s)
		}
		sort.Strings(flags)
		for _, f := range flags {
			b.WriteString(f + "\n")
		}
		for _, c := range n.Children {
			if c.Type == kong.CommandNode {
				walk(c, path+" "+c.Name)
			}
		}
	}
	walk(k.Model.Node, "lap")
	Golden(t, "grammar.golden", b.String())
}

// TestParse checks what command lines select, above all that a bare agent
// name opens chat and that command names win over agent names.
func TestParse(t *testing.T) {
	tests := []struct {
		args    []string
		command string
		check   func(g *grammar) string
		want    string
	}{
		{[]string{"my-sdk-agent"}, "chat <agent>", func(g *grammar) string { return g.Chat.Agent }, "my-sdk-agent"},
		{[]string{"chat", "agents"}, "chat <agent>", func(g *grammar) string { return g.Chat.Agent }, "agents"},
		{[]string{"-m", "hi", "my-sdk-agent"}, "chat <agent>", func(g *grammar) string { return g.Chat.Agent + "|" + g.Chat.Message }, "my-sdk-agent|hi"},
		{[]string{"my-sdk-agent", "--rm", "--message=hello there"}, "chat <agent>", func(g *grammar) string {
			return fmt.Sprint(g.Chat.Agent, "|", g.Chat.Rm, "|", g.Chat.Message)
		}, "my-sdk-agent|true|hello there"},
		{[]string{"agents"}, "agents list", nil, ""},
		{[]string{"agents", "--json"}, "agents list", func(g *grammar) string { return fmt.Sprint(g.Agents.List.JSON) }, "true"},
		{[]string{"agents", "create", "--name", "a", "--prompt-file", "p.md"}, "agents create", func(g *grammar) string { return g.Agents.Create.PromptFile }, "p.md"},
		{[]string{"agents", "ls", "--search", "sdk"}, "agents list", func(g *grammar) string { return g.Agents.List.Search }, "sdk"},
		{[]string{"agents", "create", "--name", "a", "--env", "K=V", "--env", "X=a;b=c", "--warm", "0"}, "agents create", func(g *grammar) string {
			return fmt.Sprint(g.Agents.Create.Name, "|", g.Agents.Create.Env, "|", *g.Agents.Create.Warm)
		}, "a|map[K:V X:a;b=c]|0"},
		{[]string{"agents", "rm", "a", "-y"}, "agents delete <agent>", func(g *grammar) string { return fmt.Sprint(g.Agents.Delete.Agent, g.Agents.Delete.Yes) }, "atrue"},
		{[]string{"sessions"}, "sessions list", nil, ""},
		{[]string{"sessions", "--agent", "a", "--status", "idle"}, "sessions list", func(g *grammar) string {
			return g.Sessions.List.Agent + "|" + g.Sessions.List.Status
		}, "a|idle"},
		{[]string{"sessions", "rm", "c3970704", "0f21c021"}, "sessions delete <session>", func(g *grammar) string { return strings.Join(g.Sessions.Delete.Sessions, ",") }, "c3970704,0f21c021"},
		{[]string{"resume", "c3970704", "-m", "go on"}, "resume <session>", func(g *grammar) string { return g.Resume.Session + "|" + g.Resume.Message }, "c3970704|go on"},
		{[]string{"login", "--url", "http://lapd:3000"}, "login", func(g *grammar) string { return g.Login.URL }, "http://lapd:3000"},
		{[]string{"logout"}, "logout", nil, ""},
		{[]string{"config", "--json"}, "config", nil, ""},
		{[]string{"logs", "c3970704"}, "logs <session>", nil, ""},
		{[]string{"diagnose", "c3970704", "--json"}, "diagnose <session>", nil, ""},
		{[]string{"harnesses"}, "harnesses", nil, ""},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			var g grammar
			k, err := newParser(&g, newApp(Env{Stdout: &bytes.Buffer{}, Stderr: &bytes.Buffer{}}, &interrupter{}))
			if err != nil {
				t.Fatal(err)
			}
			kctx, err := k.Parse(tt.args)
			if err != nil {
				t.Fatalf("Parse(%q) = %v", tt.args, err)
			}
			if kctx.Command() != tt.command {
				t.Fatalf("Parse(%q) selects %q, want %q", tt.args, kctx.Command(), tt.command)
			}
			if tt.check != nil {
				if got := tt.check(&g); got != tt.want {
					t.Fatalf("Parse(%q) fields = %q, want %q", tt.args, got, tt.want)
				}
			}
		})
	}
}
