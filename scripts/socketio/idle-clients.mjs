// Holds N idle socket.io-client sessions (one transport) against URL, prints "ready N"
// once all are connected, then stays until killed. For scripts/socketio/idle-cost.sh.
// Usage: node idle-clients.mjs URL N websocket|polling   (needs socket.io-client: run
// from control-plane/tests/clients/node, where .ci/run installs it)
import { createRequire } from "node:module";
const require = createRequire(process.cwd() + "/");
const { io } = require("socket.io-client");

const [url, n, transport] = process.argv.slice(2);
let connected = 0;
// 400 connections a second: under the server's default per-address connection rate.
for (let i = 0; i < Number(n); i++) setTimeout(() => open(), i * 2.5);
function open() {
  const s = io(url, { transports: [transport], reconnection: false, forceNew: true });
  s.on("connect", () => {
    connected += 1;
    if (connected === Number(n)) console.log(`ready ${connected}`);
  });
  s.on("connect_error", (e) => {
    console.error("connect_error", e.message);
    process.exit(1);
  });
}
setInterval(() => {}, 1 << 30);
