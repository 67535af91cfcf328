// The harness's settings, read once from the environment lapd gives every
// sandbox (ARCHITECTURE §5) plus the quickstart's local-development knobs.
import { homedir } from "node:os";
import { join, resolve } from "node:path";

export interface Config {
  /** TCP port to listen on. */
  port: number;
  /** Address to bind; loopback whenever auth is off. */
  host: string;
  /** Bearer token required on every route but GET /; empty = auth off. */
  authToken: string;
  /** Root of the harness's files: the repo and .lap/ state. */
  workspace: string;
  /** Directory the agent works in. */
  repoDir: string;
  /** True when repoDir is the user's own directory (REPO_DIR), never cloned. */
  repoGiven: boolean;
  repoURL: string;
  branch: string;
  /** Token for cloning a private repo over HTTPS; used for the clone only. */
  gitToken: string;
  /** The agent's system prompt (AGENT_PROMPT). */
  agentPrompt: string;
  /** The agent's model as lap names it, e.g. anthropic/claude-sonnet-4-5. */
  model: string;
  /** ANTHROPIC_BASE_URL for the SDK: the gateway root, without /v1. */
  anthropicBaseURL: string;
  /** ANTHROPIC_API_KEY for the SDK: the sandbox's stub token. */
  anthropicAPIKey: string;
  logLevel: "DEBUG" | "INFO" | "WARN" | "ERROR";
}

/** Where harness state lives inside the workspace (ARCHITECTURE §5). */
export function stateDir(cfg: Config): string {
  return join(cfg.workspace, ".lap");
}

const loopback = new Set(["127.0.0.1", "localhost", "::1"]);

/**
 * loadConfig reads the settings from env. It returns every problem at once
 * so a misconfigured sandbox says all that is wrong in one log line.
 */
export function loadConfig(env: NodeJS.ProcessEnv, harness = "claude-agent-sdk"): Config {
  const problems: string[] = [];
  const get = (k: string, def = "") => (env[k] ?? "").trim() || def;

  const portText = get("PORT", "4096");
  const port = Number(portText);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    problems.push(`PORT=${JSON.stringify(portText)}: want a TCP port number`);
  }

  const authToken = get("HARNESS_AUTH_TOKEN");
  let host = get("HARNESS_HOST", authToken ? "0.0.0.0" : "127.0.0.1");
  if (!authToken && !loopback.has(host)) {
    problems.push(`HARNESS_HOST=${host}: with HARNESS_AUTH_TOKEN empty the harness listens on loopback only`);
    host = "127.0.0.1";
  }

  const workspace = resolve(get("WORKSPACE", join(homedir(), ".lap", `harness-${harness}`)));
  const given = get("REPO_DIR");
  const repoDir = given ? resolve(given) : join(workspace, "repo");

  const base = get("LITELLM_API_BASE");
  let anthropicBaseURL = "";
  if (base) {
    try {
      const u = new URL(base);
      if (u.protocol !== "http:" && u.protocol !== "https:") throw new Error("not http");
      anthropicBaseURL = gatewayRoot(base);
    } catch {
      problems.push(`LITELLM_API_BASE=${JSON.stringify(base)}: want an http(s) URL`);
    }
  }

  const level = get("LOG_LEVEL", "INFO").toUpperCase();
  if (!["DEBUG", "INFO", "WARN", "ERROR"].includes(level)) {
    problems.push(`LOG_LEVEL=${JSON.stringify(level)}: want DEBUG, INFO, WARN or ERROR`);
  }

  if (problems.length > 0) {
    throw new Error(`invalid configuration: ${problems.join("; ")}`);
  }
  return {
    port,
    host,
    authToken,
    workspace,
    repoDir,
    repoGiven: given !== "",
    repoURL: get("REPO_URL"),
    branch: get("BRANCH"),
    gitToken: get("GIT_TOKEN"),
    agentPrompt: env.AGENT_PROMPT ?? "",
    model: get("LAP_MODEL"),
    anthropicBaseURL,
    anthropicAPIKey: get("LITELLM_API_KEY"),
    logLevel: level as Config["logLevel"],
  };
}

/**
 * gatewayRoot turns LITELLM_API_BASE into the root the Anthropic client
 * appends /v1/messages to: without trailing slashes and without a final
 * /v1 (lap's convention is base + /v1 unless the base already ends so).
 */
export function gatewayRoot(base: string): string {
  let s = base.trim().replace(/\/+$/, "");
  if (s.endsWith("/v1")) s = s.slice(0, -3);
  return s;
}

/**
 * sdkModel maps lap's model names to the SDK's: the Anthropic provider
 * prefix is dropped (anthropic/claude-sonnet-4-5 → claude-sonnet-4-5), other
 * names, such as lapd's own mock/… models, pass through for the gateway.
 */
export function sdkModel(name: string): string {
  const s = name.trim();
  return s.toLowerCase().startsWith("anthropic/") ? s.slice("anthropic/".length) : s;
}

/** modelName joins an opencode-style model reference into lap's form. */
export function modelName(ref: { providerID?: string; modelID?: string } | undefined): string {
  if (!ref || !ref.modelID) return "";
  return ref.providerID ? `${ref.providerID}/${ref.modelID}` : ref.modelID;
}

/**
 * Secrets of the sandbox that nothing the agent runs may see: the token
 * that guards the harness, the clone token, and the gateway key (the SDK
 * gets it under its own name, ANTHROPIC_API_KEY).
 */
export const secretEnv = ["HARNESS_AUTH_TOKEN", "GIT_TOKEN", "LITELLM_API_KEY"];

/**
 * agentEnv is the environment of the agent's processes: the harness's own
 * without the secrets, plus what a non-interactive agent needs (no pagers
 * or prompts, an identity for commits) unless the environment says
 * otherwise. Same defaults as lap's Go harness.
 */
export function agentEnv(env: NodeJS.ProcessEnv): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(env)) if (v !== undefined && !secretEnv.includes(k)) out[k] = v;
  const defaults: Record<string, string> = {
    PAGER: "cat",
    GIT_PAGER: "cat",
    GIT_TERMINAL_PROMPT: "0",
    GIT_AUTHOR_NAME: "lap agent",
    GIT_AUTHOR_EMAIL: "agent@lap.invalid",
    GIT_COMMITTER_NAME: "lap agent",
    GIT_COMMITTER_EMAIL: "agent@lap.invalid",
  };
  for (const [k, v] of Object.entries(defaults)) out[k] ??= v;
  return out;
}
