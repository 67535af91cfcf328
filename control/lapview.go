package control

import (
	"strings"

	"github.com/gofiber/fiber/v2"

	"lap.dev/lap/control/api"
)

// lapViewKey marks a request made under api.LAPPrefix.
const lapViewKey = "lap.lapView"

// lapView serves LAP's view of the API (api.LAPPrefix): the request is
// routed as the same path without the prefix, and marked so the
// handlers render sessions as LAP's clients read them (lapSession). A
// prefix rather than guessing the client (its User-Agent is Node's): the
// LiteLLM Agent Platform's users change only their base URL, and lap's
// own clients keep reading "idle".
func lapView(c *fiber.Ctx) error {
	rest, ok := strings.CutPrefix(c.Path(), api.LAPPrefix+"/")
	if !ok {
		return c.Next()
	}
	c.Locals(lapViewKey, true)
	c.Path("/" + rest)
	return c.Next()
}

// lapSession renders sess for the view c was asked in: in LAP's view a
// session scaled to zero is "ready" — it takes messages, and LAP's CLI
// resumes only a ready session — and sandbox_state keeps lap's state.
func lapSession(c *fiber.Ctx, sess api.Session) api.Session {
	if on, _ := c.Locals(lapViewKey).(bool); on && sess.Status == api.SessionIdle {
		sess.Status = api.SessionReady
	}
	return sess
}
