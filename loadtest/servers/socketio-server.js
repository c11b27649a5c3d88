// Node Socket.IO 4.8 comparison server (the stack most Switchboard users come from).
// Event vocabulary (loadtest/src/proto/socketio.rs): join(room, ack) joins a room and
// acks; publish({room, data}) broadcasts message(data) to the room, sender included.
// Usage: node socketio-server.js PORT
const { Server } = require("socket.io");
const port = Number(process.argv[2] || 7500);
const io = new Server(port, { transports: ["websocket"], serveClient: false });
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
