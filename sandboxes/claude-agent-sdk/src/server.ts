// lap-harness-claude-agent-sdk: the harness protocol (ARCHITECTURE §5) over
// the official Claude Agent SDK. Run by lap in every claude-agent-sdk
// sandbox, or by hand for local development (see README.md).
import { mkdirSync, readFileSync } from "node:fs";
import { createServer } from "node:http";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { getSessionInfo, query } from "@anthropic-ai/claude-agent-sdk";
import { Agent } from "./agent.js";
import { loadConfig, stateDir } from "./config.js";
import { Bus } from "./events.js";
import { handler } from "./http.js";
import { newLogger } from "./log.js";
import { EventWorkspaceProgress } from "./protocol.js";
import { Store } from "./store.js";
import { Workspace } from "./workspace.js";

function versions(): { own: string; sdk: string } {
  const read = (p: string) => (JSON.parse(readFileSync(p, "utf8")) as { version: string }).version;
  const own = read(fileURLToPath(new URL("../package.json", import.meta.url)));
  let sdk = "unknown";
  try {
    sdk = read(join(dirname(fileURLToPath(import.meta.resolve("@anthropic-ai/claude-agent-sdk"))), "package.json"));
  } catch {
    // Only the identity's version text suffers.
  }
  return { own, sdk };
}

async function main(): Promise<number> {
  let cfg;
  try {
    cfg = loadConfig(process.env);
  } catch (err) {
    process.stderr.write(`lap-harness-claude-agent-sdk: ${(err as Error).message}\n`);
    return 2;
  }
  const log = newLogger(cfg.logLevel);
  const { own, sdk } = versions();
  const version = `${own} (claude-agent-sdk ${sdk})`;

  const state = stateDir(cfg);
  for (const d of ["home", "claude", "sessions"]) mkdirSync(join(state, d), { recursive: true });
  // The SDK's transcript helpers run in this process and find transcripts
  // through this variable, as the Claude Code process does.
  process.env.CLAUDE_CONFIG_DIR = join(state, "claude");

  const bus = new Bus();
  const workspace = new Workspace(cfg.repoDir);
  const store = new Store(join(state, "sessions"));
  const hasTranscript = async (id: string, dir: string) => (await getSessionInfo(id, { dir })) !== undefined;
  const agent = new Agent(cfg, store, bus, workspace, log, query, hasTranscript, own);
  agent.load();

  const server = createServer(
    handler({
      agent,
      bus,
      workspace,
      log,
      authToken: cfg.authToken,
      identity: () => ({
        harness: "claude-agent-sdk",
        version,
        ready: workspace.ready,
        workspace: cfg.repoDir,
        ...(workspace.error ? { error: workspace.error } : {}),
      }),
    }),
  );
  // Turns can run for many minutes behind one blocking request.
  server.requestTimeout = 0;
  server.headersTimeout = 60_000;
  server.keepAliveTimeout = 65_000;

  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(cfg.port, cfg.host, () => resolve());
  });
  const addr = server.address();
  const port = typeof addr === "object" && addr ? addr.port : cfg.port;
  log.info("listening", {
    addr: `${cfg.host}:${port}`,
    version,
    auth: cfg.authToken ? "on" : "off",
    workspace: cfg.workspace,
    model: cfg.model,
    gateway: cfg.anthropicBaseURL || "(SDK default)",
  });

  void workspace.prepare(cfg, log, (line) =>
    bus.publish({ type: EventWorkspaceProgress, properties: { message: line } }),
  );

  return new Promise<number>((resolve) => {
    let stopping = false;
    const stop = (sig: string) => {
      if (stopping) return;
      stopping = true;
      log.info("stopping", { signal: sig });
      server.close();
      void agent.shutdown().finally(() => {
        server.closeAllConnections();
        resolve(0);
      });
    };
    process.on("SIGTERM", () => stop("SIGTERM"));
    process.on("SIGINT", () => stop("SIGINT"));
  });
}

main().then(
  (code) => process.exit(code),
  (err) => {
    process.stderr.write(`lap-harness-claude-agent-sdk: ${(err as Error).stack ?? err}\n`);
    process.exit(1);
  },
);
