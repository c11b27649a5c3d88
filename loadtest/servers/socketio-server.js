// Node Socket.IO 4.8 comparison server (the stack most Switchboard users come from).
// Event vocabulary (loadtest/src/proto/socketio.rs): join(room, ack) joins a room and
// acks; publish({room, data}) broadcasts message(data) to the room, sender included.
// Usage: node socketio-server.js PORT [REDIS_URL]
// With REDIS_URL, several of these share rooms through @socket.io/redis-adapter (the
// Redis scale-out the teams we replace run): a broadcast reaches the room's members on
// every server.
const { Server } = require("socket.io");
const port = Number(process.argv[2] || 7500);
const redisUrl = process.argv[3];
const io = new Server(port, { transports: ["websocket"], serveClient: false });
if (redisUrl) {
  const { createClient } = require("redis");
  const { createAdapter } = require("@socket.io/redis-adapter");
  const pub = createClient({ url: redisUrl });
  const sub = pub.duplicate();
  Promise.all([pub.connect(), sub.connect()]).then(() => {
    io.adapter(createAdapter(pub, sub));
    console.log(`redis adapter on ${redisUrl}`);
  });
}
io.on("connection", (socket) => {
  socket.on("join", (room, ack) => {
    socket.join(String(room));
    if (typeof ack === "function") ack({ ok: true });
  });
  socket.on("publish", (msg) => {
    if (msg && typeof msg.room === "string") io.to(msg.room).emit("message", msg.data);
  });
});
console.log(`socket.io server on ws://127.0.0.1:${port}/socket.io/ pid ${process.pid}`);
