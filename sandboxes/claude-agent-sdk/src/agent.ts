// Sessions and turns: one Claude Agent SDK query() per turn, resumed by the
// SDK's session id, with the repo as cwd and permissions bypassed (the
// sandbox is the boundary; DESIGN.md says why and how that works as root).
import { join } from "node:path";
import type { Options, Query, SDKMessage } from "@anthropic-ai/claude-agent-sdk";
import { agentEnv, sdkModel, stateDir, type Config } from "./config.js";
import { HttpError } from "./errors.js";
import type { Bus } from "./events.js";
import { newId } from "./ids.js";
import type { Logger } from "./log.js";
import {
  EventSessionError,
  EventSessionIdle,
  RoleUser,
  type CreateSessionRequest,
  type Message,
  type SendMessageRequest,
  type SessionInfo,
} from "./protocol.js";
import type { SessionRecord, Store } from "./store.js";
import { historyPrompt } from "./history.js";
import { Turn, type SDKLike } from "./turn.js";
import type { Workspace } from "./workspace.js";

/** The SDK's query(), injectable so tests can script the SDK's messages. */
export type QueryFn = (params: { prompt: string; options: Options }) => AsyncIterable<SDKMessage> | Query;

/** Transcripts is how the agent asks whether the SDK can resume a session. */
export type HasTranscript = (sdkSessionId: string, cwd: string) => Promise<boolean>;

interface Running {
  abort: AbortController;
  done: Promise<Message>;
}

/** Agent owns the sessions of this harness and runs their turns. */
export class Agent {
  private readonly sessions = new Map<string, SessionRecord>();
  private readonly running = new Map<string, Running>();

  constructor(
    private readonly cfg: Config,
    private readonly store: Store,
    private readonly bus: Bus,
    private readonly workspace: Workspace,
    private readonly log: Logger,
    private readonly query: QueryFn,
    private readonly hasTranscript: HasTranscript,
    private readonly version: string,
  ) {}

  /** load restores the sessions kept on disk by an earlier process. */
  load(): void {
    const { records, errors } = this.store.loadAll();
    for (const e of errors) this.log.error("load session", { err: e });
    for (const r of records) this.sessions.set(r.id, r);
    if (records.length > 0) this.log.info("sessions restored", { count: records.length });
  }

  /** list returns every session, oldest first. */
  list(): SessionInfo[] {
    return [...this.sessions.values()].map(info);
  }

  /** get returns one session or a 404. */
  get(id: string): SessionInfo {
    return info(this.record(id));
  }

  /** messages returns a session's conversation, oldest first. */
  messages(id: string): Message[] {
    return this.record(id).messages;
  }

  /** create starts a session, seeded with history when one is given. */
  create(req: CreateSessionRequest): SessionInfo {
    const id = newId();
    const now = Date.now();
    const history = (req.history ?? []).filter((m) => m?.info?.role === "user" || m?.info?.role === "assistant");
    const rec: SessionRecord = {
      id,
      title: req.title ?? "",
      system: req.system ?? "",
      created: now,
      updated: now,
      // The SDK accepts a caller-chosen UUID for a new conversation; using
      // ours keeps the two ids trivially matched in logs.
      sdkSessionId: id,
      costTotal: 0,
      messages: history.map((m) => seeded(m, id)),
    };
    this.store.save(rec);
    this.sessions.set(id, rec);
    this.log.info("session created", { session: id, history: history.length });
    return info(rec);
  }

  /**
   * start begins a turn and returns at once with its completion; a second
   * turn on a busy session is a 409. Errors of the turn itself are not
   * thrown: they end up in the returned message's info.error.
   */
  start(id: string, req: SendMessageRequest): Promise<Message> {
    const rec = this.record(id);
    const text = (req.parts ?? []).filter((p) => p && p.type === "text").map((p) => p.text ?? "").join("");
    if (!text.trim()) throw new HttpError(400, "invalid_request", "the message has no text part");
    if (this.running.has(id)) throw new HttpError(409, "busy", `session ${id} is already running a turn`);
    const abort = new AbortController();
    const done = this.runTurn(rec, text, req, abort).finally(() => this.running.delete(id));
    this.running.set(id, { abort, done });
    return done;
  }

