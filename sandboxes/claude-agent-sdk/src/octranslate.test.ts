import { test } from "node:test";
import assert from "node:assert/strict";
import { conversation, convertError, convertPart, Events, turnOf, type OcMessage } from "./octranslate.js";
import { modelRef, opencodeConfig } from "./opencode.js";
import { loadConfig } from "./config.js";
import type { Event } from "./protocol.js";

// Shapes as opencode 1.18 serves them, trimmed to what the adapter reads.
const user: OcMessage = {
  info: { id: "msg_u", sessionID: "ses_1", role: "user", time: { created: 1 } },
  parts: [{ id: "prt_u", sessionID: "ses_1", messageID: "msg_u", type: "text", text: "write a file" }],
};
const step1: OcMessage = {
  info: { id: "msg_a1", sessionID: "ses_1", role: "assistant", parentID: "msg_u", modelID: "mock/tools", time: { created: 2, completed: 3 }, tokens: { input: 10, output: 5, reasoning: 1, cache: { read: 2, write: 0 } }, cost: 0.1 },
  parts: [
    { id: "prt_s", sessionID: "ses_1", messageID: "msg_a1", type: "step-start" },
    { id: "prt_t", sessionID: "ses_1", messageID: "msg_a1", type: "tool", tool: "bash", callID: "call_1", state: { status: "completed", input: { command: "ls" }, output: "a\n", title: "ls" } },
    { id: "prt_f", sessionID: "ses_1", messageID: "msg_a1", type: "step-finish" },
  ],
};
const step2: OcMessage = {
  info: { id: "msg_a2", sessionID: "ses_1", role: "assistant", parentID: "msg_u", time: { created: 4, completed: 5 }, tokens: { input: 20, output: 3 }, cost: 0.2 },
  parts: [{ id: "prt_x", sessionID: "ses_1", messageID: "msg_a2", type: "text", text: "done" }],
};

test("a turn's steps merge into one lap message", () => {
  const m = turnOf([user, step1, step2], "msg_u")!;
  assert.equal(m.info.id, "msg_a1");
  assert.deepEqual(m.info.time, { created: 2, completed: 5 });
  assert.deepEqual(m.info.tokens, { input: 32, output: 9 });
  assert.ok(Math.abs(m.info.cost - 0.3) < 1e-9);
  assert.deepEqual(
    m.parts.map((p) => [p.type, p.messageID, p.text ?? p.state?.status]),
    [
      ["tool", "msg_a1", "completed"],
      ["text", "msg_a1", "done"],
    ],
  );
  assert.deepEqual(conversation([user, step1, step2]).map((x) => x.info.role), ["user", "assistant"]);
});

test("tool titles name the tool, as lap's titles do", () => {
  assert.equal(convertPart(step1.parts[1], "msg_a1")?.state?.title, "bash: ls");
  const edit = { id: "prt_e", sessionID: "ses_1", messageID: "msg_a1", type: "tool", tool: "edit", callID: "call_2", state: { status: "completed", input: {}, title: "README.md" } };
  assert.equal(convertPart(edit, "msg_a1")?.state?.title, "edit: README.md");
  const long = { ...edit, state: { status: "running", title: "x".repeat(150) + "\nsecond line" } };
  assert.equal(convertPart(long, "msg_a1")?.state?.title, "edit: " + "x".repeat(99) + "…");
  const untitled = { ...edit, state: { status: "running", input: { filePath: "/r/README.md" } } };
  assert.equal(convertPart(untitled, "msg_a1")?.state?.title, undefined, "no title: the CLI words it from the input");
});

test("errors are renamed", () => {
  assert.deepEqual(convertError({ name: "MessageAbortedError", data: { message: "Aborted" } }), { name: "Aborted", message: "Aborted" });
  assert.deepEqual(convertError({ name: "APIError", data: { message: "rate limited", statusCode: 429 } }), { name: "APIError", message: "rate limited", status: 429 });
  assert.deepEqual(convertError({ name: "UnknownError", data: { message: "boom" } }), { name: "HarnessError", message: "UnknownError: boom" });
});

