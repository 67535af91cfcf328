// The event bus behind GET /event: every session's events go to every
// subscriber, as opencode's server does.
import type { ServerResponse } from "node:http";
import { EventServerConnected, EventServerHeartbeat, type Event } from "./protocol.js";

/** Bus fans events out to the attached SSE streams. */
export class Bus {
  private readonly subscribers = new Set<(e: Event) => void>();

  /** publish sends e to every subscriber attached now. */
  publish(e: Event): void {
    for (const s of this.subscribers) s(e);
  }

  /** subscribe attaches fn until the returned function is called. */
  subscribe(fn: (e: Event) => void): () => void {
    this.subscribers.add(fn);
    return () => this.subscribers.delete(fn);
  }

  /** size is the number of attached subscribers. */
  get size(): number {
    return this.subscribers.size;
  }
}

/**
 * serveEvents streams the bus to res as SSE until the client goes away:
 * server.connected first, so the subscriber knows it is attached before it
 * starts a turn, then every event, and a heartbeat every heartbeatMs.
 */
export function serveEvents(bus: Bus, res: ServerResponse, heartbeatMs = 10_000): void {
  res.writeHead(200, {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    Connection: "keep-alive",
    "X-Accel-Buffering": "no",
  });
  const send = (e: Event) => {
    res.write(`data: ${JSON.stringify(e)}\n\n`);
  };
  const unsubscribe = bus.subscribe(send);
  send({ type: EventServerConnected, properties: {} });
  const beat = setInterval(() => send({ type: EventServerHeartbeat, properties: {} }), heartbeatMs);
  const close = () => {
    clearInterval(beat);
    unsubscribe();
  };
  res.on("close", close);
  res.on("error", close);
}
