"""A stand-in model server for the framework recipes' tests (tests/test_frameworks.py),
speaking OpenAI's Chat Completions (whole and streamed) and Responses (whole) and
Anthropic's Messages (whole and streamed): its answers are scripted by the conversation
it is sent, so that a retried task's model asks for the same tool calls in the same order
as the first attempt's.

    scripted_model.py PORT CALLS COUNT_FILE [TOOL]

To a request whose conversation holds n tool results (a Chat Completions "tool" message,
a Responses "function_call_output" item, a Messages "tool_result" block), n < CALLS, it
answers a call of the tool offered whose name ends in "bump", with {"i": n + 1}; to one
with CALLS, the text "done N". Each answer is 10 tokens in and 5 out. Each request is a
line `model N API` in COUNT_FILE (API: chat, responses or messages, and `stream` after it
for a streamed one). It says `listening` on stdout once it does.

With TOOL (e.g. `write_file`), the tool it calls is the one whose name ends in TOOL, with
the arguments the conversation's first user message ends with (a JSON object: the task's
prompt `write {"path": ..., "content": ...}`), and its last answer is "done N: " and the
text of the last tool result the conversation holds (what the agent was told: a result,
or the error a framework reports for a failed call), so that a test can read it.
"""

import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT, CALLS, COUNT_FILE = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
TOOL = sys.argv[4] if len(sys.argv) > 4 else None
IN, OUT = 10, 5


def tool_name(body: dict) -> str:
    for tool in body.get("tools") or []:
        name = (tool.get("function") or {}).get("name") or tool.get("name") or ""
        if name.endswith(TOOL or "bump"):
            return name
    raise ValueError(f"no {TOOL or 'bump'} tool offered: {body.get('tools')!r:.300}")


def text_of(content: object) -> str:
    """A message's or a tool result's text: a string, or its parts' texts joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(text_of(p.get("text", p.get("content", "")))
                       for p in content if isinstance(p, dict))
    return ""


def conversation(body: dict) -> list:
    return [i for i in body.get("messages") or body.get("input") or []
            if isinstance(i, dict)]


def arguments(body: dict, n: int) -> dict:
    """The arguments of the tool call asked after n results."""
    if TOOL is None:
        return {"i": n + 1}
    given = body.get("input")  # a Responses request's input may be the prompt alone
    prompt = given if isinstance(given, str) else next(
        text_of(i.get("content")) for i in conversation(body) if i.get("role") == "user")
    return json.loads(prompt[prompt.index("{"):])


def last_result(body: dict) -> str:
    """The text of the conversation's last tool result, in any of the three shapes."""
    text = ""
    for item in conversation(body):
        if item.get("role") == "tool":
            text = text_of(item.get("content"))
        elif item.get("type") == "function_call_output":
            text = text_of(item.get("output"))
        elif isinstance(item.get("content"), list):
            for b in item["content"]:
                if isinstance(b, dict) and b.get("type") == "tool_result":
                    text = text_of(b.get("content"))
    return text


def final(done: int, body: dict) -> str:
    return f"done {done}" if TOOL is None else f"done {done}: {last_result(body)}"


def results_in(body: dict) -> int:
    """The tool results the conversation holds, in any of the three request shapes."""
    n = 0
    for item in conversation(body):
        if item.get("role") == "tool" or item.get("type") == "function_call_output":
            n += 1
        elif isinstance(item.get("content"), list):
            n += sum(1 for b in item["content"]
                     if isinstance(b, dict) and b.get("type") == "tool_result")
    return n


