// Preparing the directory the agent works in: clone $REPO_URL at $BRANCH
// into $WORKSPACE/repo once (a restart on the same workspace reuses it),
// use $REPO_DIR as is for local development, or start empty.
import { spawn } from "node:child_process";
import { mkdirSync, renameSync, rmSync, statSync } from "node:fs";
import { dirname, join } from "node:path";
import type { Config } from "./config.js";
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
  const args = ["clone", "--progress"];
  if (cfg.branch) args.push("--branch", cfg.branch);
  args.push("--", cfg.repoURL, tmp);
  progress(`cloning ${cfg.repoURL}${cfg.branch ? ` (${cfg.branch})` : ""}`);
  log.info("cloning repo", { url: cfg.repoURL, branch: cfg.branch });
  await git(args, progress);
  renameSync(tmp, cfg.repoDir);
  progress("repo ready");
}

function git(args: string[], progress: (line: string) => void): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn("git", args, {
      stdio: ["ignore", "ignore", "pipe"],
      // A sandbox has nobody to type a password: fail instead of waiting.
      env: { ...process.env, GIT_TERMINAL_PROMPT: "0" },
    });
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
      else reject(new Error(`git clone exited with status ${code}: ${tail.join(" | ") || "no output"}`));
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
