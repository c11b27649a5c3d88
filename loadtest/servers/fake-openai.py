#!/usr/bin/env python3
"""A stand-in for an OpenAI-compatible chat-completions endpoint, for load runs (the
hosted API cannot be reached here): POST /v1/chat/completions answers after --delay-ms
with a whole completion (JSON) or, when the request asks for a stream, server-sent
events (one chunk per word). Intent requests (response_format json_object) get
{"intent":"other","confidence":0.5}. Threaded: every request waits on its own.

Usage: loadtest/servers/fake-openai.py PORT [--delay-ms 2000]
"""
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DELAY_S = 2.0


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        length = int(self.headers.get("content-length", "0"))
        try:
            req = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            req = {}
        if not self.path.endswith("/chat/completions"):
            return self.answer(404, {"error": {"message": "no such path", "type": "fake"}})
        time.sleep(DELAY_S)
        if (req.get("response_format") or {}).get("type") == "json_object":
            content = '{"intent":"other","confidence":0.5}'
        else:
            content = "Thank you, a member of our team will follow up shortly."
        if req.get("stream"):
            return self.stream(content)
        self.answer(200, {
            "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
            "model": req.get("model", "fake"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 20, "completion_tokens": 10, "total_tokens": 30},
        })

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def stream(self, content):
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("connection", "close")
        self.end_headers()
        for word in content.split(" "):
            chunk = {"choices": [{"index": 0, "delta": {"content": word + " "},
                                  "finish_reason": None}]}
            self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        self.wfile.write(b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n')
        self.wfile.write(b"data: [DONE]\n\n")
        self.close_connection = True


def main():
    global DELAY_S
    port = int(sys.argv[1])
    if "--delay-ms" in sys.argv:
        DELAY_S = int(sys.argv[sys.argv.index("--delay-ms") + 1]) / 1000.0
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
