// The protocol over real HTTP on loopback, with the SDK's query() replaced
// by a script (the real SDK against a fake LLM is tested from Go, e2e).
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Options } from "@anthropic-ai/claude-agent-sdk";
import { Agent, type QueryFn } from "./agent.js";
import { loadConfig } from "./config.js";
import { Bus } from "./events.js";
import { handler } from "./http.js";
import { newLogger } from "./log.js";
import type { Event, Message } from "./protocol.js";
import { Store } from "./store.js";
import { Workspace } from "./workspace.js";

interface Harness {
  url: string;
  calls: { prompt: string; options: Options }[];
  close: () => Promise<void>;
}

/** reply scripts one successful turn that answers text. */
function reply(text: string): unknown[] {
  return [
    { type: "system", subtype: "init", session_id: "x" },
    { type: "assistant", parent_tool_use_id: null, message: { id: "api", content: [{ type: "text", text }] } },
    { type: "result", subtype: "success", is_error: false, total_cost_usd: 0.01, usage: { input_tokens: 3, output_tokens: 2 } },
  ];
}

async function start(script: (prompt: string, signal: AbortSignal) => AsyncIterable<unknown>, workspaceDir?: string): Promise<Harness> {
  const ws = workspaceDir ?? mkdtempSync(join(tmpdir(), "ws-"));
  const cfg = loadConfig({ WORKSPACE: ws, HARNESS_AUTH_TOKEN: "tok", LAP_MODEL: "anthropic/claude-sonnet-4-5", AGENT_PROMPT: "Be kind." });
  const log = newLogger("ERROR");
  const bus = new Bus();
  const workspace = new Workspace(cfg.repoDir);
  await workspace.prepare(cfg, log, () => {});
  const calls: Harness["calls"] = [];
  const transcripts = new Set<string>();
  const query: QueryFn = ({ prompt, options }) => {
    calls.push({ prompt, options });
    transcripts.add(options.sessionId ?? options.resume ?? "");
    return script(prompt, options.abortController!.signal) as never;
  };
  const agent = new Agent(cfg, new Store(join(ws, ".lap", "sessions")), bus, workspace, log, query, async (id) => transcripts.has(id), "test");
  agent.load();
  const server: Server = createServer(
    handler({ agent, bus, workspace, log, authToken: cfg.authToken, identity: () => ({ harness: "claude-agent-sdk", version: "test", ready: workspace.ready }) }),
  );
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    url,
    calls,
    close: async () => {
      await agent.shutdown();
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    },
  };
}

async function call(h: Harness, method: string, path: string, body?: unknown, token = "tok") {
  const res = await fetch(h.url + path, {
    method,
    headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : undefined };
}

/** events collects the SSE stream until stop returns true or the deadline. */
async function events(h: Harness, stop: (e: Event) => boolean, ready: () => Promise<void>): Promise<Event[]> {
  const ac = new AbortController();
  const res = await fetch(h.url + "/event", { headers: { Authorization: "Bearer tok" }, signal: ac.signal });
  const got: Event[] = [];
  const reader = res.body!.getReader();
  const dec = new TextDecoder();
  let buf = "";
  let started = false;
  const deadline = Date.now() + 20_000;
  try {
    while (Date.now() < deadline) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let i: number;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const frame = buf.slice(0, i);
        buf = buf.slice(i + 2);
        const e = JSON.parse(frame.replace(/^data: /, "")) as Event;
        got.push(e);
        if (e.type === "server.connected" && !started) {
          started = true;
          void ready();
        }
        if (stop(e)) return got;
      }
    }
    return got;
  } finally {
    ac.abort();
  }
}

