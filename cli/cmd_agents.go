package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"lap.dev/lap/control/api"
)

// agentsCmd groups `lap agents …`; bare `lap agents` lists them.
type agentsCmd struct {
	List   agentsListCmd   `cmd:"" default:"withargs" aliases:"ls" help:"List agents (the default)."`
	Create agentsCreateCmd `cmd:"" help:"Create an agent."`
	Get    agentsGetCmd    `cmd:"" aliases:"show" help:"Show one agent."`
	Update agentsUpdateCmd `cmd:"" help:"Change an agent."`
	Delete agentsDeleteCmd `cmd:"" aliases:"rm" help:"Delete an agent, its sessions and sandboxes."`
}

type agentsListCmd struct {
	Search string `help:"Only agents whose name contains this." placeholder:"TEXT"`
	JSON   bool   `help:"Print JSON."`
}

// Run lists agents as a table.
func (c *agentsListCmd) Run(ctx context.Context, a *app) error {
	cl, err := a.client()
	if err != nil {
		return err
	}
	agents, err := cl.ListAgents(ctx, c.Search)
	if err != nil {
		return err
	}
	if c.JSON {
		if agents == nil {
			agents = []api.Agent{}
		}
		return writeJSON(a.out, agents)
	}
	if len(agents) == 0 {
		fmt.Fprintln(a.out, "no agents yet; create one with: lap agents create --name my-agent")
		return nil
	}
	t := newTable(a.out, "NAME", "ID", "HARNESS", "MODEL", "REPO", "CREATED")
	now := a.env.Now()
	for _, ag := range agents {
		repo := ag.RepoURL
		if repo != "" && ag.Branch != "" && ag.Branch != "main" {
			repo += "@" + ag.Branch
		}
		t.row(ag.Name, shortID(ag.ID), ag.HarnessID, ag.Model, orDash(repo), ago(now, ag.CreatedAt))
	}
	return t.flush()
}

// agentFields are the flags shared by create and update.
type agentFields struct {
	Harness    string            `help:"Harness that runs the agent: lap, claude-agent-sdk, opencode (lap harnesses lists them)." placeholder:"ID"`
	Model      string            `help:"Model, e.g. anthropic/claude-sonnet-4-5 or mock/tools." placeholder:"MODEL"`
	Prompt     string            `help:"System prompt." placeholder:"TEXT" xor:"prompt"`
	PromptFile string            `help:"Read the system prompt from a file (- for stdin)." placeholder:"FILE" xor:"prompt"`
	Repo       string            `help:"Git repository the sandbox clones." placeholder:"URL"`
	Branch     string            `help:"Branch to clone (server default: main)." placeholder:"BRANCH"`
	Env        map[string]string `mapsep:"none" help:"Secret environment variable for the sandbox (repeatable); values are never shown again." placeholder:"K=V"`
	Warm       *int              `help:"Warm sandboxes kept ready for this agent (overrides WARM_POOL_SIZE)." placeholder:"N"`
	Budget     *float64          `name:"max-budget" help:"Spending limit in USD per session." placeholder:"USD"`
}

// prompt returns the prompt from --prompt or --prompt-file, and whether one
// was given.
func (f *agentFields) prompt(in io.Reader) (string, bool, error) {
	switch {
	case f.Prompt != "":
		return f.Prompt, true, nil
	case f.PromptFile == "-":
		b, err := io.ReadAll(in)
		if err != nil {
			return "", false, fmt.Errorf("read prompt from stdin: %w", err)
		}
		return strings.TrimSpace(string(b)), true, nil
	case f.PromptFile != "":
		b, err := os.ReadFile(f.PromptFile)
		if err != nil {
			return "", false, withCode(ExitUsage, fmt.Errorf("read prompt: %w", err))
		}
		return strings.TrimSpace(string(b)), true, nil
	}
	return "", false, nil
}

type agentsCreateCmd struct {
	Name string `help:"Agent name: lower case letters, digits and '-', 1-40 characters." placeholder:"NAME"`
	agentFields
	File string `short:"f" help:"Read the agent from a JSON file (the body of POST /agents; - for stdin); flags override its fields." placeholder:"FILE"`
	JSON bool   `help:"Print the created agent as JSON."`
}

// Help shows the quickstart's agent as a command line.
func (agentsCreateCmd) Help() string {
	return "For example:\n\n" +
		"    lap agents create --name my-sdk-agent --harness claude-agent-sdk \\\n" +
		"      --model anthropic/claude-sonnet-4-5 --prompt 'You are a helpful assistant.' \\\n" +
		"      --repo https://github.com/your-org/your-repo --branch main\n\n" +
		"Without --harness the server uses lap's own harness; without --model its LAP_DEFAULT_MODEL."
}

