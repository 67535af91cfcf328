// lap-harness-opencode: opencode's own server (opencode serve) as a lap
// harness. opencode runs on a private loopback port behind this adapter,
// which adds what lap's protocol needs and opencode lacks: bearer auth,
// GET / identity, the repo clone, the gateway as provider, history seeding,
// and one message per turn (see octranslate.ts and DESIGN.md).
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { createServer, request, type IncomingMessage, type ServerResponse } from "node:http";
import { createServer as createNetServer } from "node:net";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { agentEnv, loadConfig, stateDir, type Config } from "./config.js";
import { HttpError } from "./errors.js";
import { Bus, serveEvents } from "./events.js";
import { historyPrompt } from "./history.js";
import { authorized, notAllowed, readJSON, sendJSON } from "./http.js";
import { newLogger, type Logger } from "./log.js";
import { conversation, Events, turnOf, type OcMessage } from "./octranslate.js";
import { EventWorkspaceProgress, type CreateSessionRequest, type Message, type SendMessageRequest } from "./protocol.js";
import { Workspace } from "./workspace.js";

/** The provider id the generated opencode config gives lapd's gateway. */
export const gatewayProvider = "lap";

/**
 * opencodeConfig is the opencode.json of a sandbox: lapd's gateway as an
 * OpenAI-compatible provider serving the agent's model under its lap name,
 * every permission granted (the sandbox is the boundary), and nothing that
 * phones home. The key stays in the environment, not in the file.
 */
export function opencodeConfig(cfg: Config): Record<string, unknown> {
  const c: Record<string, unknown> = {
    $schema: "https://opencode.ai/config.json",
    autoupdate: false,
    share: "disabled",
    permission: { edit: "allow", bash: "allow", webfetch: "allow", external_directory: "allow", doom_loop: "allow" },
  };
  if (cfg.anthropicBaseURL && cfg.model) {
    c.provider = {
      [gatewayProvider]: {
        npm: "@ai-sdk/openai-compatible",
        name: "lap gateway",
        options: { baseURL: `${cfg.anthropicBaseURL}/v1`, apiKey: "{env:LITELLM_API_KEY}" },
        models: { [cfg.model]: { name: cfg.model } },
      },
    };
    c.model = `${gatewayProvider}/${cfg.model}`;
  } else if (cfg.model) {
    c.model = cfg.model;
  }
  return c;
}

/** modelRef is the model a message asks opencode for, in its terms. */
export function modelRef(cfg: Config, req: SendMessageRequest): { providerID: string; modelID: string } | undefined {
  const name = req.model?.modelID ? (req.model.providerID ? `${req.model.providerID}/${req.model.modelID}` : req.model.modelID) : cfg.model;
  if (!name) return undefined;
  if (cfg.anthropicBaseURL) return { providerID: gatewayProvider, modelID: name };
  const i = name.indexOf("/");
  return i > 0 ? { providerID: name.slice(0, i), modelID: name.slice(i + 1) } : undefined;
}

/** Upstream talks to the private opencode server. */
class Upstream {
  private readonly auth: string;
  constructor(
    readonly port: number,
    password: string,
  ) {
    this.auth = "Basic " + Buffer.from(`opencode:${password}`).toString("base64");
  }

  /**
   * call sends one request and parses the JSON answer. Turns are long, so
   * only the readiness probe sets a timeout.
   */
  call(method: string, path: string, body?: unknown, timeoutMs = 0): Promise<{ status: number; body: unknown }> {
    return new Promise((resolve, reject) => {
      const data = body === undefined ? undefined : JSON.stringify(body);
      const req = request(
        { host: "127.0.0.1", port: this.port, method, path, headers: { Authorization: this.auth, ...(data ? { "Content-Type": "application/json" } : {}) } },
        (res) => {
          const chunks: Buffer[] = [];
          res.on("data", (c: Buffer) => chunks.push(c));
          res.on("end", () => {
            const text = Buffer.concat(chunks).toString("utf8");
            let parsed: unknown = text;
            try {
              parsed = text ? JSON.parse(text) : undefined;
            } catch {
              // Non-JSON errors are passed on as text.
            }
            resolve({ status: res.statusCode ?? 0, body: parsed });
          });
          res.on("error", reject);
        },
      );
      req.on("error", reject);
      // A connection opencode accepts while it boots can go quiet; without
      // this the probe would wait for it forever.
      if (timeoutMs > 0) req.setTimeout(timeoutMs, () => req.destroy(new Error(`${method} ${path}: no answer in ${timeoutMs}ms`)));
      req.on("close", () => reject(new Error(`${method} ${path}: connection closed`)));
      req.end(data);
    });
  }