test("a turn over HTTP: blocking reply, events, history, auth", async (t) => {
  const h = await start(async function* () {
    yield* reply("Hello there.");
  });
  t.after(h.close);

  assert.equal((await call(h, "GET", "/session", undefined, "wrong")).status, 401);
  assert.equal((await fetch(h.url + "/")).status, 200);
  assert.deepEqual((await call(h, "GET", "/session")).body, []);

  const s = await call(h, "POST", "/session", { title: "demo", system: "Use tabs." });
  assert.equal(s.status, 200);
  const id = s.body.id as string;

  let msg: Message | undefined;
  const evs = await events(
    h,
    (e) => e.type === "session.idle",
    async () => {
      msg = (await call(h, "POST", `/session/${id}/message`, { messageID: "user-1", parts: [{ type: "text", text: "Hi" }] })).body;
    },
  );
  assert.deepEqual(
    evs.map((e) => e.type),
    ["server.connected", "message.updated", "message.part.updated", "message.updated", "session.idle"],
  );
  // The blocking reply may land a moment after session.idle.
  for (let i = 0; i < 100 && !msg; i++) await new Promise((r) => setImmediate(r));
  assert.equal(msg?.parts[0].text, "Hello there.");
  assert.deepEqual(msg?.info.tokens, { input: 3, output: 2 });

  const opts = h.calls[0].options;
  assert.equal(opts.model, "claude-sonnet-4-5");
  assert.equal(opts.permissionMode, "bypassPermissions");
  assert.equal(opts.sessionId, id);
  assert.deepEqual(opts.systemPrompt, { type: "preset", preset: "claude_code", append: "Be kind.\n\nUse tabs." });
  assert.equal(opts.env?.HARNESS_AUTH_TOKEN, undefined);
  assert.equal(opts.env?.DISABLE_TELEMETRY, "1");

  // The second turn resumes the SDK session.
  await call(h, "POST", `/session/${id}/message`, { parts: [{ type: "text", text: "Again" }] });
  assert.equal(h.calls[1].options.resume, id);
  assert.equal(h.calls[1].options.sessionId, undefined);

  const log = await call(h, "GET", `/session/${id}/message`);
  assert.deepEqual(
    (log.body as Message[]).map((m) => [m.info.role, m.parts[0]?.text]),
    [
      ["user", "Hi"],
      ["assistant", "Hello there."],
      ["user", "Again"],
      ["assistant", "Hello there."],
    ],
  );
  assert.equal((log.body as Message[])[0].info.id, "user-1");

  assert.equal((await call(h, "POST", `/session/${id}/message`, { parts: [] })).status, 400);
  assert.equal((await call(h, "POST", `/session/nope/message`, { parts: [{ type: "text", text: "x" }] })).status, 404);
  assert.equal((await call(h, "DELETE", `/session/${id}`)).status, 200);
  assert.equal((await call(h, "GET", `/session/${id}`)).status, 404);
});

test("abort, 409 on a busy session, and prompt_async", async (t) => {
  const h = await start(async function* (_prompt, signal) {
    yield { type: "assistant", parent_tool_use_id: null, message: { id: "a", content: [{ type: "tool_use", id: "c1", name: "Bash", input: { command: "sleep 100" } }] } };
    await new Promise<void>((resolve) => signal.addEventListener("abort", () => resolve(), { once: true }));
    throw new Error("Claude Code process aborted by user");
  });
  t.after(h.close);
  const id = (await call(h, "POST", "/session", {})).body.id as string;

  const async = await fetch(`${h.url}/session/${id}/prompt_async`, {
    method: "POST",
    headers: { Authorization: "Bearer tok" },
    body: JSON.stringify({ parts: [{ type: "text", text: "work" }] }),
  });
  assert.equal(async.status, 204);
  const busy = await call(h, "POST", `/session/${id}/message`, { parts: [{ type: "text", text: "more" }] });
  assert.equal(busy.status, 409);

  assert.equal((await call(h, "POST", `/session/${id}/abort`)).body, true);
  let last: Message | undefined;
  for (let i = 0; i < 2000; i++) {
    const log = (await call(h, "GET", `/session/${id}/message`)).body as Message[];
    last = log.at(-1);
    if (last?.info.time.completed) break;
    await new Promise((r) => setTimeout(r, 5));
  }
  assert.equal(last?.info.error?.name, "Aborted");
  assert.equal(last?.parts[0].state?.status, "error");
  assert.equal((await call(h, "POST", `/session/${id}/abort`)).body, false);
});

test("sessions and seeded history survive a restart on the same workspace", async () => {
  const ws = mkdtempSync(join(tmpdir(), "ws-"));
  const first = await start(async function* () {
    yield* reply("unused");
  }, ws);
  const history: Message[] = [
    { info: { id: "h1", role: "user", time: { created: 1 }, tokens: { input: 0, output: 0 }, cost: 0 }, parts: [{ type: "text", text: "My name is Ada." }] },
    { info: { id: "h2", role: "assistant", time: { created: 2, completed: 3 }, tokens: { input: 0, output: 0 }, cost: 0 }, parts: [{ type: "text", text: "Hi Ada." }] },
  ];
  const id = (await call(first, "POST", "/session", { history })).body.id as string;
  await first.close();

  const second = await start(async function* () {
    yield* reply("You are Ada.");
  }, ws);
  try {
    const msg = (await call(second, "POST", `/session/${id}/message`, { parts: [{ type: "text", text: "Who am I?" }] })).body as Message;
    assert.equal(msg.parts[0].text, "You are Ada.");
    const prompt = second.calls[0].prompt;
    assert.match(prompt, /<conversation_history>[\s\S]*My name is Ada\.[\s\S]*Hi Ada\.[\s\S]*<\/conversation_history>\n\nWho am I\?$/);
    const log = (await call(second, "GET", `/session/${id}/message`)).body as Message[];
    assert.deepEqual(log.map((m) => m.parts[0]?.text), ["My name is Ada.", "Hi Ada.", "Who am I?", "You are Ada."]);
  } finally {
    await second.close();
  }
});
