// Carrying a conversation into a harness that has never seen it.
import { messageText, type Message } from "./protocol.js";

/**
 * historyPrompt carries a conversation restored on a fresh workspace into
 * the SDK's first turn. Neither the SDK nor opencode can import a foreign
 * transcript, so the earlier turns' text goes in front of the new message.
 */
export function historyPrompt(history: Message[], text: string): string {
  const turns = history
    .map((m) => ({ role: m.info.role, text: messageText(m).trim() }))
    .filter((t) => t.text && (t.role === "user" || t.role === "assistant"))
    .map((t) => `<${t.role}>\n${t.text}\n</${t.role}>`);
  if (turns.length === 0) return text;
  return (
    "<conversation_history>\n" +
    "This session continues an earlier conversation whose sandbox was replaced. " +
    "The earlier turns were:\n\n" +
    turns.join("\n\n") +
    "\n</conversation_history>\n\n" +
    text
  );
}