test("events follow lap's turn sequence", async () => {
  const got: Event[] = [];
  const ev = new Events((e) => got.push(e), async () => turnOf([user, step1, step2], "msg_u"));
  const upstream = [
    { type: "server.connected", properties: {} },
    { type: "message.updated", properties: { sessionID: "ses_1", info: user.info } },
    { type: "message.part.updated", properties: { sessionID: "ses_1", part: user.parts[0] } },
    { type: "message.updated", properties: { sessionID: "ses_1", info: { ...step1.info, time: { created: 2 } } } },
    { type: "message.part.updated", properties: { sessionID: "ses_1", part: step1.parts[0] } },
    { type: "message.part.updated", properties: { sessionID: "ses_1", part: { ...step1.parts[1], state: { status: "running", input: { command: "ls" } } } } },
    { type: "message.part.updated", properties: { sessionID: "ses_1", part: step1.parts[1] } },
    { type: "message.updated", properties: { sessionID: "ses_1", info: step2.info } },
    { type: "message.part.updated", properties: { sessionID: "ses_1", part: { ...step2.parts[0], text: "" } } },
    { type: "message.part.delta", properties: { sessionID: "ses_1", messageID: "msg_a2", partID: "prt_x", field: "text", delta: "do" } },
    { type: "message.part.delta", properties: { sessionID: "ses_1", messageID: "msg_a2", partID: "prt_x", field: "text", delta: "ne" } },
    { type: "message.part.updated", properties: { sessionID: "ses_1", part: step2.parts[0] } },
    { type: "session.status", properties: { sessionID: "ses_1", status: { type: "idle" } } },
    { type: "session.idle", properties: { sessionID: "ses_1" } },
  ];
  for (const e of upstream) await ev.handle(e);
  assert.deepEqual(
    got.map((e) => `${e.type}:${e.properties.part?.state?.status ?? e.properties.delta ?? (e.properties.info?.time.completed ? "done" : "")}`),
    [
      "message.updated:",
      "message.part.updated:running",
      "message.part.updated:completed",
      "message.part.updated:do",
      "message.part.updated:ne",
      "message.updated:done",
      "session.idle:",
    ],
  );
  assert.ok(got.filter((e) => e.properties.part).every((e) => e.properties.part?.messageID === "msg_a1"));
});

test("an aborted turn ends with session.error before session.idle", async () => {
  const aborted: OcMessage = { ...step2, info: { ...step2.info, error: { name: "MessageAbortedError", data: { message: "Aborted" } } } };
  const got: Event[] = [];
  const ev = new Events((e) => got.push(e), async () => turnOf([user, aborted], "msg_u"));
  await ev.handle({ type: "message.updated", properties: { sessionID: "ses_1", info: aborted.info } });
  await ev.handle({ type: "session.error", properties: { sessionID: "ses_1", error: { name: "MessageAbortedError", data: { message: "Aborted" } } } });
  await ev.handle({ type: "session.idle", properties: { sessionID: "ses_1" } });
  assert.deepEqual(got.map((e) => e.type), ["message.updated", "message.updated", "session.error", "session.idle"]);
  assert.equal(got[2].properties.error?.name, "Aborted");
});

test("the generated opencode config points at the gateway", () => {
  const cfg = loadConfig({ WORKSPACE: "/w", LAP_MODEL: "anthropic/claude-sonnet-4-5", LITELLM_API_BASE: "http://127.0.0.1:3000/llm" }, "opencode");
  const c = opencodeConfig(cfg) as { model: string; provider: Record<string, { options: { baseURL: string; apiKey: string }; models: object }> };
  assert.equal(c.model, "lap/anthropic/claude-sonnet-4-5");
  assert.equal(c.provider.lap.options.baseURL, "http://127.0.0.1:3000/llm/v1");
  assert.equal(c.provider.lap.options.apiKey, "{env:LITELLM_API_KEY}");
  assert.deepEqual(Object.keys(c.provider.lap.models), ["anthropic/claude-sonnet-4-5"]);
  assert.deepEqual(modelRef(cfg, { parts: [], model: { providerID: "openai", modelID: "gpt-4o" } }), { providerID: "lap", modelID: "openai/gpt-4o" });
  assert.deepEqual(modelRef(cfg, { parts: [] }), { providerID: "lap", modelID: "anthropic/claude-sonnet-4-5" });
});
