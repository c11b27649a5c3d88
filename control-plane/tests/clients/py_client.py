"""A Switchboard client written with Python `websockets` (a client no one here wrote).

Usage: py_client.py WS_URL TOKEN
Connects with the JSON subprotocol, authenticates, subscribes to room:py, publishes to
it, and checks the echo of its own publication. Exits 0 on success, 1 with a message on
any failure. Used by control-plane/tests/third_party_client.rs.
"""
import asyncio
import json
import sys

import websockets


async def main(url: str, token: str) -> None:
    async with websockets.connect(url, subprotocols=["switchboard.v1.json"], open_timeout=5) as ws:
        assert ws.subprotocol == "switchboard.v1.json", ws.subprotocol

        async def call(msg):
            await ws.send(json.dumps(msg))
            while True:
                reply = json.loads(await asyncio.wait_for(ws.recv(), 5))
                if reply.get("id") == msg["id"]:
                    return reply

        r = await call({"id": 1, "cmd": "connect", "token": token})
        assert "result" in r, r
        assert r["result"]["user"] == "py-user", r
        r = await call({"id": 2, "cmd": "subscribe", "channel": "room:py"})
        assert r["id"] == 2 and r["result"]["offset"] == 0 and len(r["result"]["epoch"]) == 16, r
        await ws.send(json.dumps({"id": 3, "cmd": "publish", "channel": "room:py", "data": {"text": "héllo", "n": [1, 2]}}))
        reply = pub = None
        while reply is None or pub is None:
            m = json.loads(await asyncio.wait_for(ws.recv(), 5))
            if m.get("id") == 3:
                reply = m
            elif m.get("push") == "publication":
                pub = m
        # The publish reply and the publication carry the same stream position.
        position = reply["result"]
        assert position["offset"] == 1 and len(position["epoch"]) == 16, reply
        assert pub == {"push": "publication", "channel": "room:py", "epoch": position["epoch"],
                       "offset": 1, "data": {"text": "héllo", "n": [1, 2]}}, pub
        r = await call({"id": 4, "cmd": "subscribe", "channel": "secret:x"})
        assert r["error"]["code"] == 103, r
        await ws.close()
        assert ws.close_code == 1000, ws.close_code


if __name__ == "__main__":
    try:
        asyncio.run(main(sys.argv[1], sys.argv[2]))
    except Exception as e:  # noqa: BLE001 - report any failure plainly
        print(f"py_client failed: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
    print("py_client ok")
