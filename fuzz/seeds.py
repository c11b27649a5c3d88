#!/usr/bin/env python3
"""Writes the checked-in seed corpus, fuzz/seeds/<target>/<name>, one file per input.

Seeds are well-formed inputs of each target's input format (see the doc comment at the
top of each fuzz_targets/*.rs): the fuzzer starts from valid requests, frames, commands,
tokens, config files and command sequences and mutates them, which reaches the code
behind the first validity checks far sooner than random bytes. Re-run after changing a
target's input format: `python3 fuzz/seeds.py`.
"""
import base64, hashlib, hmac, json, os, struct, pathlib

ROOT = pathlib.Path(__file__).resolve().parent
SEEDS = ROOT / "seeds"


def mp(v):
    """A minimal MessagePack encoder (dict, list, str, bytes, int, bool, None, float)."""
    if v is None:
        return b"\xc0"
    if v is True:
        return b"\xc3"
    if v is False:
        return b"\xc2"
    if isinstance(v, int):
        if 0 <= v < 128:
            return bytes([v])
        if -32 <= v < 0:
            return struct.pack("b", v)
        if 0 <= v < 2**32:
            return b"\xce" + struct.pack(">I", v)
        if v >= 0:
            return b"\xcf" + struct.pack(">Q", v)
        return b"\xd3" + struct.pack(">q", v)
    if isinstance(v, float):
        return b"\xcb" + struct.pack(">d", v)
    if isinstance(v, str):
        b = v.encode()
        if len(b) < 32:
            return bytes([0xA0 | len(b)]) + b
        return b"\xd9" + bytes([len(b)]) + b if len(b) < 256 else b"\xda" + struct.pack(">H", len(b)) + b
    if isinstance(v, bytes):
        return b"\xc4" + bytes([len(v)]) + v
    if isinstance(v, list):
        head = bytes([0x90 | len(v)]) if len(v) < 16 else b"\xdc" + struct.pack(">H", len(v))
        return head + b"".join(mp(x) for x in v)
    if isinstance(v, dict):
        head = bytes([0x80 | len(v)]) if len(v) < 16 else b"\xde" + struct.pack(">H", len(v))
        return head + b"".join(mp(k) + mp(x) for k, x in v.items())
    raise TypeError(v)


def js(v):
    return json.dumps(v, separators=(",", ":")).encode()