// Run creates the agent.
func (c *agentsCreateCmd) Run(ctx context.Context, a *app) error {
	var req api.CreateAgentRequest
	if c.File != "" {
		if err := readJSONFile(c.File, a.in, &req); err != nil {
			return err
		}
	}
	if c.Name != "" {
		req.Name = c.Name
	}
	if req.Name == "" {
		return withCode(ExitUsage, errors.New("an agent needs a name: --name my-agent (or \"name\" in -f agent.json)"))
	}
	set := func(dst *string, v string) {
		if v != "" {
			*dst = v
		}
	}
	set(&req.HarnessID, c.Harness)
	set(&req.Model, c.Model)
	set(&req.RepoURL, c.Repo)
	set(&req.Branch, c.Branch)
	p, ok, err := c.prompt(a.in)
	if err != nil {
		return err
	}
	if ok {
		req.Prompt = p
	}
	if len(c.Env) > 0 {
		if req.EnvVars == nil {
			req.EnvVars = map[string]string{}
		}
		for k, v := range c.Env {
			req.EnvVars[k] = v
		}
	}
	if c.Warm != nil {
		req.WarmPoolSize = c.Warm
	}
	if c.Budget != nil {
		req.MaxBudgetUSD = c.Budget
	}
	cl, err := a.client()
	if err != nil {
		return err
	}
	ag, err := cl.CreateAgent(ctx, req)
	if err != nil {
		return err
	}
	if c.JSON {
		return writeJSON(a.out, ag)
	}
	fmt.Fprintf(a.out, "✓ agent %s (%s, harness=%s, model=%s)\n", ag.Name, shortID(ag.ID), ag.HarnessID, ag.Model)
	fmt.Fprintf(a.out, "chat with it: lap %s\n", ag.Name)
	return nil
}

// readJSONFile decodes a JSON file (or stdin for "-") strictly, so a typo
// in a field name is an error instead of a silently dropped setting.
func readJSONFile(path string, stdin io.Reader, v any) error {
	var r io.Reader
	if path == "-" {
		r = stdin
	} else {
		f, err := os.Open(path)
		if err != nil {
			return withCode(ExitUsage, fmt.Errorf("read agent file: %w", err))
		}
		defer f.Close()
		r = f
	}
	dec := json.NewDecoder(bufio.NewReader(r))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return withCode(ExitUsage, fmt.Errorf("read agent file %s: %w", path, err))
	}
	return nil
}

type agentsGetCmd struct {
	Agent string `arg:"" help:"Agent name or id."`
	JSON  bool   `help:"Print JSON."`
}

// Run shows one agent.
func (c *agentsGetCmd) Run(ctx context.Context, a *app) error {
	cl, err := a.client()
	if err != nil {
		return err
	}
	ag, err := findAgent(ctx, cl, c.Agent)
	if err != nil {
		return err
	}
	if c.JSON {
		return writeJSON(a.out, ag)
	}
	printAgent(a.out, ag)
	return nil
}

func printAgent(w io.Writer, ag api.Agent) {
	fmt.Fprintf(w, "name        %s\n", ag.Name)
	fmt.Fprintf(w, "id          %s\n", ag.ID)
	fmt.Fprintf(w, "harness     %s\n", ag.HarnessID)
	fmt.Fprintf(w, "model       %s\n", ag.Model)
	fmt.Fprintf(w, "repo        %s\n", orDash(ag.RepoURL))
	fmt.Fprintf(w, "branch      %s\n", orDash(ag.Branch))
	if ag.WarmPoolSize != nil {
		fmt.Fprintf(w, "warm pool   %d\n", *ag.WarmPoolSize)
	}
	if ag.MaxBudgetUSD != nil {
		fmt.Fprintf(w, "max budget  %s per session\n", dollars(*ag.MaxBudgetUSD))
	}
	if len(ag.EnvVars) > 0 {
		fmt.Fprintf(w, "env vars    %s (values hidden)\n", strings.Join(ag.EnvVars, ", "))
	}
	fmt.Fprintf(w, "generation  %d\n", ag.Generation)
	fmt.Fprintf(w, "usage       %s in / %s out tokens, %s, %d requests\n",
		thousands(ag.Usage.InputTokens), thousands(ag.Usage.OutputTokens), dollars(ag.Usage.CostUSD), ag.Usage.Requests)
	fmt.Fprintf(w, "created     %s\n", ag.CreatedAt.UTC().Format("2006-01-02 15:04:05Z"))
	if ag.Prompt != "" {
		fmt.Fprintf(w, "prompt\n")
		for _, line := range strings.Split(ag.Prompt, "\n") {
			fmt.Fprintf(w, "  %s\n", line)
		}
	}
}

