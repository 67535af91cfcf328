// Turning the Claude Agent SDK's message stream into the harness protocol:
// one assistant Message whose parts grow as the SDK streams, and the
// message.updated / message.part.updated events that describe each step.
// Pure bookkeeping with no I/O, so it is tested with scripted SDK messages.
import { newId } from "./ids.js";
import {
  EventMessageUpdated,
  EventPartUpdated,
  RoleAssistant,
  type Event,
  type Message,
  type MessageError,
  type Part,
} from "./protocol.js";

/**
 * The subset of the SDK's message union this file reads. Declared here, not
 * imported, so tests can script messages without the SDK's full types and a
 * field the SDK drops shows up as a compile error in one place.
 */
export type SDKLike =
  | { type: "stream_event"; parent_tool_use_id: string | null; event: StreamEvent }
  | {
      type: "assistant";
      parent_tool_use_id: string | null;
      error?: string;
      message: { id: string; model?: string; content: ContentBlock[] };
    }
  | { type: "user"; parent_tool_use_id: string | null; message: { content: string | ContentBlock[] } }
  | {
      type: "result";
      subtype: string;
      is_error: boolean;
      result?: string;
      errors?: string[];
      terminal_reason?: string;
      total_cost_usd: number;
      usage: Usage;
    }
  | { type: string; session_id?: string };

interface Usage {
  input_tokens?: number | null;
  output_tokens?: number | null;
  cache_creation_input_tokens?: number | null;
  cache_read_input_tokens?: number | null;
}

type StreamEvent =
  | { type: "message_start"; message: { id: string } }
  | { type: "content_block_start"; index: number; content_block: ContentBlock }
  | { type: "content_block_delta"; index: number; delta: { type: string; text?: string; partial_json?: string } }
  | { type: "content_block_stop"; index: number }
  | { type: string };

type ContentBlock =
  | { type: "text"; text: string }
  | { type: "tool_use"; id: string; name: string; input: unknown }
  | { type: "tool_result"; tool_use_id: string; content?: string | ContentBlock[]; is_error?: boolean }
  | { type: string };

/** Tool output kept in a part; the model saw it all, the log needs less. */
export const maxToolOutput = 64 * 1024;

/** Turn records one assistant turn and emits its events as it goes. */
export class Turn {
  readonly message: Message;
  /** The SDK's running cost total from the turn's result, if one came. */
  costTotal: number | undefined;
  private error: MessageError | undefined;
  private apiErrorText = "";
  private readonly byCall = new Map<string, Part>();
  // Per streamed API message: the block at each index, and its text parts in
  // order so the complete assistant messages that follow can be matched.
  private current = "";
  private readonly blocks = new Map<string, Map<number, { part: Part; json: string }>>();
  private readonly texts = new Map<string, { parts: Part[]; matched: number }>();

  constructor(
    private readonly sessionID: string,
    messageID: string,
    modelID: string,
    private readonly emit: (e: Event) => void,
    private readonly now: () => number = Date.now,
    // The repo the agent works in: tool titles show paths relative to it.
    private readonly cwd = "",
  ) {
    this.message = {
      info: {
        id: messageID,
        sessionID,
        role: RoleAssistant,
        time: { created: now() },
        ...(modelID ? { modelID } : {}),
        tokens: { input: 0, output: 0 },
        cost: 0,
      },
      parts: [],
    };
  }

  /** start announces the turn: message.updated without a completed time. */
  start(): void {
    this.emitInfo();
  }

  /** handle folds one SDK message into the turn. */
  handle(m: SDKLike): void {
    // Subagents' own streams stay inside their Task tool call.
    if ("parent_tool_use_id" in m && m.parent_tool_use_id) return;
    switch (m.type) {
      case "stream_event":
        this.onStream((m as Extract<SDKLike, { type: "stream_event" }>).event);
        break;
      case "assistant":
        this.onAssistant(m as Extract<SDKLike, { type: "assistant" }>);
        break;
      case "user":
        this.onUser(m as Extract<SDKLike, { type: "user" }>);
        break;
      case "result":
        this.onResult(m as Extract<SDKLike, { type: "result" }>);
        break;
    }
  }

  /** fail records why the turn ended badly, unless a reason is known already. */
  fail(err: MessageError): void {
    this.error ??= err;
  }

  /** failed reports the error the turn ends with, if any. */
  get failed(): MessageError | undefined {
    return this.error;
  }