def masked(opcode, payload, fin=True, mask=b"\x37\xfa\x21\x3d"):
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack(">H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack(">Q", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


POS = {"epoch": "9c9e81e04057ffdb", "offset": 42}
COMMANDS = [
    {"id": 1, "cmd": "connect", "token": "u1"},
    {"id": 2, "cmd": "subscribe", "channel": "room:1"},
    {"id": 3, "cmd": "subscribe", "channel": "room:1", "since": POS},
    {"id": 4, "cmd": "publish", "channel": "room:1", "data": {"text": "hi", "n": [1, 2.5, None, True]}},
    {"id": 5, "cmd": "publish", "channel": "room:1", "data": "x", "meta": {"k": 1}, "key": "m-1"},
    {"id": 6, "cmd": "history", "channel": "room:1", "since": 0, "limit": 10, "reverse": True},
    {"id": 7, "cmd": "send", "user": "u2", "data": {"text": "dm"}, "key": "s-1"},
    {"id": 8, "cmd": "presence", "channel": "room:1"},
    {"id": 9, "cmd": "typing", "channel": "room:1", "typing": True},
    {"id": 10, "cmd": "receipt", "channel": "room:1", "delivered": 3, "read": 2},
    {"id": 11, "cmd": "schedule", "channel": "room:1", "data": "later", "at": 1795337640558},
    {"id": 12, "cmd": "ack", "offset": 5},
    {"id": 13, "cmd": "unsubscribe", "channel": "room:1"},
    {"id": 14, "cmd": "notifications", "limit": 5},
    {"id": 15, "cmd": "call", "user": "u2", "data": {"sdp": "v=0"}},
    {"id": 16, "cmd": "call_signal", "call": "c1", "data": {"ice": "candidate"}},
    {"id": 17, "cmd": "status", "status": "away"},
    {"id": 18, "cmd": "ping"},
]


def write(target, name, data):
    d = SEEDS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


def handshake():
    base = (
        "GET /ws?format=json HTTP/1.1\r\nHost: localhost:8080\r\nUpgrade: websocket\r\n"
        "Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n"
    )
    write("handshake", "plain", (base + "\r\n").encode())
    write("handshake", "msgpack_bearer", (base + "Sec-WebSocket-Protocol: switchboard.v1.msgpack\r\n"
                                          "Authorization: Bearer eyJhbGciOi.x.y\r\n\r\n").encode())
    write("handshake", "origin_json", (base + "Origin: https://app.example\r\n"
                                       "Sec-WebSocket-Protocol: chat, switchboard.v1.json\r\n\r\n").encode())
    write("handshake", "http10", b"GET / HTTP/1.0\r\n\r\n")
    write("handshake", "not_websocket", b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")


def frames():
    # First byte: read chunk size (& 0x3f; 0 = all at once).
    text = masked(0x1, js(COMMANDS[3]))
    write("frames", "text", b"\x00" + text)
    write("frames", "text_bytewise", b"\x01" + text)
    write("frames", "binary", b"\x07" + masked(0x2, mp(COMMANDS[3])))
    frag = masked(0x1, b"hel", fin=False) + masked(0x9, b"ping") + masked(0x0, b"lo", fin=True)
    write("frames", "fragmented_with_ping", b"\x05" + frag)
    write("frames", "close", b"\x00" + masked(0x8, struct.pack(">H", 1000) + b"bye"))
    write("frames", "medium", b"\x00" + masked(0x2, bytes(range(256)) * 2))
    write("frames", "utf8_split", b"\x00" + masked(0x1, "é€😀".encode(), fin=False) + masked(0x0, "ok".encode()))


def envelope():
    # First byte parity: even MessagePack, odd JSON.
    for c in COMMANDS:
        write("envelope", f"json_{c['cmd']}", b"\x01" + js(c))
        write("envelope", f"msgpack_{c['cmd']}", b"\x00" + mp(c))
    # A publish whose data is an extension type (fixext1), which JSON cannot carry.
    pub = mp({"id": 1, "cmd": "publish", "channel": "a:b"})
    pub = bytes([pub[0] + 1]) + pub[1:] + mp("data") + b"\xd4\x05\x61"
    write("envelope", "msgpack_ext", b"\x00" + pub)
    write("envelope", "msgpack_bin", b"\x00" + mp({"id": 1, "cmd": "publish", "channel": "a:b", "data": b"\x00\xff"}))
    write("envelope", "json_deep", b"\x01" + b'{"id":1,"cmd":"publish","channel":"a:b","data":' + b"[" * 40 + b"]" * 40 + b"}")
    write("envelope", "msgpack_deep", b"\x00" + b"\x91" * 40 + b"\xc0")
    write("envelope", "json_server_publication", b"\x01" + js({"push": "publication", "channel": "room:1", **POS, "from": "u1", "data": {"a": 1}}))
    write("envelope", "json_server_result", b"\x01" + js({"id": 7, "result": POS}))
    write("envelope", "json_server_error", b"\x01" + js({"id": 7, "error": {"code": 103, "message": "no"}}))


SECRET = b"fuzzing-secret-0123456789"


def jwt():
    # Mode byte % 3: 0 raw token text; 1 claims JSON, signed with the right key and an
    # HS256 header; 2 header JSON, 0xff, claims JSON, signed with the right key.
    good = {"sub": "u1", "iss": "https://issuer.example", "aud": "switchboard", "exp": 4102444800}
    write("jwt", "claims_good", b"\x01" + js(good))
    write("jwt", "claims_aud_array", b"\x01" + js({**good, "aud": ["other", "switchboard"]}))
    write("jwt", "claims_no_iss", b"\x01" + js({k: v for k, v in good.items() if k != "iss"}))
    write("jwt", "claims_expired", b"\x01" + js({**good, "exp": 1000}))
    write("jwt", "claims_extra", b"\x01" + js({**good, "nbf": 1000, "iat": 1000, "channels": ["room:*"], "role": "agent"}))
    write("jwt", "header_none", b"\x02" + js({"alg": "none"}) + b"\xff" + js(good))
    write("jwt", "header_hs512", b"\x02" + js({"alg": "HS512", "typ": "JWT"}) + b"\xff" + js(good))
    write("jwt", "header_kid", b"\x02" + js({"alg": "HS256", "kid": "k1"}) + b"\xff" + js(good))

    def b64(b):
        return base64.urlsafe_b64encode(b).rstrip(b"=")

    signing = b64(js({"alg": "HS256", "typ": "JWT"})) + b"." + b64(js(good))
    token = signing + b"." + b64(hmac.new(SECRET, signing, hashlib.sha256).digest())
    write("jwt", "raw_token", b"\x00" + token)
    write("jwt", "raw_garbage", b"\x00" + b"a.b.c")


def config():
    # TOML text, then NUL, then NAME=VALUE environment lines.
    for p in sorted((ROOT.parent / "tuning").glob("*.toml")):
        write("config", f"tuning_{p.stem}", p.read_bytes())
    write("config", "empty", b"")
    write("config", "env_overrides", b"\x00SWITCHBOARD_ENGINE__MAX_CONNECTIONS=5000\nSWITCHBOARD_AUTH__ISSUER=x\n")
    write("config", "namespace", b'[namespaces.ledger]\ndurability = "sync"\nhistory_size = 100\n\n[auth]\nissuer = "i"\naudience = "a"\n')


def shard():
    # ops: 0 f open (f&1 JSON); 1 c lo hi bytes text frame; 2 … binary; 3 c n raw bytes;
    # 4 n ticks; 5 c toggle reading; 6 c EOF; 7 c close frame; 8 s wall clock step.
    def text(c, body):
        return bytes([1, c, len(body) & 0xFF, len(body) >> 8]) + body

    def binary(c, body):
        return bytes([2, c, len(body) & 0xFF, len(body) >> 8]) + body

    chat = b"\x00\x01" + b"\x00\x01" + b"\x04\x02"
    chat += text(0, js(COMMANDS[1])) + text(1, js(COMMANDS[1])) + b"\x04\x01"
    chat += text(0, js(COMMANDS[3])) + text(1, js(COMMANDS[5])) + b"\x04\x03"
    chat += text(1, js(COMMANDS[7])) + text(0, js(COMMANDS[8])) + b"\x06\x00\x07\x01\x04\x10"
    write("shard", "json_chat", chat)
    mpk = b"\x00\x00\x00\x00\x04\x02" + binary(0, mp(COMMANDS[1])) + binary(1, mp(COMMANDS[1]))
    mpk += binary(1, mp(COMMANDS[4])) + b"\x05\x00" + binary(1, mp(COMMANDS[4])) * 8 + b"\x04\x20"
    write("shard", "msgpack_slow_reader", mpk)
    mixed = b"\x00\x01\x00\x00\x04\x02" + text(0, js(COMMANDS[1])) + binary(1, mp(COMMANDS[1]))
    mixed += binary(1, mp(COMMANDS[4])) + text(0, js(COMMANDS[3])) + b"\x04\x02"
    mixed += text(0, js(COMMANDS[5])) + binary(1, mp(COMMANDS[5])) + b"\x04\x02"
    write("shard", "mixed_formats", mixed)
    write("shard", "raw_garbage", b"\x00\x01\x04\x01\x03\x00\x08" + b"\x81\xfe\xff\xff\x00\x00\x00\x00")
    pipeline = b"\x00\x01" + b"".join(text(0, js({"id": i, "cmd": "ping"})) for i in range(40)) + b"\x04\x05"
    write("shard", "pipelined_pings", pipeline)
    early = b"\x00\x01" + text(0, js(COMMANDS[1])) + text(0, js(COMMANDS[3])) + b"\x04\x02"
    write("shard", "commands_before_connect_reply", early)
    hist = {"id": 30, "cmd": "history", "channel": "room:1", "since": 0, "limit": 10}
    jumps = b"\x00\x01\x04\x02" + text(0, js(COMMANDS[1])) + text(0, js(COMMANDS[3]))
    jumps += b"\x08\x06" + text(0, js(COMMANDS[4])) + b"\x04\x05" + b"\x08\xf4" + text(0, js(hist))
    jumps += text(0, js(COMMANDS[10])) + b"\x04\x40"
    write("shard", "wall_clock_steps", jumps)


def socketio():
    """Raw bytes: an HTTP head, a polling body, an Engine.IO or Socket.IO packet's text."""
    w = lambda n, d: write("socketio", n, d if isinstance(d, bytes) else d.encode())
    w("http_poll", "GET /socket.io/?EIO=4&transport=polling&sid=AAEAAAABAAAAAmcGw5oyt5fA HTTP/1.1\r\nHost: x\r\nOrigin: https://a.example\r\n\r\n")
    w("http_post", "POST /socket.io/?EIO=4&transport=polling&sid=x&token=a.b.c HTTP/1.1\r\nContent-Length: 5\r\n\r\n4hi")
    w("http_ws", "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
    w("http_eio3", "GET /socket.io/?EIO=3&transport=polling HTTP/1.1\r\n\r\n")
    w("payload", b"4hello\x1e2\x1ebAQIDBA==\x1e40\x1e42[\"message\",1]")
    w("eio_probe", "2probe")
    w("connect", '40{"token":"123"}')
    w("connect_ns", "40/custom,")
    w("event", '42["message",1,"2",{"3":[true]}]')
    w("event_ack", '42456["message-with-ack",1,"2",{"3":[false]}]')
    w("binary_event", '452-["message",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]')
    w("binary_ack", '462-789[{"_placeholder":true,"num":0}]')
    w("join", '42["join",{"channels":["room:1","room:2"]}]')
    w("send", '421["message:send",{"channel":"room:1","data":{"text":"hi"},"key":"k1"}]')
    w("dm", '422["message:send",{"to":"bob","data":"hi"}]')
    w("typing", '42["typing:start","room:1"]')
    w("read", '423["message:read",{"channel":"room:1","offset":4}]')
    w("call", '424["call:initiate",{"user":"bob","media":"video"}]')
    w("notification", '425["notification:readAll"]')


def eio_shard():
    """Operations on a shard serving Socket.IO clients (see fuzz_targets/eio_shard.rs)."""
    def text(c, t):
        b = t.encode()
        return bytes([4, c, len(b)]) + b
    def post(s, t):
        b = t.encode()
        return bytes([2, s, len(b)]) + b
    flow = b"\x00" + b"\x06\x02" + b"\x01\x00" + post(0, "40") + b"\x06\x01"
    flow += post(0, '42["join","room:1"]') + b"\x03\x01" + text(3, "2probe") + text(3, "5")
    flow += b"\x03\x00" + text(4, "40") + text(4, '421["message:send",{"channel":"room:1","data":1}]')
    flow += text(4, '42["custom",1]') + text(4, "40/private,") + b"\x06\x1e"
    write("eio_shard", "poll_upgrade_chat", flow)
    binary = b"\x03\x00" + text(0, "40") + text(0, '451-["up",{"_placeholder":true,"num":0}]')
    binary += bytes([5, 0, 3, 1, 2, 3]) + b"\x06\x05"
    write("eio_shard", "binary_attachment", binary)
    echo = b"\x03\x40" + text(0, "4hello") + bytes([5, 0, 2, 9, 9]) + b"\x06\x10"
    write("eio_shard", "engineio_echo", echo)
    bad = b"\x00" + post(0, "9bad") + b"\x01\x00\x01\x00" + b"\x01\xff" + b"\x03\x00" + text(0, "4abc")
    bad += bytes([8, 0, 4]) + b"\x81\xff\x00\x01" + b"\x06\x1f"
    write("eio_shard", "bad_input", bad)


def chat_wire():
    """A model endpoint's answers (see fuzz_targets/chat_wire.rs): the first byte is the
    size of the pieces a stream arrives in."""
    stream = (
        b'data: {"choices":[{"delta":{"content":"Hola"}}]}\n\n'
        b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}\n\n'
        b"data: [DONE]\n\n"
    )
    write("chat_wire", "stream", b"\x07" + stream)
    whole = (
        b'{"choices":[{"message":{"role":"assistant","content":"hi"},'
        b'"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1}}'
    )
    write("chat_wire", "whole", b"\x01" + whole)
    write("chat_wire", "error", b"\xc9" + b'{"error":{"message":"Rate limit reached"}}')


if __name__ == "__main__":
    handshake()
    frames()
    envelope()
    jwt()
    config()
    shard()
    socketio()
    eio_shard()
    chat_wire()
    for d in sorted(SEEDS.iterdir()):
        print(f"{d.name}: {len(list(d.iterdir()))} seeds")