def next_step(body: dict, api: str) -> tuple[int, str | None]:
    """(n, the tool to call with `arguments`), or (n, None) for the last answer."""
    done = results_in(body)
    with open(COUNT_FILE, "a") as f:
        f.write(f"model {done} {api}{' stream' if body.get('stream') else ''}\n")
    return done, (tool_name(body) if done < CALLS else None)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        if self.path.endswith("/chat/completions"):
            self.chat_completions(body)
        elif self.path.endswith("/responses") and not body.get("stream"):
            self.responses_api(body)
        elif self.path.endswith("/v1/messages"):
            self.messages_api(body)
        else:
            self._send(404, {"error": {"message": f"no {self.path} here"}})

    def chat_completions(self, body: dict) -> None:
        done, tool = next_step(body, "chat")
        if tool is not None:
            message = {"role": "assistant", "content": None, "tool_calls": [{
                "id": f"call_{done + 1}", "type": "function",
                "function": {"name": tool,
                             "arguments": json.dumps(arguments(body, done))}}]}
        else:
            message = {"role": "assistant", "content": final(done, body)}
        finish = "tool_calls" if tool is not None else "stop"
        head = {"id": "chatcmpl-1", "created": int(time.time()), "model": body.get("model")}
        usage = {"prompt_tokens": IN, "completion_tokens": OUT, "total_tokens": IN + OUT}
        if not body.get("stream"):
            self._send(200, {**head, "object": "chat.completion", "usage": usage,
                             "choices": [{"index": 0, "message": message,
                                          "finish_reason": finish}]})
            return
        delta = dict(message)
        if delta.get("tool_calls"):
            delta["tool_calls"] = [{**c, "index": 0} for c in delta["tool_calls"]]
        events = [{**head, "object": "chat.completion.chunk", "choices": [choice]}
                  for choice in ({"index": 0, "delta": delta, "finish_reason": None},
                                 {"index": 0, "delta": {}, "finish_reason": finish})]
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append({**head, "object": "chat.completion.chunk", "choices": [],
                           "usage": usage})
        self._stream([(None, e) for e in events] + [(None, "[DONE]")])

    def responses_api(self, body: dict) -> None:
        done, tool = next_step(body, "responses")
        if tool is not None:
            item = {"type": "function_call", "id": f"fc_{done + 1}",
                    "call_id": f"call_{done + 1}", "name": tool,
                    "arguments": json.dumps(arguments(body, done)), "status": "completed"}
        else:
            item = {"type": "message", "id": "msg_1", "role": "assistant",
                    "status": "completed", "content": [
                        {"type": "output_text", "text": final(done, body), "annotations": []}]}
        self._send(200, {
            "id": f"resp_{done + 1}", "object": "response", "created_at": int(time.time()),
            "status": "completed", "model": body.get("model"), "output": [item],
            "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
            "usage": {"input_tokens": IN, "output_tokens": OUT, "total_tokens": IN + OUT,
                      "input_tokens_details": {"cached_tokens": 0},
                      "output_tokens_details": {"reasoning_tokens": 0}}})

    def messages_api(self, body: dict) -> None:
        done, tool = next_step(body, "messages")
        if tool is not None:
            block = {"type": "tool_use", "id": f"toolu_{done + 1}", "name": tool,
                     "input": arguments(body, done)}
        else:
            block = {"type": "text", "text": final(done, body)}
        stop = "tool_use" if tool is not None else "end_turn"
        message = {"id": f"msg_{done + 1}", "type": "message", "role": "assistant",
                   "model": body.get("model"), "stop_sequence": None}
        if not body.get("stream"):
            self._send(200, {**message, "content": [block], "stop_reason": stop,
                             "usage": {"input_tokens": IN, "output_tokens": OUT}})
            return
        if tool is not None:
            start = {**block, "input": {}}
            delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
        else:
            start = {"type": "text", "text": ""}
            delta = {"type": "text_delta", "text": block["text"]}
        self._stream([(e["type"], e) for e in (
            {"type": "message_start", "message": {
                **message, "content": [], "stop_reason": None,
                "usage": {"input_tokens": IN, "output_tokens": 1}}},
            {"type": "content_block_start", "index": 0, "content_block": start},
            {"type": "content_block_delta", "index": 0, "delta": delta},
            {"type": "content_block_stop", "index": 0},
            {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
             "usage": {"output_tokens": OUT}},
            {"type": "message_stop"})])

    def _stream(self, events: list) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        for name, data in events:
            head = f"event: {name}\n" if name else ""
            text = data if isinstance(data, str) else json.dumps(data)
            self.wfile.write(f"{head}data: {text}\n\n".encode())
            self.wfile.flush()
        self.close_connection = True

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
