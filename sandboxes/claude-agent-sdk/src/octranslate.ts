// Translating opencode's server API into lap's harness protocol. opencode
// is a superset with three differences that matter to lapd: a turn is one
// assistant message per LLM step (lap: one per turn), errors are
// {name, data:{message, statusCode}} (lap: {name, message, status}), and
// text streams as message.part.delta events. Pure functions and one
// stateful event translator, tested with recorded opencode payloads.
import {
  EventMessageUpdated,
  EventPartUpdated,
  EventSessionError,
  EventSessionIdle,
  type Event,
  type Message,
  type MessageError,
  type MessageInfo,
  type Part,
  type ToolStatus,
} from "./protocol.js";

const toolStatuses: ToolStatus[] = ["pending", "running", "completed", "error"];

/** OcInfo is the part of opencode's message info the adapter reads. */
export interface OcInfo {
  id: string;
  sessionID: string;
  role: string;
  parentID?: string;
  modelID?: string;
  time: { created: number; completed?: number };
  tokens?: { input?: number; output?: number; reasoning?: number; cache?: { read?: number; write?: number } };
  cost?: number;
  error?: { name: string; data?: { message?: string; statusCode?: number } };
}

export interface OcPart {
  id: string;
  sessionID: string;
  messageID: string;
  type: string;
  text?: string;
  synthetic?: boolean;
  ignored?: boolean;
  tool?: string;
  callID?: string;
  state?: { status: string; input?: unknown; output?: string; error?: string; title?: string };
}

export interface OcMessage {
  info: OcInfo;
  parts: OcPart[];
}

/** convertError maps opencode's error names onto lap's. */
export function convertError(e: OcInfo["error"]): MessageError | undefined {
  if (!e) return undefined;
  const message = e.data?.message || e.name;
  switch (e.name) {
    case "MessageAbortedError":
      return { name: "Aborted", message };
    case "APIError":
      return { name: "APIError", message, ...(e.data?.statusCode ? { status: e.data.statusCode } : {}) };
    case "ProviderAuthError":
      return { name: "APIError", message, status: 401 };
    default:
      return { name: "HarnessError", message: e.name === message ? message : `${e.name}: ${message}` };
  }
}

/**
 * partTitle is a tool call's one-line summary in lap's form, "tool: what"
 * (e.g. "edit: README.md"), as the claude-agent-sdk harness words it:
 * opencode's own titles name only the what (a path relative to the repo,
 * a command), so a read and an edit of one file would read the same.
 */
export function partTitle(tool: string | undefined, title: string): string {
  const line = title.split("\n")[0];
  const what = line.length > 100 ? line.slice(0, 99) + "…" : line;
  return tool ? `${tool}: ${what}` : what;
}

/** convertPart keeps text and tool parts, in lap's shape; others are dropped. */
export function convertPart(p: OcPart, messageID: string): Part | undefined {
  const base = { id: p.id, sessionID: p.sessionID, messageID };
  if (p.type === "text") {
    if (p.synthetic || p.ignored) return undefined;
    return { ...base, type: "text", text: p.text ?? "" };
  }
  if (p.type === "tool" && p.state) {
    const s = p.state;
    const status: ToolStatus = toolStatuses.includes(s.status as ToolStatus) ? (s.status as ToolStatus) : "running";
    return {
      ...base,
      type: "tool",
      tool: p.tool,
      callID: p.callID,
      state: {
        status,
        input: s.input ?? {},
        ...(s.output ? { output: s.output } : {}),
        ...(s.error ? { error: s.error } : {}),
        ...(s.title ? { title: partTitle(p.tool, s.title) } : {}),
      },
    };
  }
  return undefined;
}

function tokens(t: OcInfo["tokens"]): { input: number; output: number } {
  return {
    input: (t?.input ?? 0) + (t?.cache?.read ?? 0) + (t?.cache?.write ?? 0),
    output: (t?.output ?? 0) + (t?.reasoning ?? 0),
  };
}

/**
 * mergeTurn folds the assistant messages of one turn (one per LLM step)
 * into the one message lap expects: the first message's id, the parts of
 * all steps, summed tokens and cost, and the last step's error.
 */
export function mergeTurn(steps: OcMessage[]): Message {
  const first = steps[0].info;
  const last = steps[steps.length - 1].info;
  const info: MessageInfo = {
    id: first.id,
    sessionID: first.sessionID,
    role: "assistant",
    time: { created: first.time.created, ...(last.time.completed ? { completed: last.time.completed } : {}) },
    ...(first.modelID ? { modelID: first.modelID } : {}),
    tokens: { input: 0, output: 0 },
    cost: 0,
  };
  const parts: Part[] = [];
  for (const s of steps) {
    const t = tokens(s.info.tokens);
    info.tokens.input += t.input;
    info.tokens.output += t.output;
    info.cost += s.info.cost ?? 0;
    for (const p of s.parts) {
      const c = convertPart(p, first.id);
      if (c) parts.push(c);
    }
  }
  const error = convertError(steps.map((s) => s.info.error).filter(Boolean).at(-1));
  if (error) info.error = error;
  return { info, parts };
}

