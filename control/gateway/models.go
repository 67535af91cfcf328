package gateway

import (
	"context"
	"io"
	"net/http"

	"github.com/gofiber/fiber/v2"
	"github.com/tidwall/gjson"
	"github.com/tidwall/sjson"

	"lap.dev/lap/control/gateway/mockllm"
)

// handleModels lists the upstream's models followed by the mock models,
// in the OpenAI list shape, or in Anthropic's when the client sent
// anthropic-version (as Anthropic's SDKs do).
func (g *Gateway) handleModels(c *fiber.Ctx) error {
	d := openAI
	if c.Get("Anthropic-Version") != "" {
		d = anthropicMessages
	}
	who, aerr := g.authenticate(c.UserContext(), c)
	if aerr != nil {
		g.metrics.request("", "", aerr.status)
		return g.fail(c, d, aerr)
	}
	if g.upstream == "" {
		g.metrics.request(who.agentID, "", http.StatusOK)
		return c.JSON(mockModelList(d == anthropicMessages))
	}

	ctx, cancel := context.WithTimeout(context.WithoutCancel(c.UserContext()), g.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, g.upstream+"/v1/models", nil)
	if err != nil {
		return g.fail(c, d, errInternal("build upstream request: "+err.Error()))
	}
	req.URL.RawQuery = forwardQuery(c, modelsQuery)
	copyRequestHeaders(req.Header, c)
	if g.key != "" {
		d.setKey(req.Header, g.key)
	}
	resp, err := g.client.Do(req)
	if err != nil {
		aerr := g.upstreamError(ctx, err)
		g.metrics.request(who.agentID, "", aerr.status)
		return g.fail(c, d, aerr)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswerBytes))
	if err != nil {
		aerr := g.upstreamError(ctx, err)
		g.metrics.request(who.agentID, "", aerr.status)
		return g.fail(c, d, aerr)
	}
	g.metrics.request(who.agentID, "", resp.StatusCode)
	c.Status(resp.StatusCode)
	copyResponseHeaders(c, resp)
	if resp.StatusCode == http.StatusOK {
		body = withMockModels(body)
	}
	return c.Send(body)
}

// mockModel is a mock model as a list item, in either shape.
func mockModel(id string, anthropicShape bool) map[string]any {
	if anthropicShape {
		return map[string]any{"type": "model", "id": id, "display_name": id + " (lap offline demo)",
			"created_at": "1970-01-01T00:00:00Z"}
	}
	return map[string]any{"id": id, "object": "model", "created": 0, "owned_by": "lap"}
}

func mockModelList(anthropicShape bool) map[string]any {
	models := mockllm.Models()
	data := make([]map[string]any, len(models))
	for i, id := range models {
		data[i] = mockModel(id, anthropicShape)
	}
	if anthropicShape {
		return map[string]any{"data": data, "has_more": false, "first_id": models[0], "last_id": models[len(models)-1]}
	}
	return map[string]any{"object": "list", "data": data}
}

// withMockModels appends the mock models to an upstream's model list,
// in the shape of its items, leaving everything else as it was. A body
// that is not a list is returned unchanged.
func withMockModels(body []byte) []byte {
	data := gjson.GetBytes(body, "data")
	if !data.IsArray() {
		return body
	}
	anthropicShape := gjson.GetBytes(body, "data.0.type").Str == "model"
	for _, id := range mockllm.Models() {
		out, err := sjson.SetBytes(body, "data.-1", mockModel(id, anthropicShape))
		if err != nil {
			return body // an array checked above: cannot happen
		}
		body = out
	}
	return body
}
