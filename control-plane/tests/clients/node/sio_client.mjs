// Scenarios run with the real socket.io-client from npm against a Switchboard server,
// for control-plane/tests/socketio.rs. Usage: node sio_client.mjs SCENARIO URL [ARGS...]
// Prints one JSON object (what happened) on stdout and exits 0; the Rust test checks it.
import net from "node:net";
import { io } from "socket.io-client";

const [scenario, url, ...args] = process.argv.slice(2);
const results = {};

function connect(opts = {}, nsp = "/") {
  return io(url + (nsp === "/" ? "" : nsp), {
    reconnection: false,
    timeout: 5000,
    ...opts,
  });
}

// Resolves with "connected" or the connect_error's message and data.
function outcome(socket) {
  return new Promise((resolve) => {
    socket.on("connect", () => resolve({ connected: true, id: socket.id }));
    socket.on("connect_error", (e) => resolve({ connected: false, message: e.message, data: e.data ?? null }));
  });
}

// A TCP proxy in front of the server that can go silent: `blackhole(ms)` stops
// forwarding on every connection it carries and on those opened within `ms`, without
// closing anything towards the server — as a network that drops off does, leaving
// the server with half-open connections. Resolves with the proxy's URL.
function silentProxy(target) {
  const { hostname, port } = new URL(target);
  let silentUntil = 0;
  const pairs = [];
  const server = net.createServer((client) => {
    const pair = { dead: Date.now() < silentUntil };
    const upstream = net.connect(+port, hostname);
    pairs.push(pair);
    client.on("data", (d) => pair.dead || upstream.write(d));
    upstream.on("data", (d) => pair.dead || client.write(d));
    client.on("close", () => pair.dead || upstream.destroy());
    upstream.on("close", () => pair.dead || client.destroy());
    client.on("error", () => {});
    upstream.on("error", () => {});
  });
  return new Promise((resolve) =>
    server.listen(0, "127.0.0.1", () => {
      server.unref();
      resolve({
        url: `http://127.0.0.1:${server.address().port}`,
        blackhole(ms) {
          silentUntil = Date.now() + ms;
          for (const p of pairs) p.dead = true;
        },
      });
    })
  );
}

