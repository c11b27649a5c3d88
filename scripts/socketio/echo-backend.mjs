// The Socket.IO conformance suite's echo application, as a backend that Switchboard's
// hooks call (docs/SOCKETIO.md, "Backend hooks"): nothing in the server knows it.
//   on connect              -> emit "auth" with the CONNECT payload
//   "message"               -> emit "message-back" with the same arguments (binary too)
//   "message-with-ack"      -> acknowledge with the same arguments
// Usage: node echo-backend.mjs PORT   (prints "listening PORT" when ready)
import http from "node:http";

const port = Number(process.argv[2] || 0);

function answer(call) {
  if (call.type === "connect") {
    return { emit: [{ event: "auth", args: [call.auth ?? {}] }] };
  }
  if (call.event === "message") {
    return { emit: [{ event: "message-back", args: call.args, attachments: call.attachments }] };
  }
  if (call.event === "message-with-ack") {
    return { ack: call.args, attachments: call.attachments };
  }
  return {};
}

const server = http.createServer((req, res) => {
  let body = "";
  req.setEncoding("utf8");
  req.on("data", (chunk) => (body += chunk));
  req.on("end", () => {
    let reply;
    try {
      reply = JSON.stringify(answer(JSON.parse(body)));
    } catch (e) {
      res.writeHead(400, { "content-type": "text/plain" });
      res.end(String(e));
      return;
    }
    res.writeHead(200, { "content-type": "application/json" });
    res.end(reply);
  });
});
server.keepAliveTimeout = 60_000;
server.listen(port, "127.0.0.1", () => {
  console.log(`listening ${server.address().port}`);
});