  /**
   * finish closes the turn: unfinished tool calls become errors, the
   * message gets its completed time (and error), and message.updated says
   * so. It returns the final message.
   */
  finish(cost: number): Message {
    const reason = this.error?.name === "Aborted" ? "aborted" : "the turn ended before the tool finished";
    for (const p of this.message.parts) {
      if (p.state && (p.state.status === "pending" || p.state.status === "running")) {
        p.state.status = "error";
        p.state.error = reason;
        this.emitPart(p);
      }
    }
    this.message.info.cost = cost;
    this.message.info.time.completed = Math.max(this.now(), this.message.info.time.created);
    if (this.error) this.message.info.error = this.error;
    this.emitInfo();
    return this.message;
  }

  private onStream(ev: StreamEvent): void {
    switch (ev.type) {
      case "message_start":
        this.current = (ev as { message: { id: string } }).message.id;
        break;
      case "content_block_start": {
        const { index, content_block: block } = ev as { index: number; content_block: ContentBlock };
        let part: Part | undefined;
        if (block.type === "text") {
          part = this.newPart({ type: "text", text: "" });
          this.textsOf(this.current).parts.push(part);
        } else if (block.type === "tool_use") {
          const b = block as { id: string; name: string };
          part = this.toolPart(b.id, b.name);
          this.emitPart(part);
        }
        if (part) this.blocksOf(this.current).set(index, { part, json: "" });
        break;
      }
      case "content_block_delta": {
        const { index, delta } = ev as { index: number; delta: { type: string; text?: string; partial_json?: string } };
        const b = this.blocksOf(this.current).get(index);
        if (!b) break;
        if (delta.type === "text_delta" && delta.text) {
          b.part.text = (b.part.text ?? "") + delta.text;
          this.emitPart(b.part, delta.text);
        } else if (delta.type === "input_json_delta" && delta.partial_json) {
          b.json += delta.partial_json;
        }
        break;
      }
      case "content_block_stop": {
        const b = this.blocksOf(this.current).get((ev as { index: number }).index);
        if (b?.part.state && b.json) {
          try {
            b.part.state.input = JSON.parse(b.json);
            b.part.state.title = toolTitle(b.part.tool ?? "", b.part.state.input, this.cwd);
            this.emitPart(b.part);
          } catch {
            // The complete assistant message carries the parsed input.
          }
        }
        break;
      }
    }
  }

  private onAssistant(m: Extract<SDKLike, { type: "assistant" }>): void {
    // The CLI reports an API failure as a synthetic assistant message whose
    // text is the error; it belongs in info.error, not in the reply.
    if (m.error || m.message.model === "<synthetic>") {
      this.apiErrorText = m.message.content
        .filter((b): b is { type: "text"; text: string } => b.type === "text")
        .map((b) => b.text)
        .join("\n");
      return;
    }
    for (const block of m.message.content) {
      if (block.type === "text") {
        this.onText(m.message.id, (block as { text: string }).text);
      } else if (block.type === "tool_use") {
        const b = block as { id: string; name: string; input: unknown };
        const part = this.toolPart(b.id, b.name);
        const state = part.state!;
        state.input = b.input ?? {};
        state.title = toolTitle(part.tool ?? "", state.input, this.cwd);
        if (state.status === "pending") state.status = "running";
        this.emitPart(part);
      }
    }
  }

  private onText(apiID: string, text: string): void {
    const t = this.textsOf(apiID);
    const part = t.matched < t.parts.length ? t.parts[t.matched] : undefined;
    t.matched++;
    if (!part) {
      // Not streamed (partial messages off or lost): one event with it all.
      if (!text) return;
      const p = this.newPart({ type: "text", text });
      t.parts.push(p);
      t.matched = t.parts.length;
      this.emitPart(p, text);
      return;
    }
    const had = part.text ?? "";
    if (had === text) return;
    part.text = text;
    this.emitPart(part, text.startsWith(had) ? text.slice(had.length) : undefined);
  }

  private onUser(m: Extract<SDKLike, { type: "user" }>): void {
    if (typeof m.message.content === "string") return;
    for (const block of m.message.content) {
      if (block.type !== "tool_result") continue;
      const b = block as { tool_use_id: string; content?: string | ContentBlock[]; is_error?: boolean };
      const part = this.byCall.get(b.tool_use_id);
      if (!part?.state) continue;
      const out = truncate(resultText(b.content));
      if (b.is_error) {
        part.state.status = "error";
        part.state.error = out || "tool failed";
      } else {
        part.state.status = "completed";
        part.state.output = out;
      }
      this.emitPart(part);
    }
  }

