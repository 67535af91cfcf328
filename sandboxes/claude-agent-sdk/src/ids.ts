// UUIDv7 identifiers for the harness's own records: 48 bits of Unix
// milliseconds, then randomness, so ids sort by creation time.
import { randomBytes } from "node:crypto";

let lastMs = 0;
let seq = 0;

/** newId returns a fresh UUIDv7 string. */
export function newId(now: number = Date.now()): string {
  // A counter in the 12 rand_a bits keeps ids made in the same millisecond
  // ordered, as RFC 9562 §6.2 method 1 allows.
  if (now <= lastMs) {
    now = lastMs;
    seq = (seq + 1) & 0xfff;
    if (seq === 0) now = ++lastMs;
  } else {
    seq = 0;
  }
  lastMs = now;
  const b = randomBytes(16);
  b.writeUIntBE(now, 0, 6);
  b[6] = 0x70 | (seq >> 8);
  b[7] = seq & 0xff;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = b.toString("hex");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}
