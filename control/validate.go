package control

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"mime"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/gofiber/fiber/v2"

	"lap.dev/lap/control/api"
	"lap.dev/lap/sandboxes"
	"lap.dev/lap/sandboxes/protocol"
)

// Limits of what the API accepts.
const (
	maxBodyBytes    = 1 << 20 // every management request body
	serverBodyLimit = 8 << 20 // fasthttp's limit; bodylimit.go enforces the real ones
	maxNameLen      = 40      // agent names: also the Knative Service name
	maxEnvVars      = 50
	maxEnvBytes     = 16 << 10 // names plus values
	maxTitleLen     = 200
	maxBranchLen    = 200
	maxModelLen     = 200
	maxWarmPoolSize = 100
	// maxPromptBytes bounds an agent's prompt: it reaches the harness as
	// AGENT_PROMPT in its environment, and Linux refuses to start a
	// process with an environment string over 128 KiB (MAX_ARG_STRLEN).
	maxPromptBytes = 64 << 10
)

var (
	// Agent names are DNS-1123 labels that also start with a letter: the
	// name becomes a Knative Service name, which must (DNS-1035).
	dnsLabel = regexp.MustCompile(`^[a-z]([-a-z0-9]*[a-z0-9])?$`)
	envName  = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	// scpLike is git's user@host:path form of an ssh URL.
	scpLike = regexp.MustCompile(`^[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:[^/].*$`)
	branch  = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._/-]*$`)
)

// reservedEnv are the sandbox environment names lap sets itself
// (ARCHITECTURE §5); an agent's env_vars may not override them.
var reservedEnv = []string{"PORT", "HARNESS_AUTH_TOKEN", "REPO_URL", "BRANCH", "AGENT_PROMPT",
	"LAP_MODEL", "LITELLM_API_BASE", "LITELLM_API_KEY", "WORKSPACE"}

// decodeBody decodes a JSON request body into v. An empty body is allowed
// only when !required. Unknown fields, malformed JSON and trailing data
// are 400; a body that is not application/json is 415.
func decodeBody(c *fiber.Ctx, v any, required bool) error {
	body := c.Body()
	if len(bytes.TrimSpace(body)) == 0 {
		if required {
			return badRequest("request body required: a JSON object")
		}
		return nil
	}
	ct := c.Get(fiber.HeaderContentType)
	if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != fiber.MIMEApplicationJSON {
		return newAPIError(fiber.StatusUnsupportedMediaType, api.CodeUnsupportedMedia,
			"Content-Type must be application/json, not %q", ct)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if strings.HasPrefix(err.Error(), "json: unknown field ") {
			return badRequest("unknown field %s", strings.TrimPrefix(err.Error(), "json: unknown field "))
		}
		return decodeJSONError(err)
	}
	if dec.More() {
		return badRequest("malformed JSON: data after the object")
	}
	return nil
}

// problems collects validation failures so a client learns all at once.
type problems []string

func (p *problems) add(format string, args ...any) { *p = append(*p, fmt.Sprintf(format, args...)) }

func (p problems) err() error {
	if len(p) == 0 {
		return nil
	}
	return badRequest("%s", strings.Join(p, "; "))
}

func validateName(p *problems, name string) {
	switch {
	case name == "":
		p.add("name is required")
	case len(name) > maxNameLen || !dnsLabel.MatchString(name):
		p.add("name %q must be a DNS-1123 label of 1 to %d characters: lower-case letters, digits and '-', starting with a letter and ending with a letter or digit", name, maxNameLen)
	}
}

func validateHarness(p *problems, id string) {
	if _, ok := sandboxes.LookupHarness(id); !ok {
		p.add("harness_id %q is not known; use one of: %s", id, strings.Join(sandboxes.HarnessIDs(), ", "))
	}
}

func validateModel(p *problems, model string) {
	switch {
	case model == "":
		p.add("model is required (e.g. anthropic/claude-sonnet-4-5), or set LAP_DEFAULT_MODEL")
	case len(model) > maxModelLen || strings.ContainsAny(model, " \t\r\n"):
		p.add("model %q must be at most %d characters without spaces", model, maxModelLen)
	}
}

func validateRepoURL(p *problems, raw string) {
	if raw == "" {
		return
	}
	if scpLike.MatchString(raw) {
		return
	}
	u, err := url.Parse(raw)
	ok := err == nil
	if ok {
		switch u.Scheme {
		case "http", "https", "ssh", "git+ssh":
			ok = u.Host != ""
		case "file":
			ok = u.Path != ""
		default:
			ok = false
		}
	}
	if !ok {
		p.add("repo_url %q must be an http(s), ssh or file URL (or user@host:path)", raw)
	}
}

func validateBranch(p *problems, b string) {
	if len(b) > maxBranchLen || !branch.MatchString(b) || strings.Contains(b, "..") || strings.HasSuffix(b, ".lock") || strings.HasSuffix(b, "/") {
		p.add("branch %q is not a valid git branch name", b)
	}
}

func validatePrompt(p *problems, prompt string) {
	if !utf8.ValidString(prompt) {
		p.add("prompt must be UTF-8 text")
	}
	if len(prompt) > maxPromptBytes {
		p.add("prompt is %d bytes; at most %d (it reaches the sandbox in its environment)", len(prompt), maxPromptBytes)
	}
}

func validateEnv(p *problems, env map[string]string) {
	if len(env) > maxEnvVars {
		p.add("env_vars has %d entries; at most %d are allowed", len(env), maxEnvVars)
	}
	size := 0
	for _, name := range slices.Sorted(maps.Keys(env)) {
		size += len(name) + len(env[name])
		switch {
		case !envName.MatchString(name):
			p.add("env_vars name %q must match [A-Za-z_][A-Za-z0-9_]*", name)
		case isReservedEnv(name):
			p.add("env_vars name %q is reserved: lap sets it in every sandbox", name)
		}
		if strings.ContainsRune(env[name], 0) {
			p.add("env_vars %s: value contains a NUL byte", name)
		}
	}
	if size > maxEnvBytes {
		p.add("env_vars total %d bytes; at most %d are allowed", size, maxEnvBytes)
	}
}

func isReservedEnv(name string) bool {
	up := strings.ToUpper(name)
	for _, r := range reservedEnv {
		if up == r {
			return true
		}
	}
	return strings.HasPrefix(up, "LAP_")
}

func validateWarmPool(p *problems, n *int) {
	if n != nil && (*n < 0 || *n > maxWarmPoolSize) {
		p.add("warm_pool_size %d must be from 0 to %d", *n, maxWarmPoolSize)
	}
}

func validateBudget(p *problems, b *float64) {
	if b != nil && (*b < 0 || math.IsNaN(*b) || math.IsInf(*b, 0)) {
		p.add("max_budget_usd must be a number ≥ 0")
	}
}

func validateTitle(p *problems, title string) {
	if utf8.RuneCountInString(title) > maxTitleLen {
		p.add("title is longer than %d characters", maxTitleLen)
	}
}

// messageParts validates a send-message body and returns its parts.
func messageParts(req api.SendMessageRequest) ([]protocol.InputPart, error) {
	switch {
	case req.Text != "" && len(req.Parts) > 0:
		return nil, badRequest("give either text or parts, not both")
	case req.Text != "":
		return []protocol.InputPart{{Type: "text", Text: req.Text}}, nil
	case len(req.Parts) == 0:
		return nil, badRequest("text is required (or parts)")
	}
	text := ""
	for i, part := range req.Parts {
		if part.Type != "text" {
			return nil, badRequest("parts[%d].type %q: only \"text\" parts are supported", i, part.Type)
		}
		text += part.Text
	}
	if strings.TrimSpace(text) == "" {
		return nil, badRequest("the message has no text")
	}
	return req.Parts, nil
}
