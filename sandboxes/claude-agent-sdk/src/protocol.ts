// Wire types of the harness protocol (ARCHITECTURE §5). They mirror the Go
// package lap.dev/lap/sandboxes/protocol field for field, including which
// fields are omitted when empty, so lapd cannot tell this harness from the
// Go one by the shape of its JSON.

/** Body of GET /. */
export interface Identity {
  harness: string;
  version: string;
  /** True once the workspace is prepared (repo cloned). */
  ready: boolean;
  workspace?: string;
  error?: string;
}

export const RoleUser = "user";
export const RoleAssistant = "assistant";

export type ToolStatus = "pending" | "running" | "completed" | "error";

/** One turn of a conversation. */
export interface Message {
  info: MessageInfo;
  parts: Part[];
}

export interface MessageInfo {
  id: string;
  sessionID?: string;
  role: string;
  time: MessageTime;
  modelID?: string;
  tokens: Tokens;
  cost: number;
  error?: MessageError;
}

/** Unix milliseconds; completed is absent while the turn runs. */
export interface MessageTime {
  created: number;
  completed?: number;
}

export interface Tokens {
  input: number;
  output: number;
}

/**
 * Why a turn ended badly. name is "APIError" (the LLM answered an error),
 * "Aborted", "HarnessError" or "Timeout".
 */
export interface MessageError {
  name: string;
  message: string;
  status?: number;
}

export interface Part {
  id?: string;
  sessionID?: string;
  messageID?: string;
  type: "text" | "tool";
  text?: string;
  tool?: string;
  callID?: string;
  state?: ToolState;
}

export interface ToolState {
  status: ToolStatus;
  /** The tool's input object (Go: json.RawMessage). */
  input?: unknown;
  output?: string;
  error?: string;
  title?: string;
}

export interface CreateSessionRequest {
  title?: string;
  system?: string;
  history?: Message[];
}

export interface SessionInfo {
  id: string;
  title?: string;
}

export interface ModelRef {
  providerID: string;
  modelID: string;
}

export interface InputPart {
  type: string;
  text: string;
}

export interface SendMessageRequest {
  messageID?: string;
  parts: InputPart[];
  model?: ModelRef;
  system?: string;
}

export const EventServerConnected = "server.connected";
export const EventServerHeartbeat = "server.heartbeat";
export const EventMessageUpdated = "message.updated";
export const EventPartUpdated = "message.part.updated";
export const EventSessionIdle = "session.idle";
export const EventSessionError = "session.error";
export const EventWorkspaceProgress = "workspace.progress";

export interface Event {
  type: string;
  properties: EventProperties;
}

export interface EventProperties {
  sessionID?: string;
  part?: Part;
  delta?: string;
  info?: MessageInfo;
  error?: MessageError;
  message?: string;
}

/** Text returns the concatenated text parts of m. */
export function messageText(m: Message): string {
  return m.parts.filter((p) => p.type === "text").map((p) => p.text ?? "").join("");
}