async function run() {
  switch (scenario) {
    case "tokens": {
      const [valid, expired] = args;
      for (const [name, auth] of [
        ["valid", { token: valid }],
        ["expired", { token: expired }],
        ["missing", {}],
        ["garbage", { token: "not.a.jwt" }],
      ]) {
        const s = connect({ auth });
        results[name] = await outcome(s);
        s.close();
      }
      // The token may also come in the query string, as older servers accepted.
      const q = connect({ query: { token: valid } });
      results.query = await outcome(q);
      q.close();
      break;
    }
    case "acks": {
      const [token] = args;
      const s = connect({ auth: { token } });
      // Listening before the connect completes, as applications do: the connect
      // hook's emit arrives right behind the CONNECT reply.
      const welcome = new Promise((r) => s.once("welcome", r));
      results.connect = await outcome(s);
      results.welcome = await welcome;
      results.echo = await s.emitWithAck("echo", { a: 1 }, "two", [3]);
      try {
        await s.timeout(300).emitWithAck("slow", 1);
        results.timeout = "answered";
      } catch (e) {
        results.timeout = e.message;
      }
      results.failed = await s.emitWithAck("fail", 1);
      await s.emitWithAck("join", "room:hooks");
      const notified = new Promise((r) => s.once("notified", (...a) => r(a)));
      const roomEvent = new Promise((r) => s.once("room_event", (...a) => r(a)));
      const userEvent = new Promise((r) => s.once("user_event", (...a) => r(a)));
      results.notify_ack = await s.emitWithAck("notify", { x: 1 });
      results.notified = await notified;
      results.room_event = await roomEvent;
      results.user_event = await userEvent;
      s.close();
      break;
    }
    case "history": {
      // Pages through a channel's history with message:history and its cursor.
      const [token] = args;
      const s = connect({ auth: { token } });
      results.connect = await outcome(s);
      for (let n = 1; n <= 12; n++) {
        await s.emitWithAck("message:send", { channel: "room:pages", data: { n } });
      }
      results.offsets = [];
      let ask = { channel: "room:pages", reverse: true, limit: 5 };
      for (let i = 0; i < 10; i++) {
        const page = await s.emitWithAck("message:history", ask);
        for (const p of page.publications) results.offsets.push(p.offset);
        if (!page.cursor) break;
        ask = { channel: "room:pages", cursor: page.cursor, limit: 5 };
      }
      results.bad_limit = await s.emitWithAck("message:history", { channel: "room:pages", limit: 5000 });
      results.bad_cursor = await s.emitWithAck("message:history", { channel: "room:pages", cursor: "x" });
      // Edits and deletions in a namespace that allows them, seen as events.
      await s.emitWithAck("join", "notes:1");
      const edited = new Promise((r) => s.once("message:edited", r));
      const deleted = new Promise((r) => s.once("message:deleted", r));
      const sent = await s.emitWithAck("message:send", { channel: "notes:1", data: { text: "draft" } });
      results.edit = await s.emitWithAck("message:edit", { channel: "notes:1", offset: sent.offset, data: { text: "final" } });
      results.edited = await edited;
      results.delete = await s.emitWithAck("message:delete", { channel: "notes:1", offset: sent.offset });
      results.deleted = await deleted;
      const page = await s.emitWithAck("message:history", { channel: "notes:1" });
      results.after = page.publications;
      s.close();
      break;
    }
    case "binary": {
      const [token] = args;
      const s = connect({ auth: { token } });
      results.connect = await outcome(s);
      const bytes = Buffer.from([0, 1, 2, 250, 255]);
      // All of the ack's arguments (emitWithAck resolves with the first only).
      const [back, text] = await new Promise((r) => s.emit("echo", bytes, "text", (...a) => r(a)));
      results.bytes = Array.from(back);
      results.text = text;
      s.close();
      break;
    }
    case "rooms": {
      // Shares room:1 with a native client the Rust test drives: prints
      // {"step":"joined"} once joined, then waits for the native client's message.
      const [token, transport] = args;
      const s = connect({ auth: { token }, transports: [transport] });
      const received = new Promise((r) => s.on("message:new", (m) => r(m)));
      const typing = new Promise((r) => s.on("typing:update", (t) => r(t)));
      const progress = new Promise((r) => s.on("analysis_progress", (...a) => r(a)));
      if (process.env.SIO_DEBUG) s.onAny((e, ...a) => console.error("event", e, JSON.stringify(a)));
      results.connect = await outcome(s);
      results.join = await s.emitWithAck("join", { channel: "room:1" });
      results.join_denied = await s.emitWithAck("join", "secret:1");
      results.no_ack_join = s.emit("join", { channels: ["room:2", "room:3"] }) && true;
      console.log(JSON.stringify({ step: "joined" }));
      results.received = await received;
      results.typing = await typing;
      results.progress = await progress;
      results.sent = await s.emitWithAck("message:send", { channel: "room:1", data: { text: "from socket.io" } });
      results.history = await s.emitWithAck("message:history", { channel: "room:1", limit: 10 });
      s.close();
      break;
    }
    case "listen": {
      // Joins CHANNEL, prints {"step":"joined"}, collects COUNT `message:new` events
      // (published elsewhere: another node), then sends one and reports.
      const [token, channel, count] = args;
      const s = connect({ auth: { token }, transports: ["websocket"] });
      const got = [];
      const done = new Promise((r) =>
        s.on("message:new", (m) => {
          got.push(m);
          if (got.length >= +count) r();
        })
      );
      results.connect = await outcome(s);
      results.join = await s.emitWithAck("join", { channel });
      console.log(JSON.stringify({ step: "joined" }));
      await done;
      results.received = got;
      results.sent = await s.emitWithAck("message:send", { channel, data: { text: "from socket.io" } });
      s.close();
      break;
    }
    case "switch": {
      // Connection state recovery on another node: join CHANNEL on URL (this node),
      // receive BEFORE messages ({"step":"joined"} first), close ({"step":"dropped"}),
      // wait for {"go"} on stdin while the Rust test publishes, then reconnect to
      // OTHER (as a load balancer would send it elsewhere) with the session's pid and
      // offset, and receive up to TOTAL.
      const [token, channel, before, total, other] = args;
      const got = [];
      let waiter = null;
      const onMsg = (m) => {
        got.push({ offset: m.offset, data: m.data });
        if (waiter && got.length >= waiter.n) {
          const w = waiter;
          waiter = null;
          w.resolve();
        }
      };
      const until = (n) => (got.length >= n ? Promise.resolve() : new Promise((resolve) => (waiter = { n, resolve })));
      const step = (name) => console.log(JSON.stringify({ step: name }));
      const s = connect({ auth: { token }, transports: ["websocket"] });
      s.on("message:new", onMsg);
      results.connect = await outcome(s);
      await s.emitWithAck("join", { channel });
      step("joined");
      await until(+before);
      const pid = s._pid;
      const offset = s._lastOffset;
      s.close();
      step("dropped");
      await new Promise((r) => process.stdin.once("data", r));
      const s2 = io(other, { auth: { token }, transports: ["websocket"], reconnection: false, autoConnect: false });
      s2._pid = pid;
      s2._lastOffset = offset;
      s2.on("message:new", onMsg);
      s2.connect();
      results.connect2 = await outcome(s2);
      results.recovered = s2.recovered;
      results.same_pid = s2._pid === pid;
      await until(+total);
      results.got = got;
      s2.close();
      process.stdin.pause();
      break;
    }
    case "revoked": {
      // Prints {"step":"connected"}; the Rust test revokes the user; the client must
      // learn it is disconnected for good ("io server disconnect": no reconnecting).
      const [token, transport] = args;
      const s = io(url, { auth: { token }, transports: [transport], reconnectionDelay: 50 });
      results.connect = await outcome(s);
      const gone = new Promise((r) => s.on("disconnect", (reason) => r(reason)));
      console.log(JSON.stringify({ step: "connected" }));
      results.reason = await gone;
      await new Promise((r) => setTimeout(r, 300));
      results.reconnected = s.connected;
      s.close();
      break;
    }
    case "recovery": {
      // Connection state recovery, driven by the Rust test (which publishes): join two
      // rooms ({"step":"joined"}), receive BEFORE messages, lose the connection
      // ({"step":"dropped"}) — the engine closed under the client, or the server
      // restarted — reconnect ({"step":"reconnected"}) and receive everything else.
      const [token, transport, total, drop] = args;
      const [before, how] = drop.split(":");
      // "client": the client closes its transport (the server sees it go);
      // "server": the server goes away (the Rust test restarts it);
      // "halfopen": the network goes silent (the server still holds the session).
      const proxy = how === "halfopen" ? await silentProxy(url) : null;
      const s = io(proxy ? proxy.url : url, {
        auth: { token },
        transports: [transport],
        reconnectionDelay: 1000,
        reconnectionDelayMax: 1000,
        randomizationFactor: 0,
        timeout: 5000,
      });
      const got = [];
      let waiter = null;
      s.on("message:new", (m, offset) => {
        got.push({ channel: m.channel, offset: m.offset, data: m.data, arg: offset });
        if (waiter && got.length >= waiter.n) {
          const w = waiter;
          waiter = null;
          w.resolve();
        }
      });
      const until = (n) => (got.length >= n ? Promise.resolve() : new Promise((resolve) => (waiter = { n, resolve })));
      const step = (name) => console.log(JSON.stringify({ step: name }));
      results.connect = await outcome(s);
      await s.emitWithAck("join", { channel: "room:a" });
      await s.emitWithAck("join", { channel: "room:b" });
      step("joined");
      await until(+before);
      const again = new Promise((r) => s.io.once("reconnect", r));
      if (how === "halfopen") proxy.blackhole(500);
      if (how !== "server") s.io.engine.close();
      step("dropped");
      await again;
      if (!s.connected) await new Promise((r) => s.once("connect", r));
      results.recovered = s.recovered;
      step("reconnected");
      await until(+total);
      results.got = got;
      s.close();
      break;
    }
    case "polling": {
      const [token] = args;
      const s = connect({ auth: { token }, transports: ["polling"] });
      results.connect = await outcome(s);
      results.transport = s.io.engine.transport.name;
      const acks = [];
      for (let i = 0; i < 20; i++) acks.push(s.emitWithAck("echo", i));
      results.echoes = await Promise.all(acks);
      // Idle past a ping interval: the session survives on server pings.
      await new Promise((r) => setTimeout(r, 700));
      results.after_idle = await s.emitWithAck("echo", "still here");
      s.close();
      break;
    }
    case "upgrade": {
      const [token] = args;
      const s = connect({ auth: { token } });
      const upgraded = new Promise((r) =>
        s.io.once("open", () => {
          results.first_transport = s.io.engine.transport.name;
          s.io.engine.once("upgrade", r);
        })
      );
      results.connect = await outcome(s);
      await upgraded;
      results.transport = s.io.engine.transport.name;
      results.echo = await s.emitWithAck("echo", "after upgrade");
      s.close();
      break;
    }
    case "refused": {
      const s = connect({ auth: { role: "blocked" } }, "/public");
      results.blocked = await outcome(s);
      s.close();
      const n = connect({}, "/nowhere");
      results.unknown_namespace = await outcome(n);
      n.close();
      break;
    }
    default:
      throw new Error(`unknown scenario ${scenario}`);
  }
}

const timer = setTimeout(() => {
  console.log(JSON.stringify({ ...results, error: "scenario timed out" }));
  process.exit(1);
}, +(process.env.SIO_SCENARIO_MS || 15000));
run()
  .then(() => {
    clearTimeout(timer);
    console.log(JSON.stringify(results));
    process.exit(0);
  })
  .catch((e) => {
    console.log(JSON.stringify({ ...results, error: String(e && e.stack || e) }));
    process.exit(1);
  });
