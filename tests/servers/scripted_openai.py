"""A stand-in for an OpenAI-compatible model server (Chat Completions, streamed or not),
for the framework recipes' tests (tests/test_frameworks.py): its answers are scripted by
the conversation it is sent, so that a retried task's model asks for the same tool calls
in the same order as the first attempt's.

    scripted_openai.py PORT CALLS COUNT_FILE

To a request whose messages hold n tool results (role "tool"), n < CALLS, it answers a
call of the tool offered whose name ends in "bump", with {"i": n + 1}; to one with CALLS,
the text "done N". Each request is a line `model N` in COUNT_FILE. It says `listening`
on stdout once it does.
"""

import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT, CALLS, COUNT_FILE = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]


def tool_name(body: dict) -> str:
    for tool in body.get("tools") or []:
        name = (tool.get("function") or {}).get("name") or tool.get("name") or ""
        if name.endswith("bump"):
            return name
    raise ValueError(f"no bump tool offered: {body.get('tools')!r:.300}")


def reply(body: dict) -> dict:
    """The assistant's message: a tool call, or the last answer."""
    done = sum(1 for m in body.get("messages") or [] if m.get("role") == "tool")
    with open(COUNT_FILE, "a") as f:
        f.write(f"model {done}\n")
    if done < CALLS:
        return {"role": "assistant", "content": None, "tool_calls": [{
            "id": f"call_{done + 1}", "type": "function",
            "function": {"name": tool_name(body), "arguments": json.dumps({"i": done + 1})}}]}
    return {"role": "assistant", "content": f"done {done}"}


USAGE = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        if not self.path.endswith("/chat/completions"):
            self._send(404, {"error": {"message": f"no {self.path} here"}})
            return
        message = reply(body)
        finish = "tool_calls" if message.get("tool_calls") else "stop"
        head = {"id": "chatcmpl-1", "created": int(time.time()), "model": body.get("model")}
        if not body.get("stream"):
            self._send(200, {**head, "object": "chat.completion", "usage": USAGE,
                             "choices": [{"index": 0, "message": message,
                                          "finish_reason": finish}]})
            return
        delta = dict(message)
        if delta.get("tool_calls"):
            delta["tool_calls"] = [{**c, "index": 0} for c in delta["tool_calls"]]
        chunks = [{"index": 0, "delta": delta, "finish_reason": None},
                  {"index": 0, "delta": {}, "finish_reason": finish}]
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        for choice in chunks:
            self._event({**head, "object": "chat.completion.chunk", "choices": [choice]})
        if (body.get("stream_options") or {}).get("include_usage"):
            self._event({**head, "object": "chat.completion.chunk", "choices": [],
                         "usage": USAGE})
        self.wfile.write(b"data: [DONE]\n\n")
        self.close_connection = True

    def _event(self, data: dict) -> None:
        self.wfile.write(b"data: " + json.dumps(data).encode() + b"\n\n")
        self.wfile.flush()

    def _send(self, status: int, data: dict) -> None:
        raw = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)


server = ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
print("listening", flush=True)  # the test waits for this line
server.serve_forever()
