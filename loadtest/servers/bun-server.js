// Bun built-in WebSocket pub/sub comparison server (uWebSockets underneath).
// Raw protocol (loadtest/src/proto/raw.rs): a client joins the room in ?room=…, every
// text message it sends is published to that room, sender included.
// Usage: bun bun-server.js PORT
const port = Number(process.argv[2] || 7600);
const server = Bun.serve({
  port,
  hostname: "127.0.0.1",
  fetch(req, srv) {
    const room = new URL(req.url).searchParams.get("room") || "lobby";
    if (srv.upgrade(req, { data: { room } })) return;
    return new Response("websocket only", { status: 426 });
  },
  websocket: {
    open(ws) {
      ws.subscribe(ws.data.room);
    },
    message(ws, message) {
      server.publish(ws.data.room, message);
    },
  },
});
console.log(`bun pub/sub server on ws://127.0.0.1:${port}/ pid ${process.pid}`);