/** userMessage converts one of opencode's user messages. */
export function userMessage(m: OcMessage): Message {
  return {
    info: { id: m.info.id, sessionID: m.info.sessionID, role: "user", time: { created: m.info.time.created }, tokens: { input: 0, output: 0 }, cost: 0 },
    parts: m.parts.map((p) => convertPart(p, m.info.id)).filter((p): p is Part => p !== undefined && p.type === "text"),
  };
}

/** conversation converts opencode's message list, one message per turn. */
export function conversation(list: OcMessage[]): Message[] {
  const out: Message[] = [];
  let steps: OcMessage[] = [];
  const flush = () => {
    if (steps.length > 0) out.push(mergeTurn(steps));
    steps = [];
  };
  for (const m of list) {
    if (m.info.role === "assistant") {
      if (steps.length > 0 && steps[0].info.parentID !== m.info.parentID) flush();
      steps.push(m);
    } else {
      flush();
      out.push(userMessage(m));
    }
  }
  flush();
  return out;
}

/** turnOf returns the merged reply to the user message userID, if any. */
export function turnOf(list: OcMessage[], userID: string): Message | undefined {
  const steps = list.filter((m) => m.info.role === "assistant" && m.info.parentID === userID);
  return steps.length > 0 ? mergeTurn(steps) : undefined;
}

interface TurnState {
  lead: string;
  assistants: Set<string>;
  parts: Map<string, Part>;
  error?: MessageError;
}

/**
 * Events translates opencode's event stream into lap's: per session, the
 * first assistant message of a turn leads it, later steps' parts are
 * re-homed onto it, and at session.idle the merged message is announced
 * (fetched through finalMessage) before session.error and session.idle.
 */
export class Events {
  private readonly turns = new Map<string, TurnState>();

  constructor(
    private readonly emit: (e: Event) => void,
    private readonly finalMessage: (sessionID: string) => Promise<Message | undefined>,
  ) {}

  /** handle translates one upstream event; it resolves once it is emitted. */
  async handle(e: { type: string; properties: Record<string, unknown> }): Promise<void> {
    const p = e.properties ?? {};
    const sessionID = (p.sessionID as string) ?? "";
    switch (e.type) {
      case "message.updated": {
        const info = p.info as OcInfo;
        if (info?.role !== "assistant") return;
        let t = this.turns.get(info.sessionID);
        if (!t) {
          t = { lead: info.id, assistants: new Set(), parts: new Map() };
          this.turns.set(info.sessionID, t);
          this.emit({
            type: EventMessageUpdated,
            properties: {
              sessionID: info.sessionID,
              info: {
                id: info.id,
                sessionID: info.sessionID,
                role: "assistant",
                time: { created: info.time.created },
                ...(info.modelID ? { modelID: info.modelID } : {}),
                tokens: { input: 0, output: 0 },
                cost: 0,
              },
            },
          });
        }
        t.assistants.add(info.id);
        return;
      }
      case "message.part.updated": {
        const part = p.part as OcPart;
        const t = part && this.turns.get(part.sessionID);
        if (!t || !t.assistants.has(part.messageID)) return;
        const c = convertPart(part, t.lead);
        if (!c) return;
        const had = t.parts.get(part.id);
        t.parts.set(part.id, c);
        if (c.type === "text") {
          const before = had?.text ?? "";
          if (!c.text || c.text === before) return;
          this.emitPart(c, c.text.startsWith(before) ? c.text.slice(before.length) : undefined);
          return;
        }
        if (had && JSON.stringify(had.state) === JSON.stringify(c.state)) return;
        this.emitPart(c);
        return;
      }
      case "message.part.delta": {
        const t = this.turns.get(sessionID);
        const partID = p.partID as string;
        const delta = p.delta as string;
        if (!t || p.field !== "text" || !delta || !t.assistants.has(p.messageID as string)) return;
        const had = t.parts.get(partID) ?? { id: partID, sessionID, messageID: t.lead, type: "text" as const, text: "" };
        const next = { ...had, text: (had.text ?? "") + delta };
        t.parts.set(partID, next);
        this.emitPart(next, delta);
        return;
      }
      case "session.error": {
        const err = convertError(p.error as OcInfo["error"]);
        const t = this.turns.get(sessionID);
        if (t && err) t.error ??= err;
        else if (err) this.turns.set(sessionID, { lead: "", assistants: new Set(), parts: new Map(), error: err });
        return;
      }
      case "session.idle": {
        const t = this.turns.get(sessionID);
        this.turns.delete(sessionID);
        let error = t?.error;
        if (t?.lead) {
          const final = await this.finalMessage(sessionID).catch(() => undefined);
          if (final) {
            this.emit({ type: EventMessageUpdated, properties: { sessionID, info: final.info } });
            error = final.info.error ?? error;
          }
        }
        if (error) this.emit({ type: EventSessionError, properties: { sessionID, error } });
        this.emit({ type: EventSessionIdle, properties: { sessionID } });
        return;
      }
    }
  }

  private emitPart(part: Part, delta?: string): void {
    this.emit({ type: EventPartUpdated, properties: { sessionID: part.sessionID, part: structuredClone(part), ...(delta ? { delta } : {}) } });
  }
}
