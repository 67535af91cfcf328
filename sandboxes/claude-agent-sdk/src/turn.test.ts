import { test } from "node:test";
import assert from "node:assert/strict";
import { Turn, apiError, toolTitle, type SDKLike } from "./turn.js";
import type { Event } from "./protocol.js";

function stream(event: unknown): SDKLike {
  return { type: "stream_event", parent_tool_use_id: null, event } as SDKLike;
}

function record() {
  const events: Event[] = [];
  const turn = new Turn("s1", "m1", "claude-sonnet-4-5", (e) => events.push(e), () => 1000);
  return { events, turn };
}

test("a streamed reply with a tool call becomes parts and events in order", () => {
  const { events, turn } = record();
  turn.start();
  const script: SDKLike[] = [
    { type: "system", session_id: "x" },
    stream({ type: "message_start", message: { id: "api1" } }),
    stream({ type: "content_block_start", index: 0, content_block: { type: "text", text: "" } }),
    stream({ type: "content_block_delta", index: 0, delta: { type: "text_delta", text: "Let me " } }),
    stream({ type: "content_block_delta", index: 0, delta: { type: "text_delta", text: "look." } }),
    { type: "assistant", parent_tool_use_id: null, message: { id: "api1", content: [{ type: "text", text: "Let me look." }] } },
    stream({ type: "content_block_stop", index: 0 }),
    stream({ type: "content_block_start", index: 1, content_block: { type: "tool_use", id: "call1", name: "Bash", input: {} } }),
    stream({ type: "content_block_delta", index: 1, delta: { type: "input_json_delta", partial_json: '{"command":' } }),
    stream({ type: "content_block_delta", index: 1, delta: { type: "input_json_delta", partial_json: '"ls"}' } }),
    stream({ type: "content_block_stop", index: 1 }),
    { type: "assistant", parent_tool_use_id: null, message: { id: "api1", content: [{ type: "tool_use", id: "call1", name: "Bash", input: { command: "ls" } }] } },
    // A subagent's messages stay out of the parent's parts.
    { type: "assistant", parent_tool_use_id: "call1", message: { id: "sub", content: [{ type: "text", text: "nested" }] } },
    { type: "user", parent_tool_use_id: null, message: { content: [{ type: "tool_result", tool_use_id: "call1", content: "a.txt\nb.txt" }] } },
    { type: "assistant", parent_tool_use_id: null, message: { id: "api2", content: [{ type: "text", text: "Two files." }] } },
    {
      type: "result",
      subtype: "success",
      is_error: false,
      total_cost_usd: 0.5,
      usage: { input_tokens: 10, cache_read_input_tokens: 5, output_tokens: 7 },
    },
  ];
  for (const m of script) turn.handle(m);
  const msg = turn.finish(0.25);

  assert.deepEqual(
    msg.parts.map((p) => [p.type, p.text ?? p.state?.status, p.state?.output]),
    [
      ["text", "Let me look.", undefined],
      ["tool", "completed", "a.txt\nb.txt"],
      ["text", "Two files.", undefined],
    ],
  );
  assert.equal(msg.parts[1].tool, "bash");
  assert.equal(msg.parts[1].callID, "call1");
  assert.deepEqual(msg.parts[1].state?.input, { command: "ls" });
  assert.equal(msg.parts[1].state?.title, "bash: ls");
  assert.deepEqual(msg.info.tokens, { input: 15, output: 7 });
  assert.equal(msg.info.cost, 0.25);
  assert.equal(msg.info.time.completed, 1000);
  assert.equal(msg.info.error, undefined);
  assert.equal(turn.costTotal, 0.5);

  const summary = events.map((e) =>
    e.type === "message.updated"
      ? `info:${e.properties.info?.time.completed ? "done" : "open"}`
      : `${e.properties.part?.type}:${e.properties.part?.state?.status ?? e.properties.delta ?? "-"}`,
  );
  assert.deepEqual(summary, [
    "info:open",
    "text:Let me ",
    "text:look.",
    "tool:pending",
    "tool:pending", // input parsed at content_block_stop
    "tool:running",
    "tool:completed",
    "text:Two files.",
    "info:done",
  ]);
  // Events are snapshots, not live references to the parts.
  assert.equal(events[1].properties.part?.text, "Let me ");
});

test("an API error result becomes info.error and no reply text", () => {
  const { events, turn } = record();
  turn.start();
  turn.handle({
    type: "assistant",
    parent_tool_use_id: null,
    error: "rate_limit",
    message: { id: "x", model: "<synthetic>", content: [{ type: "text", text: "API Error: 429 slow down" }] },
  });
  turn.handle({
    type: "result",
    subtype: "success",
    is_error: true,
    result: "API Error: 429 slow down",
    terminal_reason: "api_error",
    total_cost_usd: 0,
    usage: {},
  });
  const msg = turn.finish(0);
  assert.deepEqual(msg.info.error, { name: "APIError", message: "slow down", status: 429 });
  assert.equal(msg.parts.length, 0);
  assert.equal(events.at(-1)?.properties.info?.error?.name, "APIError");
});

test("an aborted turn closes its running tools as errors", () => {
  const { turn } = record();
  turn.handle({ type: "assistant", parent_tool_use_id: null, message: { id: "a", content: [{ type: "tool_use", id: "c", name: "Bash", input: { command: "sleep 9" } }] } });
  turn.fail({ name: "Aborted", message: "the turn was aborted" });
  turn.fail({ name: "HarnessError", message: "later errors do not replace the first" });
  const msg = turn.finish(0);
  assert.equal(msg.info.error?.name, "Aborted");
  assert.equal(msg.parts[0].state?.status, "error");
  assert.equal(msg.parts[0].state?.error, "aborted");
});

test("a tool error keeps its text in state.error", () => {
  const { turn } = record();
  turn.handle({ type: "assistant", parent_tool_use_id: null, message: { id: "a", content: [{ type: "tool_use", id: "c", name: "Read", input: { file_path: "/x" } }] } });
  turn.handle({ type: "user", parent_tool_use_id: null, message: { content: [{ type: "tool_result", tool_use_id: "c", is_error: true, content: [{ type: "text", text: "no such file" }] }] } });
  const p = turn.finish(0).parts[0];
  assert.deepEqual([p.state?.status, p.state?.error, p.state?.title], ["error", "no such file", "read: /x"]);
});

test("apiError and toolTitle", () => {
  const cases: [string, object][] = [
    ["API Error: 500 upstream broke", { name: "APIError", message: "upstream broke", status: 500 }],
    ["API Error: Connection error.", { name: "APIError", message: "Connection error." }],
  ];
  for (const [text, want] of cases) assert.deepEqual(apiError(text), want, text);
  assert.equal(toolTitle("bash", { command: "a\nb" }), "bash: a");
  assert.equal(toolTitle("todowrite", { todos: [] }), "todowrite");
  assert.equal(toolTitle("edit", { file_path: "/w/repo/src/a.ts" }, "/w/repo"), "edit: src/a.ts");
  assert.equal(toolTitle("edit", { file_path: "/w/repo/src/a.ts" }, "/w/repo/"), "edit: src/a.ts");
  assert.equal(toolTitle("read", { file_path: "/etc/hosts" }, "/w/repo"), "read: /etc/hosts");
  assert.equal(toolTitle("read", { file_path: "/w/repository/x" }, "/w/repo"), "read: /w/repository/x");
  assert.equal(toolTitle("bash", { command: "/w/repo/run.sh" }, "/w/repo"), "bash: /w/repo/run.sh");
});
