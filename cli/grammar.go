package cli

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/alecthomas/kong"
)

// grammar is the command line of lap. Each command is a small struct with
// a Run method; Kong binds the context and the app to it.
//
// Chat is the default command and takes the agent as its argument, so
// `lap my-agent` means `lap chat my-agent`. A word that names a command
// (agents, sessions, login, …) is always that command: an agent called
// "agents" is reached as `lap chat agents`.
type grammar struct {
	Chat      chatCmd      `cmd:"" default:"withargs" help:"Chat with an agent: lap <agent> is short for lap chat <agent>."`
	Resume    resumeCmd    `cmd:"" help:"Continue a session in chat mode."`
	Agents    agentsCmd    `cmd:"" help:"List and manage agents."`
	Sessions  sessionsCmd  `cmd:"" help:"List and manage sessions."`
	Logs      logsCmd      `cmd:"" help:"Show a session's timeline."`
	Diagnose  diagnoseCmd  `cmd:"" help:"Explain why a session is or is not working."`
	Harnesses harnessesCmd `cmd:"" help:"List the harnesses the server can run."`
	Login     loginCmd     `cmd:"" help:"Check and save the server URL and master key."`
	Logout    logoutCmd    `cmd:"" help:"Forget the saved login."`
	Config    configCmd    `cmd:"" help:"Show the server and key in use (the key masked)."`
}

const description = `lap runs coding agents in sandboxes that scale to zero.

  lap <agent>            chat with an agent (a new session)
  lap resume <session>   continue a session
  lap <command>          one of the commands below

The server and master key come from lap login (saved in ~/.lap/config.json),
overridden by LAP_URL and LAP_MASTER_KEY.`

// exitPanic carries Kong's exit (after --help) out of the parser without
// ending the process, so Run stays testable in-process.
type exitPanic struct{ code int }

// newParser builds the Kong parser for g writing to a's streams.
func newParser(g *grammar, a *app) (*kong.Kong, error) {
	return kong.New(g,
		kong.Name("lap"),
		kong.Description(description),
		kong.Writers(a.out, a.errOut),
		kong.Exit(func(code int) { panic(exitPanic{code}) }),
		kong.ConfigureHelp(kong.HelpOptions{WrapUpperBound: 100}),
		kong.Help(helpWithExitCodes),
		kong.Vars{"default_url": DefaultURL},
		kong.Bind(a),
	)
}

// helpWithExitCodes is Kong's help with the exit codes under the top level.
func helpWithExitCodes(options kong.HelpOptions, ctx *kong.Context) error {
	if err := kong.DefaultHelpPrinter(options, ctx); err != nil {
		return err
	}
	if ctx.Selected() == nil {
		fmt.Fprintln(ctx.Stdout)
		fmt.Fprint(ctx.Stdout, exitCodesHelp)
	}
	return nil
}

// runKong parses args and runs the selected command.
func runKong(ctx context.Context, args []string, a *app) (err error) {
	var g grammar
	parser, err := newParser(&g, a)
	if err != nil {
		return fmt.Errorf("build command line: %w", err)
	}
	defer func() {
		if r := recover(); r != nil {
			ep, ok := r.(exitPanic)
			if !ok {
				panic(r)
			}
			if ep.code != 0 {
				err = errSilent{ep.code}
			}
		}
	}()
	if len(args) == 0 {
		args = []string{"--help"}
	}
	kctx, err := parser.Parse(args)
	if err != nil {
		return usageError(err)
	}
	kctx.BindTo(ctx, (*context.Context)(nil))
	return kctx.Run()
}

// usageError words a parse error with a pointer to the help.
func usageError(err error) error {
	var pe *kong.ParseError
	msg := err.Error()
	if errors.As(err, &pe) && pe.Context != nil {
		if cmd := pe.Context.Command(); cmd != "" && !strings.HasPrefix(cmd, "chat") {
			return withCode(ExitUsage, fmt.Errorf("%s (see lap %s --help)", msg, commandWords(cmd)))
		}
	}
	return withCode(ExitUsage, fmt.Errorf("%s (see lap --help)", msg))
}

// commandWords drops the <arg> placeholders from a Kong command path.
func commandWords(cmd string) string {
	var words []string
	for _, w := range strings.Fields(cmd) {
		if !strings.HasPrefix(w, "<") {
			words = append(words, w)
		}
	}
	return strings.Join(words, " ")
}

// commandNames lists the top-level commands, for "did you mean" answers.
func commandNames() []string {
	var g grammar
	parser, err := kong.New(&g, kong.Name("lap"), kong.Vars{"default_url": DefaultURL})
	if err != nil {
		return nil
	}
	var names []string
	for _, n := range parser.Model.Children {
		names = append(names, n.Name)
		names = append(names, n.Aliases...)
	}
	return names
}
