import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadConfig } from "./config.js";
import { newLogger } from "./log.js";
import { gitEnv, redactURL, Workspace } from "./workspace.js";

test("gitEnv passes the token as a header of this one process", () => {
  const env = gitEnv({ PATH: "/bin", GIT_TOKEN: "s3cret", GIT_CONFIG_COUNT: "1", GIT_CONFIG_KEY_0: "a.b", GIT_CONFIG_VALUE_0: "c" }, "s3cret");
  assert.equal(env.GIT_TOKEN, undefined);
  assert.equal(env.GIT_CONFIG_COUNT, "2");
  assert.equal(env.GIT_CONFIG_KEY_1, "http.extraHeader");
  assert.equal(env.GIT_CONFIG_VALUE_1, "Authorization: Basic " + Buffer.from("x-access-token:s3cret").toString("base64"));
  assert.equal(env.GIT_TERMINAL_PROMPT, "0");
  assert.equal(gitEnv({}, "").GIT_CONFIG_COUNT, undefined);
  assert.equal(redactURL("https://user:pw@example.com/r.git"), "https://user:xxxxx@example.com/r.git");
  assert.equal(redactURL("/local/path"), "/local/path");
});

test("the repo is cloned once, shallow, at the branch; a bad URL is a clear error", async () => {
  const src = mkdtempSync(join(tmpdir(), "src-"));
  const git = (...args: string[]) =>
    execFileSync("git", args, { cwd: src, env: { ...process.env, GIT_AUTHOR_NAME: "t", GIT_AUTHOR_EMAIL: "t@x", GIT_COMMITTER_NAME: "t", GIT_COMMITTER_EMAIL: "t@x" } });
  git("init", "-q", "-b", "main");
  writeFileSync(join(src, "a.txt"), "one\n");
  git("add", "a.txt");
  git("commit", "-q", "-m", "one");
  git("checkout", "-q", "-b", "dev");
  writeFileSync(join(src, "a.txt"), "two\n");
  git("commit", "-q", "-am", "two");

  const ws = mkdtempSync(join(tmpdir(), "ws-"));
  const cfg = loadConfig({ WORKSPACE: ws, REPO_URL: `file://${src}`, BRANCH: "dev" });
  const lines: string[] = [];
  const w = new Workspace(cfg.repoDir);
  await w.prepare(cfg, newLogger("ERROR"), (l) => lines.push(l));
  assert.ok(w.ready, w.error);
  assert.equal(readFileSync(join(ws, "repo", "a.txt"), "utf8"), "two\n");
  assert.equal(execFileSync("git", ["rev-list", "--count", "HEAD"], { cwd: join(ws, "repo") }).toString().trim(), "1", "shallow");
  assert.match(lines[0], /^cloning file:\/\/.* \(branch dev\)$/);

  // A second start on the workspace keeps the clone (and any edits).
  writeFileSync(join(ws, "repo", "a.txt"), "edited\n");
  const again = new Workspace(cfg.repoDir);
  await again.prepare(cfg, newLogger("ERROR"), () => {});
  assert.equal(readFileSync(join(ws, "repo", "a.txt"), "utf8"), "edited\n");

  const bad = loadConfig({ WORKSPACE: mkdtempSync(join(tmpdir(), "ws-")), REPO_URL: join(src, "missing") });
  const wb = new Workspace(bad.repoDir);
  await wb.prepare(bad, newLogger("ERROR"), () => {});
  assert.equal(wb.ready, false);
  assert.match(wb.error, /^git clone .*missing/);
  await assert.rejects(wb.done);
});