  /** ok calls and throws unless the answer is 2xx. */
  async ok(method: string, path: string, body?: unknown): Promise<unknown> {
    const r = await this.call(method, path, body);
    if (r.status >= 200 && r.status < 300) return r.body;
    const msg = typeof r.body === "string" ? r.body : JSON.stringify(r.body);
    if (r.status === 404) throw new HttpError(404, "not_found", `opencode: ${msg}`);
    if (r.status === 400) throw new HttpError(400, "invalid_request", `opencode: ${msg}`);
    throw new HttpError(502, "harness_failed", `opencode answered ${r.status}: ${msg}`);
  }

  /** events streams opencode's events to fn until stopped, reconnecting. */
  events(fn: (e: { type: string; properties: Record<string, unknown> }) => Promise<void>, log: Logger, stopped: () => boolean): void {
    const connect = () => {
      if (stopped()) return;
      const req = request({ host: "127.0.0.1", port: this.port, path: "/event", headers: { Authorization: this.auth, Accept: "text/event-stream" } }, (res) => {
        res.setEncoding("utf8");
        let buf = "";
        // Events are handled one at a time so a turn's final message is
        // announced before anything that follows it.
        let chain = Promise.resolve();
        res.on("data", (chunk: string) => {
          buf += chunk;
          let i: number;
          while ((i = buf.indexOf("\n\n")) >= 0) {
            const frame = buf.slice(0, i);
            buf = buf.slice(i + 2);
            const data = frame
              .split("\n")
              .filter((l) => l.startsWith("data:"))
              .map((l) => l.slice(5).trimStart())
              .join("\n");
            if (!data) continue;
            try {
              const e = JSON.parse(data);
              chain = chain.then(() => fn(e)).catch((err) => log.error("translate event", { err: (err as Error).message }));
            } catch (err) {
              log.warn("bad opencode event", { err: (err as Error).message });
            }
          }
        });
        res.on("end", () => setTimeout(connect, 500));
        res.on("error", () => setTimeout(connect, 500));
      });
      req.on("error", () => setTimeout(connect, 500));
      req.end();
    };
    connect();
  }
}

/** Side is what the adapter keeps per session that opencode has no field for. */
interface Side {
  system: string;
  history: Message[];
  seed: boolean;
  /** The first user message, whose text opencode holds with the history in front. */
  seededUser?: string;
  seededText?: string;
}

/** SideStore persists Side records in one JSON file, replaced atomically. */
class SideStore {
  private readonly data: Record<string, Side>;
  constructor(private readonly path: string) {
    this.data = existsSync(path) ? (JSON.parse(readFileSync(path, "utf8")) as Record<string, Side>) : {};
  }
  get(id: string): Side | undefined {
    return this.data[id];
  }
  set(id: string, s: Side): void {
    this.data[id] = s;
    this.flush();
  }
  delete(id: string): void {
    delete this.data[id];
    this.flush();
  }
  private flush(): void {
    writeFileSync(`${this.path}.tmp`, JSON.stringify(this.data));
    renameSync(`${this.path}.tmp`, this.path);
  }
}

