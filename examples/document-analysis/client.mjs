// The user's side of the document-analysis flow (docs/AI.md "Backend-driven progress"):
// an unchanged socket.io-client connects with its token, shows each progress update of
// its analyses and the completion the backend emits, then exits.
//
//   npm ci && node client.mjs http://127.0.0.1:7400 "$TOKEN"
//
// With --json it prints one JSON object per line instead (what the repository's test
// reads): {"ready":true}, then {"progress":…} per update, then {"complete":…}.
import { io } from "socket.io-client";

const [url, token, ...flags] = process.argv.slice(2);
const json = flags.includes("--json");
const say = (what, text) => console.log(json ? JSON.stringify(what) : text);

const socket = io(url, { auth: { token }, transports: ["websocket"] });

socket.on("connect", () => say({ ready: true }, `connected as ${socket.id}`));
socket.on("connect_error", (e) => {
  say({ error: e.message }, `cannot connect: ${e.message}`);
  process.exit(1);
});

// Progress: a notification of kind "progress" whose key names the analysis. Updates
// with the same key are one notification that changes; a slow client gets the latest.
socket.on("notification:new", ({ notification, unread }) => {
  if (notification.kind !== "progress") return;
  const { percent, state, label } = notification.data;
  say(
    { progress: { key: notification.key, id: notification.id, percent, state, unread } },
    `${notification.key}: ${percent}% ${state}${label ? ` (${label})` : ""}`
  );
});

// Completion: the backend publishes on the user's personal channel with an event name.
socket.on("analysis_complete", (result) => {
  say({ complete: result }, `done: ${JSON.stringify(result)}`);
  socket.close();
});
