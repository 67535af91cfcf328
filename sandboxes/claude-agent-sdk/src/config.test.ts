import { test } from "node:test";
import assert from "node:assert/strict";
import { agentEnv, gatewayRoot, loadConfig, sdkModel } from "./config.js";

test("gatewayRoot strips slashes and a final /v1", () => {
  const cases: [string, string][] = [
    ["http://127.0.0.1:3000/llm", "http://127.0.0.1:3000/llm"],
    ["http://127.0.0.1:3000/llm/", "http://127.0.0.1:3000/llm"],
    ["http://127.0.0.1:3000/llm/v1", "http://127.0.0.1:3000/llm"],
    ["https://gateway.example/", "https://gateway.example"],
  ];
  for (const [base, want] of cases) assert.equal(gatewayRoot(base), want, base);
});

test("sdkModel drops only the anthropic/ prefix", () => {
  const cases: [string, string][] = [
    ["anthropic/claude-sonnet-4-5", "claude-sonnet-4-5"],
    ["claude-sonnet-4-5", "claude-sonnet-4-5"],
    ["mock/tools", "mock/tools"],
    ["", ""],
  ];
  for (const [name, want] of cases) assert.equal(sdkModel(name), want, name);
});

test("loadConfig reads the sandbox environment", () => {
  const cfg = loadConfig({
    PORT: "5123",
    HARNESS_AUTH_TOKEN: "tok",
    WORKSPACE: "/w",
    REPO_URL: "file:///r.git",
    BRANCH: "dev",
    AGENT_PROMPT: "Be brief.",
    LAP_MODEL: "anthropic/claude-sonnet-4-5",
    LITELLM_API_BASE: "http://127.0.0.1:3000/llm/",
    LITELLM_API_KEY: "lapsb_x",
  });
  assert.equal(cfg.port, 5123);
  assert.equal(cfg.host, "0.0.0.0");
  assert.equal(cfg.repoDir, "/w/repo");
  assert.equal(cfg.repoGiven, false);
  assert.equal(cfg.anthropicBaseURL, "http://127.0.0.1:3000/llm");
  assert.equal(cfg.anthropicAPIKey, "lapsb_x");
});

test("loadConfig: no token means loopback; REPO_DIR is used as is", () => {
  const cfg = loadConfig({ REPO_DIR: "/src/app", WORKSPACE: "/w" });
  assert.equal(cfg.host, "127.0.0.1");
  assert.equal(cfg.port, 4096);
  assert.equal(cfg.repoDir, "/src/app");
  assert.equal(cfg.repoGiven, true);
});

test("loadConfig reports every problem", () => {
  assert.throws(
    () => loadConfig({ PORT: "http", HARNESS_HOST: "0.0.0.0", LITELLM_API_BASE: "ftp://x" }),
    (err: Error) =>
      err.message.includes("PORT") && err.message.includes("HARNESS_HOST") && err.message.includes("LITELLM_API_BASE"),
  );
});

test("agentEnv drops the sandbox's secrets and adds non-interactive defaults", () => {
  const env = agentEnv({ PATH: "/bin", HARNESS_AUTH_TOKEN: "h", GIT_TOKEN: "g", LITELLM_API_KEY: "k", GIT_AUTHOR_NAME: "Ada" });
  assert.equal(env.PATH, "/bin");
  for (const k of ["HARNESS_AUTH_TOKEN", "GIT_TOKEN", "LITELLM_API_KEY"]) assert.equal(env[k], undefined, k);
  assert.equal(env.GIT_AUTHOR_NAME, "Ada", "the environment wins over the defaults");
  assert.equal(env.GIT_COMMITTER_EMAIL, "agent@lap.invalid");
  assert.equal(env.GIT_PAGER, "cat");
});