  private onResult(m: Extract<SDKLike, { type: "result" }>): void {
    const u = m.usage ?? {};
    this.message.info.tokens = {
      input: (u.input_tokens ?? 0) + (u.cache_creation_input_tokens ?? 0) + (u.cache_read_input_tokens ?? 0),
      output: u.output_tokens ?? 0,
    };
    this.costTotal = m.total_cost_usd;
    if (!m.is_error) return;
    const text = this.apiErrorText || m.result || (m.errors ?? []).join("; ") || m.subtype;
    if (m.terminal_reason === "api_error" || /^API Error\b/.test(text)) {
      this.fail(apiError(text));
    } else {
      this.fail({ name: "HarnessError", message: text });
    }
  }

  private toolPart(callID: string, name: string): Part {
    let part = this.byCall.get(callID);
    if (!part) {
      part = this.newPart({ type: "tool", tool: toolName(name), callID, state: { status: "pending", input: {} } });
      this.byCall.set(callID, part);
    }
    return part;
  }

  private newPart(p: Part): Part {
    const part: Part = { id: newId(), sessionID: this.sessionID, messageID: this.message.info.id, ...p };
    this.message.parts.push(part);
    return part;
  }

  private blocksOf(apiID: string) {
    let b = this.blocks.get(apiID);
    if (!b) this.blocks.set(apiID, (b = new Map()));
    return b;
  }

  private textsOf(apiID: string) {
    let t = this.texts.get(apiID);
    if (!t) this.texts.set(apiID, (t = { parts: [], matched: 0 }));
    return t;
  }

  private emitPart(part: Part, delta?: string): void {
    // Events carry a snapshot: later changes must not rewrite what was sent.
    const snapshot = structuredClone(part);
    this.emit({
      type: EventPartUpdated,
      properties: { sessionID: this.sessionID, part: snapshot, ...(delta ? { delta } : {}) },
    });
  }

  private emitInfo(): void {
    this.emit({ type: EventMessageUpdated, properties: { sessionID: this.sessionID, info: structuredClone(this.message.info) } });
  }
}

/** toolName gives SDK tools opencode's lower-case names (Bash → bash). */
export function toolName(name: string): string {
  return name.toLowerCase();
}

/**
 * toolTitle is a one-line summary of a call, e.g. "bash: ls -la". Claude
 * Code's tools take absolute paths; one inside cwd (the repo) is shown
 * relative to it, as the user knows the files ("edit: src/main.go"), so
 * the sandbox's long workspace path does not push the file's name out.
 */
export function toolTitle(tool: string, input: unknown, cwd = ""): string {
  const i = (input ?? {}) as Record<string, unknown>;
  let arg = [i.command, i.file_path, i.notebook_path, i.path, i.pattern, i.url, i.query, i.description].find(
    (v) => typeof v === "string" && v !== "",
  ) as string | undefined;
  if (!arg) return tool;
  if (cwd && arg !== i.command && arg.startsWith(cwd.replace(/\/+$/, "") + "/")) {
    arg = arg.slice(cwd.replace(/\/+$/, "").length + 1);
  }
  const line = arg.split("\n")[0];
  return `${tool}: ${line.length > 100 ? line.slice(0, 99) + "…" : line}`;
}

/** apiError turns the CLI's "API Error: 429 …" text into an APIError. */
export function apiError(text: string): MessageError {
  const m = /API Error:?\s*(\d{3})\b\s*(.*)$/s.exec(text);
  if (m) return { name: "APIError", message: m[2].trim() || text, status: Number(m[1]) };
  return { name: "APIError", message: text.replace(/^API Error:?\s*/, "") || text };
}

function resultText(c: string | ContentBlock[] | undefined): string {
  if (c === undefined) return "";
  if (typeof c === "string") return c;
  return c
    .map((b) => (b.type === "text" ? (b as { text: string }).text : `[${b.type}]`))
    .join("\n");
}

function truncate(s: string): string {
  if (s.length <= maxToolOutput) return s;
  return s.slice(0, maxToolOutput) + `\n… (${s.length - maxToolOutput} more characters)`;
}