  /** abort interrupts the session's running turn; it reports whether one ran. */
  abort(id: string): boolean {
    this.record(id);
    const r = this.running.get(id);
    if (!r) return false;
    r.abort.abort();
    return true;
  }

  /** remove aborts the session's turn and forgets the session. */
  async remove(id: string): Promise<void> {
    this.record(id);
    const r = this.running.get(id);
    if (r) {
      r.abort.abort();
      await r.done.catch(() => {});
    }
    this.sessions.delete(id);
    this.store.remove(id);
    this.log.info("session deleted", { session: id });
  }

  /** shutdown aborts every running turn and waits for them to be saved. */
  async shutdown(): Promise<void> {
    const all = [...this.running.values()];
    for (const r of all) r.abort.abort();
    await Promise.allSettled(all.map((r) => r.done));
  }

  private record(id: string): SessionRecord {
    const rec = this.sessions.get(id);
    if (!rec) throw new HttpError(404, "not_found", `session ${id} not found`);
    return rec;
  }

  private async runTurn(rec: SessionRecord, text: string, req: SendMessageRequest, abort: AbortController): Promise<Message> {
    const model = sdkModel(modelOf(req) || this.cfg.model);
    const created = Date.now();
    const userID = req.messageID || newId();
    const user: Message = {
      info: { id: userID, sessionID: rec.id, role: RoleUser, time: { created }, tokens: { input: 0, output: 0 }, cost: 0 },
      parts: [{ id: newId(), sessionID: rec.id, messageID: userID, type: "text", text }],
    };
    const prior = rec.messages.slice();
    const turn = new Turn(rec.id, newId(), model, (e) => this.bus.publish(e), Date.now, this.cfg.repoDir);
    rec.messages.push(user, turn.message);
    rec.updated = created;
    // The user's turn is on disk before the SDK runs, so a crash leaves a
    // failed turn behind rather than nothing.
    this.save(rec);
    turn.start();
    const log = { session: rec.id, message: turn.message.info.id };
    this.log.info("turn started", { ...log, model });

    try {
      await abortable(this.workspace.done, abort.signal);
      const resume = await this.hasTranscript(rec.sdkSessionId, this.cfg.repoDir);
      // Without a transcript the SDK knows nothing of this session: history
      // given at creation, or turns whose transcript a crash lost before the
      // SDK wrote it, go in front of the message.
      const prompt = !resume && prior.length > 0 ? historyPrompt(prior, text) : text;
      const system = [this.cfg.agentPrompt, rec.system, req.system].filter((s) => s && s.trim()).join("\n\n");
      const options: Options = {
        abortController: abort,
        cwd: this.cfg.repoDir,
        env: sdkEnv(this.cfg, model, this.version),
        ...(model ? { model } : {}),
        permissionMode: "bypassPermissions",
        allowDangerouslySkipPermissions: true,
        includePartialMessages: true,
        // The repo's own CLAUDE.md and .claude/settings.json apply, as they
        // would for a developer; nothing from a user-level config does.
        settingSources: ["project"],
        systemPrompt: { type: "preset", preset: "claude_code", ...(system ? { append: system } : {}) },
        ...(resume ? { resume: rec.sdkSessionId } : { sessionId: rec.sdkSessionId }),
        stderr: (d: string) => this.log.debug("claude code", { ...log, stderr: d.trimEnd() }),
      };
      for await (const m of this.query({ prompt, options })) turn.handle(m as SDKLike);
    } catch (err) {
      if (abort.signal.aborted) {
        turn.fail({ name: "Aborted", message: "the turn was aborted" });
      } else {
        // After an error result the SDK also throws; the result said more.
        turn.fail({ name: "HarnessError", message: (err as Error).message });
      }
    }
    if (abort.signal.aborted) turn.fail({ name: "Aborted", message: "the turn was aborted" });

    let cost = 0;
    if (turn.costTotal !== undefined) {
      cost = Math.max(0, turn.costTotal - rec.costTotal);
      rec.costTotal = turn.costTotal;
    }
    const final = turn.finish(cost);
    rec.updated = Date.now();
    this.save(rec);
    const error = final.info.error;
    if (error) {
      this.bus.publish({ type: EventSessionError, properties: { sessionID: rec.id, error } });
      this.log.warn("turn failed", { ...log, error: error.name, reason: error.message });
    } else {
      this.log.info("turn completed", { ...log, tokens_in: final.info.tokens.input, tokens_out: final.info.tokens.output });
    }
    this.bus.publish({ type: EventSessionIdle, properties: { sessionID: rec.id } });
    return final;
  }