type agentsUpdateCmd struct {
	Agent string `arg:"" help:"Agent name or id."`
	Name  string `help:"New name." placeholder:"NAME"`
	agentFields
	ClearEnv bool `help:"Remove every environment variable (with --env: replace them)."`
	JSON     bool `help:"Print the updated agent as JSON."`
}

// Run changes the given fields only.
func (c *agentsUpdateCmd) Run(ctx context.Context, a *app) error {
	var req api.UpdateAgentRequest
	ptr := func(v string) *string {
		if v == "" {
			return nil
		}
		return &v
	}
	req.Name = ptr(c.Name)
	req.HarnessID = ptr(c.Harness)
	req.Model = ptr(c.Model)
	req.RepoURL = ptr(c.Repo)
	req.Branch = ptr(c.Branch)
	p, ok, err := c.prompt(a.in)
	if err != nil {
		return err
	}
	if ok {
		req.Prompt = &p
	}
	switch {
	case len(c.Env) > 0 && !c.ClearEnv:
		return withCode(ExitUsage, errors.New("--env replaces every variable of the agent; add --clear-env to confirm, and list them all"))
	case c.ClearEnv:
		env := map[string]string{}
		for k, v := range c.Env {
			env[k] = v
		}
		req.EnvVars = &env
	}
	req.WarmPoolSize = c.Warm
	req.MaxBudgetUSD = c.Budget
	if req == (api.UpdateAgentRequest{}) {
		return withCode(ExitUsage, errors.New("nothing to change: give at least one flag (see lap agents update --help)"))
	}
	cl, err := a.client()
	if err != nil {
		return err
	}
	ag, err := findAgent(ctx, cl, c.Agent)
	if err != nil {
		return err
	}
	ag, err = cl.UpdateAgent(ctx, ag.ID, req)
	if err != nil {
		return err
	}
	if c.JSON {
		return writeJSON(a.out, ag)
	}
	fmt.Fprintf(a.out, "✓ agent %s (%s) updated, generation %d\n", ag.Name, shortID(ag.ID), ag.Generation)
	return nil
}

type agentsDeleteCmd struct {
	Agent string `arg:"" help:"Agent name or id."`
	Yes   bool   `short:"y" help:"Do not ask for confirmation."`
}

// Run deletes the agent after asking, unless --yes.
func (c *agentsDeleteCmd) Run(ctx context.Context, a *app) error {
	cl, err := a.client()
	if err != nil {
		return err
	}
	ag, err := findAgent(ctx, cl, c.Agent)
	if err != nil {
		return err
	}
	if !c.Yes {
		if !a.inTTY {
			return withCode(ExitUsage, fmt.Errorf("delete agent %s: add --yes to confirm (stdin is not a terminal)", ag.Name))
		}
		fmt.Fprintf(a.out, "Delete agent %s (%s), end its sessions and destroy their sandboxes? [y/N] ", ag.Name, shortID(ag.ID))
		answer, _ := readLine(bufio.NewReader(a.in))
		if ans := strings.ToLower(answer); ans != "y" && ans != "yes" {
			fmt.Fprintln(a.out, "not deleted")
			return errSilent{ExitError}
		}
	}
	if err := cl.DeleteAgent(ctx, ag.ID); err != nil {
		return err
	}
	fmt.Fprintf(a.out, "✓ agent %s (%s) deleted\n", ag.Name, shortID(ag.ID))
	return nil
}

// findAgent fetches an agent by name or id; when there is none it lists
// the closest names (and commands, for a mistyped `lap agnts`).
func findAgent(ctx context.Context, cl *Client, nameOrID string) (api.Agent, error) {
	ag, err := cl.GetAgent(ctx, nameOrID)
	if err == nil || !isStatus(err, 404) {
		return ag, err
	}
	all, lerr := cl.ListAgents(ctx, "")
	if lerr != nil {
		return api.Agent{}, withCode(ExitNotFound, fmt.Errorf("agent %q not found", nameOrID))
	}
	names := make([]string, len(all))
	for i, x := range all {
		names[i] = x.Name
	}
	msg := fmt.Sprintf("agent %q not found", nameOrID)
	if close := closest(nameOrID, names, 3); len(close) > 0 {
		msg += "; did you mean " + orList(close) + "?"
	} else if cmds := closest(nameOrID, commandNames(), 1); len(cmds) > 0 {
		msg += fmt.Sprintf("; did you mean the command `lap %s`?", cmds[0])
	} else if len(names) == 0 {
		msg += "; there are no agents yet (lap agents create --name NAME)"
	} else {
		msg += "; `lap agents` lists them"
	}
	return api.Agent{}, withCode(ExitNotFound, errors.New(msg))
}

// orList words a list as "a, b or c".
func orList(items []string) string {
	if len(items) == 1 {
		return items[0]
	}
	return strings.Join(items[:len(items)-1], ", ") + " or " + items[len(items)-1]
}