/** opencodeBinary finds the pinned opencode of this checkout, else PATH's. */
function opencodeBinary(): string {
  if (process.env.OPENCODE_BIN) return process.env.OPENCODE_BIN;
  const mods = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "opencode", "node_modules");
  let avx2 = false;
  try {
    avx2 = /\bavx2\b/.test(readFileSync("/proc/cpuinfo", "utf8"));
  } catch {
    // Not Linux: the baseline build is the safe choice.
  }
  for (const pkg of avx2 ? ["opencode-linux-x64", "opencode-linux-x64-baseline"] : ["opencode-linux-x64-baseline", "opencode-linux-x64"]) {
    const p = join(mods, pkg, "bin", "opencode");
    if (existsSync(p)) return p;
  }
  return "opencode";
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createNetServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

async function main(): Promise<number> {
  let cfg: Config;
  try {
    cfg = loadConfig(process.env, "opencode");
  } catch (err) {
    process.stderr.write(`lap-harness-opencode: ${(err as Error).message}\n`);
    return 2;
  }
  const log = newLogger(cfg.logLevel);
  const bin = opencodeBinary();
  const v = spawnSync(bin, ["--version"], { encoding: "utf8", env: { ...process.env, HOME: join(stateDir(cfg), "home") } });
  const version = v.status === 0 ? v.stdout.trim() : "unknown";
  const state = stateDir(cfg);
  const ocState = join(state, "opencode");
  for (const d of ["home", "opencode/config", "opencode/data", "opencode/cache", "opencode/state"]) mkdirSync(join(state, d), { recursive: true });
  const configPath = join(ocState, "opencode.json");
  writeFileSync(configPath, JSON.stringify(opencodeConfig(cfg), null, 2));

  const bus = new Bus();
  const workspace = new Workspace(cfg.repoDir);
  const side = new SideStore(join(state, "opencode-sessions.json"));
  const busy = new Set<string>();
  let upstream: Upstream | undefined;
  let child: ChildProcess | undefined;
  let upstreamError = "";
  let stopping = false;

  const ready = () => workspace.ready && upstream !== undefined;
  const need = (): Upstream => {
    if (upstream) return upstream;
    const why = workspace.error || upstreamError;
    throw new HttpError(503, why ? "workspace_failed" : "not_ready", why ? `not ready: ${why}` : "opencode is starting");
  };

  const runTurn = async (id: string, req: SendMessageRequest): Promise<Message> => {
    const up = need();
    const text = (req.parts ?? []).filter((p) => p?.type === "text").map((p) => p.text ?? "").join("");
    const s = side.get(id);
    let prompt = text;
    if (s?.seed) {
      const list = (await up.ok("GET", `/session/${encodeURIComponent(id)}/message`)) as OcMessage[];
      if (list.length === 0) prompt = historyPrompt(s.history, text);
    }
    const system = [cfg.agentPrompt, s?.system, req.system].filter((x) => x && x.trim()).join("\n\n");
    const model = modelRef(cfg, req);
    const last = (await up.ok("POST", `/session/${encodeURIComponent(id)}/message`, {
      parts: [{ type: "text", text: prompt }],
      ...(system ? { system } : {}),
      ...(model ? { model } : {}),
    })) as OcMessage;
    const userID = last.info.parentID ?? "";
    if (s?.seed) side.set(id, { ...s, seed: false, seededUser: userID, seededText: text });
    const list = (await up.ok("GET", `/session/${encodeURIComponent(id)}/message`)) as OcMessage[];
    return turnOf(list, userID) ?? conversation([last])[0];
  };

  const start = (id: string, req: SendMessageRequest): Promise<Message> => {
    const text = (req.parts ?? []).filter((p) => p?.type === "text").map((p) => p.text ?? "").join("");
    if (!text.trim()) throw new HttpError(400, "invalid_request", "the message has no text part");
    need();
    if (busy.has(id)) throw new HttpError(409, "busy", `session ${id} is already running a turn`);
    busy.add(id);
    return runTurn(id, req).finally(() => busy.delete(id));
  };

  const route = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const url = new URL(req.url ?? "/", "http://harness");
    const path = url.pathname.replace(/\/+$/, "") || "/";
    const method = req.method ?? "GET";
    if (path === "/" && method === "GET") {
      const error = workspace.error || upstreamError;
      sendJSON(res, 200, { harness: "opencode", version, ready: ready(), workspace: cfg.repoDir, ...(error ? { error } : {}) });
      return;
    }
    if (!authorized(req, cfg.authToken)) {
      res.setHeader("WWW-Authenticate", "Bearer");
      throw new HttpError(401, "unauthorized", "missing or wrong bearer token");
    }
    if (path === "/event" && method === "GET") return serveEvents(bus, res);
    if (path === "/session") {
      const up = need();
      if (method === "GET") {
        const list = (await up.ok("GET", "/session")) as { id: string; title?: string }[];
        return sendJSON(res, 200, list.map((s) => ({ id: s.id, ...(s.title ? { title: s.title } : {}) })));
      }
      if (method === "POST") {
        const body = (await readJSON(req)) as CreateSessionRequest;
        if (body.history !== undefined && !Array.isArray(body.history)) throw new HttpError(400, "invalid_request", "history must be an array of messages");
        const s = (await up.ok("POST", "/session", body.title ? { title: body.title } : {})) as { id: string; title?: string };
        const history = (body.history ?? []).filter((m) => m?.info?.role === "user" || m?.info?.role === "assistant");
        side.set(s.id, { system: body.system ?? "", history, seed: history.length > 0 });
        return sendJSON(res, 200, { id: s.id, ...(body.title ? { title: body.title } : {}) });
      }
      throw notAllowed(method, path);
    }
    const m = /^\/session\/([^/]+)(?:\/(message|prompt_async|abort))?$/.exec(path);
    if (!m) throw new HttpError(404, "not_found", `no route ${method} ${path}`);
    const id = decodeURIComponent(m[1]);
    const up = need();
    const at = `/session/${encodeURIComponent(id)}`;
    switch (`${method} ${m[2] ?? ""}`) {
      case "GET ": {
        const s = (await up.ok("GET", at)) as { id: string; title?: string };
        return sendJSON(res, 200, { id: s.id, ...(s.title ? { title: s.title } : {}) });
      }
      case "DELETE ":
        await up.ok("DELETE", at);
        side.delete(id);
        return sendJSON(res, 200, true);
      case "GET message": {
        const s = side.get(id);
        const msgs = conversation((await up.ok("GET", `${at}/message`)) as OcMessage[]);
        for (const msg of msgs) {
          if (s?.seededUser && msg.info.id === s.seededUser && msg.parts[0]) msg.parts[0].text = s.seededText;
        }
        return sendJSON(res, 200, [...(s?.history ?? []), ...msgs]);
      }
      case "POST message": {
        const body = (await readJSON(req)) as SendMessageRequest;
        await up.ok("GET", at); // a clean 404 before the turn starts
        return sendJSON(res, 200, await start(id, body));
      }
      case "POST prompt_async": {
        const body = (await readJSON(req)) as SendMessageRequest;
        await up.ok("GET", at);
        start(id, body).catch((err) => log.error("async turn", { session: id, err: (err as Error).message }));
        res.writeHead(204).end();
        return;
      }
      case "POST abort":
        return sendJSON(res, 200, await up.ok("POST", `${at}/abort`));
    }
    throw notAllowed(method, path);
  };

  const server = createServer((req, res) => {
    route(req, res).catch((err: unknown) => {
      const e = err instanceof HttpError ? err : new HttpError(500, "internal", (err as Error).message);
      if (e.status >= 500) log.error("request failed", { method: req.method, path: req.url, err: e.message });
      if (!res.headersSent) sendJSON(res, e.status, { error: { code: e.code, message: e.message } });
      else res.end();
    });
  });
  server.requestTimeout = 0;
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(cfg.port, cfg.host, () => resolve());
  });
  const addr = server.address();
  log.info("listening", { addr: `${cfg.host}:${typeof addr === "object" && addr ? addr.port : cfg.port}`, opencode: version, bin, auth: cfg.authToken ? "on" : "off" });

  void (async () => {
    await workspace.prepare(cfg, log, (line) => bus.publish({ type: EventWorkspaceProgress, properties: { message: line } }));
    if (!workspace.ready) return;
    const port = await freePort();
    const password = randomBytes(24).toString("base64url");
    // opencode reads the gateway key from LITELLM_API_KEY ({env:…} in its
    // config); the other secrets stay out of the agent's reach.
    const env: NodeJS.ProcessEnv = {
      ...agentEnv(process.env),
      LITELLM_API_KEY: cfg.anthropicAPIKey,
      HOME: join(state, "home"),
      XDG_CONFIG_HOME: join(ocState, "config"),
      XDG_DATA_HOME: join(ocState, "data"),
      XDG_CACHE_HOME: join(ocState, "cache"),
      XDG_STATE_HOME: join(ocState, "state"),
      OPENCODE_CONFIG: configPath,
      OPENCODE_SERVER_PASSWORD: password,
      OPENCODE_DISABLE_AUTOUPDATE: "1",
      OPENCODE_DISABLE_MODELS_FETCH: "1",
      OPENCODE_DISABLE_LSP_DOWNLOAD: "1",
      OPENCODE_DISABLE_SHARE: "1",
      OPENCODE_DISABLE_DEFAULT_PLUGINS: "1",
      OPENCODE_DISABLE_EMBEDDED_WEB_UI: "1",
    };
    child = spawn(bin, ["serve", "--port", String(port), "--hostname", "127.0.0.1"], { cwd: cfg.repoDir, env, stdio: ["ignore", "pipe", "pipe"] });
    child.stdout?.on("data", (d: Buffer) => log.debug("opencode", { out: d.toString().trimEnd() }));
    child.stderr?.on("data", (d: Buffer) => log.debug("opencode", { err: d.toString().trimEnd() }));
    child.on("exit", (code, signal) => {
      if (stopping) return;
      // Without opencode this process is useless; exiting lets the backend
      // see a dead sandbox and resume it.
      log.error("opencode exited", { code, signal });
      process.exit(1);
    });
    const up = new Upstream(port, password);
    const deadline = Date.now() + 180_000;
    while (Date.now() < deadline && !stopping) {
      const r = await up.call("GET", "/session", undefined, 5000).catch(() => undefined);
      if (r?.status === 200) break;
      await new Promise((res) => setTimeout(res, 100));
    }
    if ((await up.call("GET", "/session", undefined, 5000).catch(() => undefined))?.status !== 200) {
      upstreamError = "opencode did not start within 180s";
      log.error("opencode did not start", {});
      return;
    }
    const events = new Events(
      (e) => bus.publish(e),
      async (sessionID) => {
        const list = (await up.ok("GET", `/session/${encodeURIComponent(sessionID)}/message`)) as OcMessage[];
        const lastUser = [...list].reverse().find((m) => m.info.role === "user");
        return lastUser ? turnOf(list, lastUser.info.id) : undefined;
      },
    );
    up.events((e) => events.handle(e), log, () => stopping);
    upstream = up;
    log.info("opencode ready", { port });
  })();

  return new Promise<number>((resolve) => {
    const stop = (sig: string) => {
      if (stopping) return;
      stopping = true;
      log.info("stopping", { signal: sig });
      server.close();
      server.closeAllConnections();
      if (child && child.exitCode === null) {
        // opencode may sit on SIGTERM while a turn runs; it gets 5 s.
        const kill = setTimeout(() => child?.kill("SIGKILL"), 5000);
        child.once("exit", () => {
          clearTimeout(kill);
          resolve(0);
        });
        child.kill("SIGTERM");
      } else resolve(0);
    };
    process.on("SIGTERM", () => stop("SIGTERM"));
    process.on("SIGINT", () => stop("SIGINT"));
  });
}

// Only as a program: tests import the pure parts above.
if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  main().then(
    (code) => process.exit(code),
    (err) => {
      process.stderr.write(`lap-harness-opencode: ${(err as Error).stack ?? err}\n`);
      process.exit(1);
    },
  );
}