  private save(rec: SessionRecord): void {
    try {
      this.store.save(rec);
    } catch (err) {
      // The turn goes on; the next save tries again.
      this.log.error("save session", { session: rec.id, err: (err as Error).message });
    }
  }
}

function info(r: SessionRecord): SessionInfo {
  return { id: r.id, ...(r.title ? { title: r.title } : {}) };
}

function modelOf(req: SendMessageRequest): string {
  const m = req.model;
  if (!m || !m.modelID) return "";
  return m.providerID ? `${m.providerID}/${m.modelID}` : m.modelID;
}

/** seeded copies a history message into this session, completed. */
function seeded(m: Message, sessionID: string): Message {
  const id = m.info.id || newId();
  const created = m.info.time?.created || Date.now();
  return {
    info: {
      ...m.info,
      id,
      sessionID,
      time: { created, ...(m.info.role === "assistant" ? { completed: m.info.time?.completed || created } : {}) },
      tokens: m.info.tokens ?? { input: 0, output: 0 },
      cost: m.info.cost ?? 0,
    },
    parts: (m.parts ?? []).map((p) => ({ ...p, sessionID, messageID: id })),
  };
}

/**
 * sdkEnv is the whole environment of the Claude Code process (the SDK
 * replaces, not merges, when given one): the harness's own minus its
 * secrets, the gateway as the Anthropic API, every model slot on the agent's
 * model, state inside the workspace, and no traffic but the LLM's.
 */
export function sdkEnv(cfg: Config, model: string, version: string): Record<string, string> {
  // The agent runs arbitrary commands; it has no business with the tokens
  // that guard its harness or its repo.
  const env = agentEnv(process.env);
  const state = stateDir(cfg);
  env.HOME = join(state, "home");
  env.CLAUDE_CONFIG_DIR = join(state, "claude");
  if (cfg.anthropicBaseURL) {
    env.ANTHROPIC_BASE_URL = cfg.anthropicBaseURL;
    env.ANTHROPIC_API_KEY = cfg.anthropicAPIKey;
    // An inherited bearer token would win over the key and miss the gateway.
    delete env.ANTHROPIC_AUTH_TOKEN;
  }
  if (model) {
    // Claude Code calls a small model for side tasks and subagents; the
    // gateway should see the agent's model only.
    for (const k of [
      "ANTHROPIC_DEFAULT_OPUS_MODEL",
      "ANTHROPIC_DEFAULT_SONNET_MODEL",
      "ANTHROPIC_DEFAULT_HAIKU_MODEL",
      "ANTHROPIC_SMALL_FAST_MODEL",
      "CLAUDE_CODE_SUBAGENT_MODEL",
    ]) {
      env[k] = model;
    }
  }
  Object.assign(env, {
    DISABLE_TELEMETRY: "1",
    DISABLE_ERROR_REPORTING: "1",
    DISABLE_AUTOUPDATER: "1",
    DISABLE_BUG_COMMAND: "1",
    CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC: "1",
    CLAUDE_CODE_DISABLE_FEEDBACK_SURVEY: "1",
    CLAUDE_AGENT_SDK_CLIENT_APP: `lap-harness-claude-agent-sdk/${version}`,
  });
  delete env.CLAUDE_CODE_ENABLE_TELEMETRY;
  // Claude Code refuses bypassPermissions as root unless told it runs in a
  // deliberate sandbox, which a lap sandbox is.
  if (typeof process.getuid === "function" && process.getuid() === 0) env.IS_SANDBOX = "1";
  return env;
}

function abortable<T>(p: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(new Error("aborted"));
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(new Error("aborted"));
    signal.addEventListener("abort", onAbort, { once: true });
    p.then(
      (v) => {
        signal.removeEventListener("abort", onAbort);
        resolve(v);
      },
      (err) => {
        signal.removeEventListener("abort", onAbort);
        reject(new Error(`workspace not ready: ${(err as Error).message}`));
      },
    );
  });
}
