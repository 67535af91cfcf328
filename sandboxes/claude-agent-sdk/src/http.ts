// The HTTP face of the harness (ARCHITECTURE §5), on plain node:http.
import type { IncomingMessage, ServerResponse } from "node:http";
import { timingSafeEqual } from "node:crypto";
import type { Agent } from "./agent.js";
import { HttpError } from "./errors.js";
import { serveEvents, type Bus } from "./events.js";
import type { Logger } from "./log.js";
import type { CreateSessionRequest, Identity, SendMessageRequest } from "./protocol.js";
import type { Workspace } from "./workspace.js";

/** Largest request body accepted; a chat message is far smaller. */
export const maxBody = 8 << 20;

export interface Deps {
  agent: Agent;
  bus: Bus;
  workspace: Workspace;
  log: Logger;
  authToken: string;
  identity: () => Identity;
  heartbeatMs?: number;
}

/** handler returns the request listener of the harness server. */
export function handler(d: Deps): (req: IncomingMessage, res: ServerResponse) => void {
  return (req, res) => {
    route(d, req, res).catch((err: unknown) => {
      const e = err instanceof HttpError ? err : new HttpError(500, "internal", (err as Error).message);
      if (e.status >= 500) d.log.error("request failed", { method: req.method, path: req.url, err: e.message });
      if (!res.headersSent) sendJSON(res, e.status, { error: { code: e.code, message: e.message } });
      else res.end();
    });
  };
}

async function route(d: Deps, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const url = new URL(req.url ?? "/", "http://harness");
  const path = url.pathname.replace(/\/+$/, "") || "/";
  const method = req.method ?? "GET";

  if (path === "/" && method === "GET") {
    sendJSON(res, 200, d.identity());
    return;
  }
  if (!authorized(req, d.authToken)) {
    res.setHeader("WWW-Authenticate", "Bearer");
    throw new HttpError(401, "unauthorized", "missing or wrong bearer token");
  }

  if (path === "/event" && method === "GET") {
    serveEvents(d.bus, res, d.heartbeatMs);
    return;
  }
  if (path === "/session") {
    if (method === "GET") {
      // Readiness: lapd polls this until the repo is cloned.
      if (!d.workspace.ready) {
        const msg = d.workspace.error ? `workspace failed: ${d.workspace.error}` : "workspace is being prepared";
        throw new HttpError(503, d.workspace.error ? "workspace_failed" : "not_ready", msg);
      }
      sendJSON(res, 200, d.agent.list());
      return;
    }
    if (method === "POST") {
      const body = (await readJSON(req)) as CreateSessionRequest;
      if (body.history !== undefined && !Array.isArray(body.history)) {
        throw new HttpError(400, "invalid_request", "history must be an array of messages");
      }
      sendJSON(res, 200, d.agent.create(body));
      return;
    }
    throw notAllowed(method, path);
  }

  const m = /^\/session\/([^/]+)(?:\/(message|prompt_async|abort))?$/.exec(path);
  if (!m) throw new HttpError(404, "not_found", `no route ${method} ${path}`);
  const id = decodeURIComponent(m[1]);
  switch (`${method} ${m[2] ?? ""}`) {
    case "GET ":
      sendJSON(res, 200, d.agent.get(id));
      return;
    case "DELETE ":
      await d.agent.remove(id);
      sendJSON(res, 200, true);
      return;
    case "GET message":
      sendJSON(res, 200, d.agent.messages(id));
      return;
    case "POST message": {
      const body = (await readJSON(req)) as SendMessageRequest;
      // The turn goes on if the caller hangs up; lapd reads the result from
      // GET /session/:id/message or the events.
      sendJSON(res, 200, await d.agent.start(id, body));
      return;
    }
    case "POST prompt_async": {
      const body = (await readJSON(req)) as SendMessageRequest;
      d.agent.start(id, body).catch((err) => d.log.error("async turn", { session: id, err: (err as Error).message }));
      res.writeHead(204).end();
      return;
    }
    case "POST abort":
      sendJSON(res, 200, d.agent.abort(id));
      return;
  }
  throw notAllowed(method, path);
}

export function notAllowed(method: string, path: string): HttpError {
  return new HttpError(405, "method_not_allowed", `${method} is not allowed on ${path}`);
}

export function authorized(req: IncomingMessage, token: string): boolean {
  if (!token) return true;
  const h = req.headers.authorization ?? "";
  const want = Buffer.from(`Bearer ${token}`);
  const got = Buffer.from(h);
  return got.length === want.length && timingSafeEqual(got, want);
}

export async function readJSON(req: IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const c of req) {
    size += (c as Buffer).length;
    if (size > maxBody) throw new HttpError(413, "too_large", `request body over ${maxBody} bytes`);
    chunks.push(c as Buffer);
  }
  const text = Buffer.concat(chunks).toString("utf8");
  if (!text.trim()) return {};
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (err) {
    throw new HttpError(400, "invalid_json", `request body: ${(err as Error).message}`);
  }
  if (v === null || typeof v !== "object" || Array.isArray(v)) {
    throw new HttpError(400, "invalid_request", "request body must be a JSON object");
  }
  return v;
}

export function sendJSON(res: ServerResponse, status: number, body: unknown): void {
  const data = JSON.stringify(body);
  res.writeHead(status, { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(data) });
  res.end(data);
}
