import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Store, type SessionRecord } from "./store.js";

function rec(id: string): SessionRecord {
  return {
    id,
    title: "t",
    system: "",
    created: 1,
    updated: 1,
    sdkSessionId: id,
    costTotal: 0,
    messages: [
      { info: { id: "u", role: "user", time: { created: 1 }, tokens: { input: 0, output: 0 }, cost: 0 }, parts: [{ type: "text", text: "hi" }] },
      {
        info: { id: "a", role: "assistant", time: { created: 2 }, tokens: { input: 0, output: 0 }, cost: 0 },
        parts: [{ type: "tool", tool: "bash", callID: "c", state: { status: "running", input: {} } }],
      },
    ],
  };
}

test("records survive a reload; a turn cut off by a crash is closed as failed", () => {
  const dir = mkdtempSync(join(tmpdir(), "store-"));
  const s = new Store(dir);
  s.save(rec("one"));
  writeFileSync(join(dir, "broken.json"), "{not json");
  const { records, errors } = new Store(dir).loadAll(99);
  assert.equal(records.length, 1);
  assert.equal(errors.length, 1);
  const a = records[0].messages[1];
  assert.equal(a.info.time.completed, 99);
  assert.equal(a.info.error?.name, "HarnessError");
  assert.equal(a.parts[0].state?.status, "error");
  // The repair is written back, so a second load sees a closed turn.
  assert.equal(new Store(dir).loadAll(123).records[0].messages[1].info.time.completed, 99);
  s.remove("one");
  assert.equal(new Store(dir).loadAll().records.length, 0);
});

test("save refuses ids that could escape the directory", () => {
  const s = new Store(mkdtempSync(join(tmpdir(), "store-")));
  assert.throws(() => s.save(rec("../evil")));
});
