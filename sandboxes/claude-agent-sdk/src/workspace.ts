// Preparing the directory the agent works in: clone $REPO_URL at $BRANCH
// into $WORKSPACE/repo once (a restart on the same workspace reuses it),
// use $REPO_DIR as is for local development, or start empty.
import { spawn } from "node:child_process";
import { mkdirSync, renameSync, rmSync, statSync } from "node:fs";
import { dirname, join } from "node:path";
import { agentEnv, type Config } from "./config.js";
import type { Logger } from "./log.js";

/** Workspace tracks the preparation of the repo directory. */
export class Workspace {
  ready = false;
  error = "";
  /** Resolves once the repo is there; rejects with the preparation error. */
  readonly done: Promise<void>;
  private settle!: (err?: Error) => void;

  constructor(readonly dir: string) {
    this.done = new Promise<void>((resolve, reject) => {
      this.settle = (err) => (err ? reject(err) : resolve());
    });
    // Callers that only poll `ready` must not trip the unhandled-rejection
    // check; those that await `done` still see the error.
    this.done.catch(() => {});
  }

  /** prepare makes the repo directory ready; it never throws. */
  async prepare(cfg: Config, log: Logger, progress: (line: string) => void): Promise<void> {
    try {
      await prepareRepo(cfg, log, progress);
      this.ready = true;
      this.settle();
    } catch (err) {
      this.error = (err as Error).message;
      log.error("prepare workspace", { err: this.error });
      this.settle(err as Error);
    }
  }
}

async function prepareRepo(cfg: Config, log: Logger, progress: (line: string) => void): Promise<void> {
  if (cfg.repoGiven) {
    if (!isDir(cfg.repoDir)) throw new Error(`REPO_DIR ${cfg.repoDir} is not a directory`);
    log.info("using the given repo directory", { dir: cfg.repoDir });
    return;
  }
  if (isDir(cfg.repoDir)) {
    log.info("workspace already prepared", { dir: cfg.repoDir });
    return;
  }
  mkdirSync(dirname(cfg.repoDir), { recursive: true });
  if (!cfg.repoURL) {
    mkdirSync(cfg.repoDir, { recursive: true });
    log.info("no REPO_URL: empty workspace", { dir: cfg.repoDir });
    return;
  }
  // Clone next to the target and rename, so an existing repo directory
  // always means a complete clone, even after a crash mid-clone.
  const tmp = join(cfg.workspace, ".lap", "clone.tmp");
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(dirname(tmp), { recursive: true });
  // Shallow, as lap's Go harness clones: a sandbox needs the tree, and a
  // big history would make every cold start slow.
  const args = ["clone", "--progress", "--depth", "1"];
  if (cfg.branch) args.push("--branch", cfg.branch);
  args.push("--", cfg.repoURL, tmp);
  const what = `${redactURL(cfg.repoURL)}${cfg.branch ? ` (branch ${cfg.branch})` : ""}`;
  progress(`cloning ${what}`);
  log.info("cloning repo", { url: redactURL(cfg.repoURL), branch: cfg.branch });
  try {
    await git(args, cfg.gitToken, (line) => progress(redact(line, cfg.gitToken)));
  } catch (err) {
    let msg = redact((err as Error).message, cfg.gitToken);
    if (msg.includes("could not read Username")) {
      msg += cfg.gitToken ? " (the git server did not accept GIT_TOKEN)" : " (the repository needs credentials: set GIT_TOKEN)";
    }
    throw new Error(`git clone ${what}: ${msg}`);
  }
  renameSync(tmp, cfg.repoDir);
  progress("repo ready");
}

/**
 * gitEnv is the clone's environment: no secrets, never prompting (nobody is
 * there to type a password), and the token, when given, as an HTTP
 * Authorization header through GIT_CONFIG_* variables of this one process,
 * so it is not on the command line, not in the clone's .git/config and not
 * in any later process.
 */
export function gitEnv(env: NodeJS.ProcessEnv, token: string): Record<string, string> {
  const out = agentEnv(env);
  out.GIT_TERMINAL_PROMPT = "0";
  if (!token) return out;
  const n = Number(out.GIT_CONFIG_COUNT ?? "0") || 0;
  out[`GIT_CONFIG_KEY_${n}`] = "http.extraHeader";
  out[`GIT_CONFIG_VALUE_${n}`] = "Authorization: Basic " + Buffer.from(`x-access-token:${token}`).toString("base64");
  out.GIT_CONFIG_COUNT = String(n + 1);
  return out;
}

/** redactURL hides a password in a URL's user info. */
export function redactURL(raw: string): string {
  try {
    const u = new URL(raw);
    if (!u.password) return raw;
    u.password = "xxxxx";
    return u.toString();
  } catch {
    return raw;
  }
}

function redact(s: string, secret: string): string {
  return secret ? s.split(secret).join("[redacted]") : s;
}

function git(args: string[], token: string, progress: (line: string) => void): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn("git", args, { stdio: ["ignore", "ignore", "pipe"], env: gitEnv(process.env, token) });
    const tail: string[] = [];
    let last = 0;
    let pending = "";
    child.stderr.setEncoding("utf8");
    child.stderr.on("data", (chunk: string) => {
      pending += chunk;
      const lines = pending.split(/[\r\n]/);
      pending = lines.pop() ?? "";
      for (const raw of lines) {
        const line = raw.trim();
        if (!line) continue;
        tail.push(line);
        if (tail.length > 5) tail.shift();
        // git redraws its counters many times a second; a few updates are
        // enough to show that the clone moves.
        const now = Date.now();
        if (now - last >= 250 || /done\.?$/.test(line)) {
          last = now;
          progress(line);
        }
      }
    });
    child.on("error", (err) => reject(new Error(`git clone: ${err.message}`)));
    child.on("close", (code) => {
      if (code === 0) resolve();
      else reject(new Error(tail.join(" | ") || `git exited with status ${code}`));
    });
  });
}

function isDir(p: string): boolean {
  try {
    return statSync(p).isDirectory();
  } catch {
    return false;
  }
}
