// Durable session records under $WORKSPACE/.lap/sessions: one JSON file per
// session, replaced atomically, so a harness restarted on the same
// workspace keeps every conversation and its SDK session id.
import { mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync, openSync, fsyncSync, closeSync } from "node:fs";
import { join } from "node:path";
import type { Message } from "./protocol.js";

/** SessionRecord is everything the harness keeps about one session. */
export interface SessionRecord {
  id: string;
  title: string;
  /** Appended to the agent's prompt for every turn of this session. */
  system: string;
  created: number;
  updated: number;
  /** The Claude Agent SDK's session id; turns after the first resume it. */
  sdkSessionId: string;
  /** The SDK's running cost total after the last turn (it is cumulative). */
  costTotal: number;
  /** The conversation as the protocol shows it, oldest first. */
  messages: Message[];
}

const idPattern = /^[0-9A-Za-z_-]{1,100}$/;

/** Store reads and writes session records in one directory. */
export class Store {
  constructor(private readonly dir: string) {
    mkdirSync(dir, { recursive: true });
  }

  /**
   * loadAll returns every record on disk. A record whose last turn was cut
   * off by a crash gets that turn closed as failed, never dropped.
   */
  loadAll(now = Date.now()): { records: SessionRecord[]; errors: string[] } {
    const records: SessionRecord[] = [];
    const errors: string[] = [];
    for (const name of readdirSync(this.dir)) {
      if (!name.endsWith(".json")) continue;
      const path = join(this.dir, name);
      try {
        const rec = JSON.parse(readFileSync(path, "utf8")) as SessionRecord;
        if (closeInterrupted(rec, now)) this.save(rec);
        records.push(rec);
      } catch (err) {
        errors.push(`read ${path}: ${(err as Error).message}`);
      }
    }
    records.sort((a, b) => a.created - b.created);
    return { records, errors };
  }

  /** save writes rec durably: a temp file, fsync, then rename over the old. */
  save(rec: SessionRecord): void {
    if (!idPattern.test(rec.id)) throw new Error(`save session ${rec.id}: bad id`);
    const path = join(this.dir, `${rec.id}.json`);
    const tmp = `${path}.tmp`;
    writeFileSync(tmp, JSON.stringify(rec));
    const fd = openSync(tmp, "r");
    try {
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, path);
  }

  /** remove deletes rec's file; a missing file is not an error. */
  remove(id: string): void {
    if (!idPattern.test(id)) return;
    rmSync(join(this.dir, `${id}.json`), { force: true });
  }
}

/**
 * closeInterrupted ends an assistant turn that never completed (the process
 * died mid-turn) as a HarnessError, and its unfinished tool calls as errors.
 * It reports whether it changed rec.
 */
export function closeInterrupted(rec: SessionRecord, now: number): boolean {
  let changed = false;
  for (const m of rec.messages) {
    if (m.info.role !== "assistant" || m.info.time.completed) continue;
    m.info.time.completed = now;
    m.info.error ??= { name: "HarnessError", message: "the harness stopped during this turn" };
    for (const p of m.parts) {
      if (p.state && (p.state.status === "pending" || p.state.status === "running")) {
        p.state.status = "error";
        p.state.error = "interrupted";
      }
    }
    changed = true;
  }
  return changed;
}
