// Node `ws` 8 comparison server, same raw protocol as bun-server.js: join the room in
// ?room=…, each text message goes to every member of the room, sender included.
// Usage: node ws-server.js PORT
const { WebSocketServer } = require("ws");
const port = Number(process.argv[2] || 7700);
const rooms = new Map();
const wss = new WebSocketServer({ host: "127.0.0.1", port });
wss.on("connection", (ws, req) => {
  const room = new URL(req.url, "http://x").searchParams.get("room") || "lobby";
  if (!rooms.has(room)) rooms.set(room, new Set());
  const members = rooms.get(room);
  members.add(ws);
  ws.on("message", (data, isBinary) => {
    for (const m of members) m.send(data, { binary: isBinary });
  });
  ws.on("close", () => members.delete(ws));
});
console.log(`ws server on ws://127.0.0.1:${port}/ pid ${process.pid}`);
