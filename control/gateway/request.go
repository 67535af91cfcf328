package gateway

import (
	"bytes"
	"fmt"
	"math"
	"strings"
	"unsafe"

	"github.com/tidwall/gjson"
)

// request is what the gateway reads of a model-calling request body. The
// body is parsed once, here, and checked so that whatever reads it after
// the gateway (the upstream, whichever JSON parser it uses) reads the same
// model, stream flag and output limit: what is priced is what is answered.
type request struct {
	model string
	// stream and includeUsage are "stream" and
	// "stream_options.include_usage" (OpenAI).
	stream, includeUsage bool
	// maxOutput is max_tokens, max_completion_tokens (chat completions)
	// or max_output_tokens (Responses API); 0 when none is given.
	maxOutput int64
	// choices is OpenAI's n, the number of answers generated; 1 if unset.
	choices int64
	// hostedTool is the type of the first tool offered that the provider
	// runs and bills by the call, outside the usage (see
	// unpricedHostedTool); "" if none.
	hostedTool string
	// background is the Responses API's background flag.
	background bool
	// serviceTier is OpenAI's service_tier; "" when unset.
	serviceTier string
}

// Limits of what a request body may contain.
const (
	// maxModelBytes bounds a model name: it becomes a log attribute and
	// is compared against the price table. Real names are far shorter
	// ("us.anthropic.claude-3-5-sonnet-20241022-v2:0" is 45).
	maxModelBytes = 256
	// maxJSONDepth bounds nesting: the duplicate-key check walks the
	// whole document, and real requests nest a few dozen levels at most
	// (tool schemas).
	maxJSONDepth = 128
	// maxChoices is OpenAI's own limit of n.
	maxChoices = 128
)

// parseRequest checks body and reads the fields the gateway prices by. It
// refuses, with a 400 that names the problem:
//   - a body that is not one JSON object;
//   - a key that appears twice in one object, at any depth: JSON parsers
//     disagree on which one counts (gjson takes the first, Python and most
//     upstreams the last), so a duplicate would let a request be priced as
//     one model and answered by another;
//   - top-level keys that differ only in case, which case-insensitive
//     decoders (Go's encoding/json) read as one;
//   - model, stream, stream_options, max_tokens, max_completion_tokens,
//     max_output_tokens, n, background and service_tier of the wrong JSON
//     type, since upstreams coerce them differently
//     ("stream":"false" is true to Python);
//   - a model name that is empty, too long or not made of the characters
//     model names use.
func parseRequest(body []byte) (request, *apiError) {
	if !isJSONObject(body) {
		return request{}, errBadRequest("invalid_json", "the request body is not a JSON object")
	}
	// Parsed in place: gjson.ParseBytes would copy the whole body (up to
	// 32 MiB) into a string first. Nothing read from doc outlives this
	// function but the model, which is cloned.
	doc := gjson.Parse(unsafe.String(unsafe.SliceData(body), len(body)))
	if aerr := checkKeys(doc, 0); aerr != nil {
		return request{}, aerr
	}
	if aerr := checkTopLevelCase(doc); aerr != nil {
		return request{}, aerr
	}
	r := request{choices: 1}
	m := doc.Get("model")
	switch {
	case !m.Exists() || m.Type == gjson.Null:
		return request{}, errBadRequest("missing_model", "the request names no model")
	case m.Type != gjson.String:
		return request{}, errBadRequest("invalid_model", "model must be a string")
	}
	r.model = strings.Clone(m.Str)
	if aerr := checkModelName(r.model); aerr != nil {
		return request{}, aerr
	}
	var aerr *apiError
	if r.stream, aerr = optionalBool(doc, "stream"); aerr != nil {
		return request{}, aerr
	}
	if so := doc.Get("stream_options"); so.Exists() && so.Type != gjson.Null && !so.IsObject() {
		return request{}, errBadRequest("invalid_request", "stream_options must be an object")
	}
	if r.includeUsage, aerr = optionalBool(doc, "stream_options.include_usage"); aerr != nil {
		return request{}, aerr
	}
	for _, field := range []string{"max_tokens", "max_completion_tokens", "max_output_tokens"} {
		v, aerr := optionalCount(doc, field)
		if aerr != nil {
			return request{}, aerr
		}
		r.maxOutput = max(r.maxOutput, v)
	}
	n, aerr := optionalCount(doc, "n")
	if aerr != nil {
		return request{}, aerr
	}
	if n > 0 {
		r.choices = min(n, maxChoices)
	}
	if r.background, aerr = optionalBool(doc, "background"); aerr != nil {
		return request{}, aerr
	}
	switch st := doc.Get("service_tier"); st.Type {
	case gjson.String:
		r.serviceTier = clip(st.Str, 64)
	case gjson.Null:
	default:
		if st.Exists() {
			return request{}, errBadRequest("invalid_request", "service_tier must be a string")
		}
	}
	if tools := doc.Get("tools"); tools.IsArray() {
		tools.ForEach(func(_, t gjson.Result) bool {
			if typ := t.Get("type"); typ.Type == gjson.String && unpricedHostedTool(typ.Str) {
				r.hostedTool = clip(typ.Str, 64)
				return false
			}
			return true
		})
	}
	return r, nil
}

