// A small structured logger in the key=value shape of Go's slog text
// handler, so lapd's logs and this harness's read alike. It writes to
// stderr; stdout stays free.

export type Level = "DEBUG" | "INFO" | "WARN" | "ERROR";

export interface Logger {
  debug(msg: string, attrs?: Record<string, unknown>): void;
  info(msg: string, attrs?: Record<string, unknown>): void;
  warn(msg: string, attrs?: Record<string, unknown>): void;
  error(msg: string, attrs?: Record<string, unknown>): void;
}

const order: Record<Level, number> = { DEBUG: 0, INFO: 1, WARN: 2, ERROR: 3 };

function quote(v: unknown): string {
  const s = v instanceof Error ? v.message : typeof v === "string" ? v : JSON.stringify(v);
  return s !== undefined && /^[^\s"=]+$/.test(s) ? s : JSON.stringify(s ?? "");
}

/** newLogger logs records at min or above to write (stderr by default). */
export function newLogger(min: Level = "INFO", write: (line: string) => void = (l) => process.stderr.write(l)): Logger {
  const emit = (level: Level, msg: string, attrs?: Record<string, unknown>) => {
    if (order[level] < order[min]) return;
    let line = `time=${new Date().toISOString()} level=${level} msg=${quote(msg)}`;
    for (const [k, v] of Object.entries(attrs ?? {})) {
      if (v !== undefined) line += ` ${k}=${quote(v)}`;
    }
    write(line + "\n");
  };
  return {
    debug: (m, a) => emit("DEBUG", m, a),
    info: (m, a) => emit("INFO", m, a),
    warn: (m, a) => emit("WARN", m, a),
    error: (m, a) => emit("ERROR", m, a),
  };
}