// unpricedHostedTool reports whether a Responses API tool type is one the
// provider runs itself and bills per call on top of the tokens, which the
// answer's usage does not report (web search, file search, the code
// interpreter's containers, image generation): the gateway could not
// count what it costs against a budget.
func unpricedHostedTool(typ string) bool {
	switch {
	case strings.HasPrefix(typ, "web_search"), typ == "file_search", typ == "code_interpreter", typ == "image_generation":
		return true
	}
	return false
}

// checkKeys refuses a document with a key twice in one object, or nested
// deeper than maxJSONDepth. Keys compare as decoded ("mod\u0065l" is
// "model").
func checkKeys(v gjson.Result, depth int) *apiError {
	if !v.IsObject() && !v.IsArray() {
		return nil
	}
	if depth >= maxJSONDepth {
		return errBadRequest("invalid_json", fmt.Sprintf("the request body nests deeper than %d levels", maxJSONDepth))
	}
	var aerr *apiError
	if v.IsArray() {
		v.ForEach(func(_, item gjson.Result) bool {
			aerr = checkKeys(item, depth+1)
			return aerr == nil
		})
		return aerr
	}
	var seen map[string]struct{}
	v.ForEach(func(k, item gjson.Result) bool {
		if seen == nil {
			seen = map[string]struct{}{}
		}
		if _, dup := seen[k.Str]; dup {
			aerr = errBadRequest("duplicate_key", fmt.Sprintf("the request body has the key %q twice in one object; "+
				"lapd refuses duplicate keys, as JSON parsers disagree on which one counts", clip(k.Str, 64)))
			return false
		}
		seen[k.Str] = struct{}{}
		aerr = checkKeys(item, depth+1)
		return aerr == nil
	})
	return aerr
}

// checkTopLevelCase refuses top-level keys that differ only in case.
func checkTopLevelCase(doc gjson.Result) *apiError {
	seen := map[string]string{}
	var aerr *apiError
	doc.ForEach(func(k, _ gjson.Result) bool {
		folded := strings.ToLower(k.Str)
		if other, dup := seen[folded]; dup {
			aerr = errBadRequest("duplicate_key", fmt.Sprintf("the request body has the keys %q and %q, which differ only in case",
				clip(other, 64), clip(k.Str, 64)))
			return false
		}
		seen[folded] = k.Str
		return true
	})
	return aerr
}

// checkModelName accepts the names providers and LiteLLM use: letters,
// digits and . _ - : / @ +, at most maxModelBytes long. A name from a
// request reaches logs and error messages, so anything else is refused
// before it is used.
func checkModelName(model string) *apiError {
	if model == "" {
		return errBadRequest("missing_model", "the request names no model")
	}
	if len(model) > maxModelBytes {
		return errBadRequest("invalid_model", fmt.Sprintf("the model name is %d bytes long; at most %d are accepted", len(model), maxModelBytes))
	}
	for i := 0; i < len(model); i++ {
		if !modelChar(model[i]) {
			return errBadRequest("invalid_model", fmt.Sprintf("the model name %q has a character (byte %d) that model names do not use; "+
				"accepted are letters, digits and . _ - : / @ +", clip(model, 64), i))
		}
	}
	return nil
}

func modelChar(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		c == '.' || c == '_' || c == '-' || c == ':' || c == '/' || c == '@' || c == '+'
}

// optionalBool reads a field that must be a JSON boolean when present.
func optionalBool(doc gjson.Result, path string) (bool, *apiError) {
	v := doc.Get(path)
	switch v.Type {
	case gjson.True:
		return true, nil
	case gjson.False, gjson.Null:
		return false, nil
	}
	if !v.Exists() {
		return false, nil
	}
	return false, errBadRequest("invalid_request", path+" must be true or false")
}

// optionalCount reads a field that must be a non-negative integer when
// present; 0 when absent.
func optionalCount(doc gjson.Result, path string) (int64, *apiError) {
	v := doc.Get(path)
	if !v.Exists() || v.Type == gjson.Null {
		return 0, nil
	}
	if v.Type != gjson.Number || v.Num < 0 || v.Num != math.Trunc(v.Num) || v.Num > math.MaxInt32 {
		return 0, errBadRequest("invalid_request", path+" must be a non-negative integer")
	}
	return int64(v.Num), nil
}

// clip shortens s to at most n bytes (on a UTF-8 boundary), marking the
// cut, for log lines and messages that quote what a sandbox sent.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "") + "…"
}

// isJSONObject reports whether body is one valid JSON object.
func isJSONObject(body []byte) bool {
	trimmed := bytes.TrimLeft(body, " \t\r\n")
	return len(trimmed) > 0 && trimmed[0] == '{' && gjson.ValidBytes(body)
}
