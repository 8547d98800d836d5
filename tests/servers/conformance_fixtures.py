"""The fixtures the official conformance suite's server scenarios call by name (its own
reference server's tools, resources and prompts), on the official SDK (mcp 2.x), over
stdio: behind corral's gateway and seen as itself at /mcp/NAME, the suite's fixture
scenarios run through the gateway (tests/test_gateway_conformance.py)."""
from __future__ import annotations

from tests.quietimports import collector_off

with collector_off(freeze=True):
    import asyncio
    import base64
    import json
    import os
    import sys
    import threading
    from typing import Any

    from mcp.server import MCPServer
    from mcp.server.mcpserver import Context
    from mcp.server.mcpserver.prompts.base import Prompt, UserMessage
    from mcp.shared.exceptions import MCPError
    from mcp.types import (
        AudioContent,
        CallToolResult,
        Completion,
        CreateMessageRequest,
        CreateMessageRequestParams,
        ElicitRequest,
        ElicitRequestFormParams,
        EmbeddedResource,
        ImageContent,
        InputRequiredResult,
        ListRootsRequest,
        SamplingMessage,
        TextContent,
        TextResourceContents,
        Tool,
        ToolExecution,
    )
    from pydantic import BaseModel

# the tasks extension's fixtures (conformance 0.2.0-alpha.12's tasks-* scenarios) that say
# they run as tasks: the gateway holds their calls as its tasks (corral/daemon/mcptasks.py)
TASKED = frozenset({"slow_compute", "failing_job", "protocol_error_job",
                    "confirm_delete", "multi_input"})


# json-schema-2020-12's tool: an input schema of the 2020-12 keywords a server may use
# (SEP-1613, SEP-2106), which the gateway must pass on as it is
SCHEMA_2020_12: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
    "$defs": {"address": {"$anchor": "addressDef", "type": "object", "properties": {
        "street": {"type": "string"}, "city": {"type": "string"}}}},
    "properties": {"name": {"type": "string"}, "address": {"$ref": "#/$defs/address"},
                   "contactMethod": {"type": "string", "enum": ["phone", "email"]},
                   "phone": {"type": "string"}, "email": {"type": "string"}},
    "allOf": [{"anyOf": [{"required": ["phone"]}, {"required": ["email"]}]}],
    "if": {"properties": {"contactMethod": {"const": "phone"}},
           "required": ["contactMethod"]},
    "then": {"required": ["phone"]}, "else": {"required": ["email"]},
    "additionalProperties": False}


class _Fixtures(MCPServer):
    async def list_tools(self) -> list[Tool]:
        return [t.model_copy(update={"execution": ToolExecution(task_support="optional")})
                if t.name in TASKED else
                t.model_copy(update={"input_schema": SCHEMA_2020_12})
                if t.name == "json_schema_2020_12_tool" else t
                for t in await super().list_tools()]


server = _Fixtures("fixtures")
# a 1x1 red pixel PNG, and a WAV header of no samples: the smallest of each kind
PNG = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAAB"
       "JRU5ErkJggg==")
WAV = base64.b64encode(b"RIFF$\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00\x01\x00"
                       b"D\xac\x00\x00\x88X\x01\x00\x02\x00\x10\x00data\x00\x00\x00\x00"
                       ).decode()


def _embedded(uri: str, mime: str, text: str) -> EmbeddedResource:
    return EmbeddedResource(type="resource", resource=TextResourceContents(
        uri=uri, mime_type=mime, text=text))


@server.tool()
def test_simple_text() -> CallToolResult:
    """Simple text."""
    return CallToolResult(content=[TextContent(
        type="text", text="This is a simple text response for testing.")])


@server.tool()
def test_image_content() -> CallToolResult:
    """An image."""
    return CallToolResult(content=[ImageContent(type="image", data=PNG,
                                                mime_type="image/png")])


@server.tool()
def test_audio_content() -> CallToolResult:
    """Audio."""
    return CallToolResult(content=[AudioContent(type="audio", data=WAV,
                                                mime_type="audio/wav")])


@server.tool()
def test_embedded_resource() -> CallToolResult:
    """An embedded resource."""
    return CallToolResult(content=[_embedded("test://embedded-resource", "text/plain",
                                             "This is an embedded resource content.")])


@server.tool()
def test_multiple_content_types() -> CallToolResult:
    """Text, an image and a resource."""
    return CallToolResult(content=[
        TextContent(type="text", text="Multiple content types test:"),
        ImageContent(type="image", data=PNG, mime_type="image/png"),
        _embedded("test://mixed-content-resource", "application/json",
                  json.dumps({"test": "data", "value": 123}, separators=(",", ":")))])


@server.tool()
def test_error_handling() -> CallToolResult:
    """Always an error."""
    return CallToolResult(isError=True, content=[TextContent(
        type="text", text="This tool intentionally returns an error for testing")])


@server.tool()
async def test_tool_with_progress(ctx: Context) -> str:
    """Progress 0, 50 and 100 of 100."""
    for done in (0, 50, 100):
        await ctx.report_progress(done, 100)
        if done < 100:
            await asyncio.sleep(0.05)
    return "Progress reported: 0, 50, 100 of 100"


@server.tool()
async def test_logging_tool(ctx: Context) -> str:
    """Logs three messages (server-stateless: none reaches a client that set no logLevel)."""
    for word in ("first", "second", "third"):
        await ctx.info(f"log {word}")
    return "Logged three messages"


@server.tool()
async def test_tool_with_logging(ctx: Context) -> str:
    """Logs three messages while it runs, a while apart (tools-call-with-logging: each
    reaches the client that called it, on its call's stream)."""
    for n, said in enumerate(("Tool execution started", "Tool processing data",
                              "Tool execution completed")):
        if n:
            await asyncio.sleep(0.05)
        await ctx.info(said)
    return "Tool with logging executed successfully"


_gates: dict[str, asyncio.Event] = {}


@server.tool()
async def gated_log(key: str, ctx: Context) -> str:
    """Logs "gated KEY" once open_gate(KEY) is called, and ends (a log message sent while
    calls of other clients may be in flight on the session)."""
    await _gates.setdefault(key, asyncio.Event()).wait()
    await ctx.info(f"gated {key}")
    return f"gated {key} done"


@server.tool()
def open_gate(key: str) -> str:
    """Lets gated_log(KEY) go on."""
    _gates.setdefault(key, asyncio.Event()).set()
    return f"opened {key}"


_working: set[asyncio.Task[None]] = set()  # work outliving its call, held till it ends


@server.tool()
async def b_work(key: str, ctx: Context) -> str:
    """Answers at once; its work goes on and logs "B's secret KEY" once a_wait(KEY) is
    in flight (a call's work that outlives its answer, as a task's between polls)."""
    async def later() -> None:
        await _gates.setdefault(f"a_wait {key}", asyncio.Event()).wait()
        try:  # its request is over: the message goes to the session, as a server logs
            await ctx.session.send_log_message("info", f"B's secret {key}")
        finally:
            _gates.setdefault(f"b_logged {key}", asyncio.Event()).set()

    work = asyncio.ensure_future(later())
    _working.add(work)
    work.add_done_callback(_working.discard)
    return f"b_work {key} answered"


@server.tool()
async def a_wait(key: str) -> str:
    """Ends once b_work(KEY)'s work has logged: that message is sent while this call is
    the one in flight."""
    _gates.setdefault(f"a_wait {key}", asyncio.Event()).set()
    await _gates.setdefault(f"b_logged {key}", asyncio.Event()).wait()
    return f"a_wait {key} done"


class _Answer(BaseModel):
    answer: str


@server.tool()
async def test_streaming_elicitation(ctx: Context) -> str:
    """Asks the client a question (server-stateless: the call's stream carries no request
    of the server's own); what became of the question is the result."""
    try:
        got = await ctx.elicit("A question for the conformance suite", _Answer)
    except Exception as exc:
        return f"Elicitation failed: {exc}"
    return f"Elicitation: {got.action}"


_added = 0


@server.tool()
async def test_trigger_tool_change(ctx: Context) -> str:
    """Adds a tool and says the tool list changed."""
    global _added
    _added += 1
    server.add_tool(lambda: "added", name=f"added_tool_{_added}", description="Added.")
    await ctx.notify_tools_changed()  # on the subscriptions/listen streams (2026-07-28)
    return "Tool list changed"


@server.tool()
async def test_trigger_prompt_change(ctx: Context) -> str:
    """Adds a prompt and says the prompt list changed."""
    global _added
    _added += 1
    server.add_prompt(Prompt.from_function(lambda: "added", name=f"added_prompt_{_added}",
                                           description="Added."))
    await ctx.notify_prompts_changed()
    return "Prompt list changed"


@server.tool()
def test_missing_capability() -> str:
    """Needs the client's sampling, which its client (corral's, which declines sampling:
    decision 22) never declares: refused as MissingRequiredClientCapability, always."""
    raise MCPError(-32021, "missing required client capability: sampling",
                   {"requiredCapabilities": {"sampling": {}}})


@server.tool(description="Tool with JSON Schema 2020-12 features")
def json_schema_2020_12_tool(name: str = "", email: str = "") -> str:
    """Listed with SCHEMA_2020_12 as its input schema."""
    return f"Contact {name} <{email}>"


@server.tool()
def greet(name: str) -> str:
    """Says hello, at once (a tool that never runs as a task)."""
    return f"Hello, {name}!"


@server.tool()
async def slow_compute(seconds: float, label: str = "") -> str:
    """Sleeps `seconds`, then says so (a task when the client declares the extension)."""
    await asyncio.sleep(seconds)
    return f"Computed {label} after {seconds}s"


@server.tool()
async def failing_job() -> CallToolResult:
    """Ran, and reports an error after a while (its task completes with isError)."""
    await asyncio.sleep(0.5)
    return CallToolResult(isError=True, content=[TextContent(
        type="text", text="the job failed")])


@server.tool()
async def protocol_error_job() -> str:
    """Fails as a protocol error (its task is failed, with the error)."""
    await asyncio.sleep(0.2)
    raise MCPError(-32603, "the job broke")


def _ask(message: str, *fields: str) -> ElicitRequest:
    """An elicitation of string `fields` (the suite answers with them, or `confirm`)."""
    return ElicitRequest(params=ElicitRequestFormParams(message=message, requested_schema={
        "type": "object", "properties": {f: {"type": "string"} for f in fields}}))


def _answered(ctx: Context, key: str) -> dict[str, Any] | None:
    """The content of the client's answer to the request `key`, if it accepted it."""
    got = (ctx.input_responses or {}).get(key)
    if got is None or getattr(got, "action", None) != "accept":
        return None
    return dict(getattr(got, "content", None) or {})


@server.tool()
async def confirm_delete(filename: str, ctx: Context) -> CallToolResult | InputRequiredResult:
    """Asks the client to confirm (one elicitation, input_required), then says what it
    did (a task when the client declares the extension: the gateway's task_tools)."""
    if not ctx.input_responses:
        return InputRequiredResult(input_requests={
            "confirm": _ask(f"Delete {filename}?", "confirm")})
    done = "Deleted" if _answered(ctx, "confirm") is not None else "Kept"
    return CallToolResult(content=[TextContent(type="text", text=f"{done} {filename}")])


@server.tool()
async def multi_input(ctx: Context) -> CallToolResult | InputRequiredResult:
    """Asks two questions at once (two input requests pending together)."""
    answers = ctx.input_responses or {}
    if not {"first", "second"} <= set(answers):
        return InputRequiredResult(input_requests={
            "first": _ask("The first name?", "name"),
            "second": _ask("The second name?", "name")})
    names = [(_answered(ctx, k) or {}).get("name", "?") for k in ("first", "second")]
    return CallToolResult(content=[TextContent(type="text", text=" and ".join(
        str(n) for n in names))])


@server.tool()
async def test_tool_with_task(ctx: Context) -> CallToolResult | InputRequiredResult:
    """Asks the user's name (input_required, with a state of its own), then works on it
    a while (the gateway runs the call that brings the answer as a task: after_input)."""
    got = _answered(ctx, "user_name")
    if got is None or ctx.request_state != "asked-name":
        return InputRequiredResult(input_requests={"user_name": _ask("Your name?", "name")},
                                   request_state="asked-name")
    await asyncio.sleep(0.2)
    return CallToolResult(content=[TextContent(type="text",
                                               text=f"Hello, {got.get('name')}!")])


def _one_round(ctx: Context, request: ElicitRequest | CreateMessageRequest
               ) -> InputRequiredResult | Any:
    """The client's answer to `request` (asked once, as "asked"), or the request."""
    got = (ctx.input_responses or {}).get("asked")
    if got is None:
        return InputRequiredResult(input_requests={"asked": request})
    return got


def _form(message: str, properties: dict[str, Any], required: list[str] | None = None
          ) -> ElicitRequest:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return ElicitRequest(params=ElicitRequestFormParams(message=message,
                                                        requested_schema=schema))


def _said(got: Any) -> str:
    return json.dumps(got.model_dump(mode="json", exclude_none=True), sort_keys=True)


@server.tool()
async def test_sampling(prompt: str, ctx: Context) -> CallToolResult | InputRequiredResult:
    """Asks the client's model (sampling/createMessage), and says what it answered."""
    got = _one_round(ctx, CreateMessageRequest(params=CreateMessageRequestParams(
        messages=[SamplingMessage(role="user", content=TextContent(type="text",
                                                                    text=prompt))],
        max_tokens=100)))
    if isinstance(got, InputRequiredResult):
        return got
    content = got.content if not isinstance(got.content, list) else got.content[0]
    return CallToolResult(content=[TextContent(
        type="text", text=f"LLM response: {getattr(content, 'text', '')}")])


@server.tool()
async def test_elicitation(message: str, ctx: Context) -> CallToolResult | InputRequiredResult:
    """Asks the user a username and an email (elicitation/create)."""
    got = _one_round(ctx, _form(message, {
        "username": {"type": "string", "description": "User's response"},
        "email": {"type": "string", "description": "User's email address"}},
        ["username", "email"]))
    if isinstance(got, InputRequiredResult):
        return got
    return CallToolResult(content=[TextContent(type="text",
                                               text=f"User response: {_said(got)}")])


@server.tool()
async def test_elicitation_sep1034_defaults(ctx: Context
                                            ) -> CallToolResult | InputRequiredResult:
    """Asks with a default for each primitive type (SEP-1034)."""
    got = _one_round(ctx, _form("Defaults for every primitive type", {
        "name": {"type": "string", "default": "John Doe"},
        "age": {"type": "integer", "default": 30},
        "score": {"type": "number", "default": 95.5},
        "status": {"type": "string", "enum": ["active", "inactive", "pending"],
                   "default": "active"},
        "verified": {"type": "boolean", "default": True}}))
    if isinstance(got, InputRequiredResult):
        return got
    return CallToolResult(content=[TextContent(
        type="text", text=f"Elicitation completed: {_said(got)}")])


@server.tool()
async def test_elicitation_sep1330_enums(ctx: Context
                                         ) -> CallToolResult | InputRequiredResult:
    """Asks with each of the five enum shapes (SEP-1330)."""
    got = _one_round(ctx, _form("Every kind of enum", {
        "untitledSingle": {"type": "string", "enum": ["option1", "option2", "option3"]},
        "titledSingle": {"type": "string", "oneOf": [
            {"const": "value1", "title": "First Option"},
            {"const": "value2", "title": "Second Option"},
            {"const": "value3", "title": "Third Option"}]},
        "legacyEnum": {"type": "string", "enum": ["opt1", "opt2", "opt3"],
                       "enumNames": ["Option One", "Option Two", "Option Three"]},
        "untitledMulti": {"type": "array", "items": {
            "type": "string", "enum": ["option1", "option2", "option3"]}},
        "titledMulti": {"type": "array", "items": {"anyOf": [
            {"const": "value1", "title": "First Choice"},
            {"const": "value2", "title": "Second Choice"},
            {"const": "value3", "title": "Third Choice"}]}}}))
    if isinstance(got, InputRequiredResult):
        return got
    return CallToolResult(content=[TextContent(
        type="text", text=f"Elicitation completed: {_said(got)}")])


@server.tool()
async def test_input_required_result_list_roots(ctx: Context
                                                ) -> CallToolResult | InputRequiredResult:
    """Asks the client's roots (roots/list), and says them."""
    got = (ctx.input_responses or {}).get("client_roots")
    if got is None:
        return InputRequiredResult(input_requests={"client_roots": ListRootsRequest()})
    roots = [str(r.uri) for r in getattr(got, "roots", [])]
    return CallToolResult(content=[TextContent(type="text", text=f"Roots: {roots}")])


@server.tool()
async def test_input_required_result_multiple_inputs(ctx: Context
                                                     ) -> CallToolResult | InputRequiredResult:
    """Asks an elicitation, a sampling and the client's roots in one round, with a state;
    done when all three come back with it."""
    answers = ctx.input_responses or {}
    if ctx.request_state != "asked-three" or \
            not {"user_name", "greeting", "client_roots"} <= set(answers):
        return InputRequiredResult(input_requests={
            "user_name": _name_form("What is your name?"),
            "greeting": _sample("Generate a greeting"),
            "client_roots": ListRootsRequest()}, request_state="asked-three")
    roots = [str(r.uri) for r in getattr(answers["client_roots"], "roots", [])]
    return _done(f"Name {(_answered(ctx, 'user_name') or {}).get('name')}, roots {roots}")


def _sample(text: str) -> CreateMessageRequest:
    return CreateMessageRequest(params=CreateMessageRequestParams(
        messages=[SamplingMessage(role="user", content=TextContent(type="text", text=text))],
        max_tokens=100))


def _name_form(message: str, field: str = "name", kind: str = "string") -> ElicitRequest:
    return _form(message, {field: {"type": kind}}, [field])


def _done(text: str) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=text)])


@server.tool()
async def test_input_required_result_elicitation(ctx: Context
                                                 ) -> CallToolResult | InputRequiredResult:
    """SEP-2322's basic round: the user's name, asked again until answered."""
    got = _answered(ctx, "user_name")
    if got is None:
        return InputRequiredResult(input_requests={
            "user_name": _name_form("What is your name?")})
    return _done(f"Hello, {got.get('name')}!")


@server.tool()
async def test_input_required_result_sampling(ctx: Context
                                              ) -> CallToolResult | InputRequiredResult:
    """A sampling request, and what the model said."""
    got = (ctx.input_responses or {}).get("capital_question")
    if got is None:
        return InputRequiredResult(input_requests={
            "capital_question": _sample("What is the capital of France?")})
    content = got.content if not isinstance(got.content, list) else got.content[0]
    return _done(f"The model said: {getattr(content, 'text', '')}")


@server.tool()
async def test_input_required_result_request_state(ctx: Context
                                                   ) -> CallToolResult | InputRequiredResult:
    """A confirmation with a state of its own, which must come back."""
    if _answered(ctx, "confirm") is None or ctx.request_state != "awaiting-confirm":
        return InputRequiredResult(input_requests={
            "confirm": _name_form("Please confirm", "ok", "boolean")},
            request_state="awaiting-confirm")
    return _done("Confirmed, with the state as it was given")


ASK_NAME_SCHEMA: dict[str, Any] = {"type": "object", "properties": {
    "name": {"type": "string", "description": "Your name"}}, "required": ["name"]}


@server.tool()
async def ask_name(greeting: str, ctx: Context) -> CallToolResult | InputRequiredResult:
    """Asks the person's name, as the negotiated revision asks (elicitation/create in the
    middle of the call on 2025-11-25, an input_required result on 2026-07-28), and says
    what came back: the greeting with the name, or the action that refused it."""
    message = f"{greeting}: what is your name?"
    if ctx.protocol_version == "2026-07-28":
        got = (ctx.input_responses or {}).get("name")
        if got is None:
            return InputRequiredResult(input_requests={"name": ElicitRequest(
                params=ElicitRequestFormParams(message=message,
                                               requested_schema=ASK_NAME_SCHEMA))})
        action, content = got.action, dict(getattr(got, "content", None) or {})
    else:
        answer = await ctx.session.elicit_form(message, ASK_NAME_SCHEMA, ctx.request_id)
        action, content = answer.action, dict(answer.content or {})
    if action != "accept":
        return _done(f"elicitation {action}")
    return _done(f"{greeting}, {content.get('name')}!")


@server.tool()
async def test_input_required_result_multi_round(ctx: Context
                                                 ) -> CallToolResult | InputRequiredResult:
    """Two rounds, the state changing between them."""
    if ctx.request_state == "round-2" and _answered(ctx, "step2") is not None:
        return _done(f"Done: {(_answered(ctx, 'step2') or {}).get('color')}")
    if ctx.request_state == "round-1" and _answered(ctx, "step1") is not None:
        return InputRequiredResult(input_requests={
            "step2": _name_form("Step 2: your favourite colour?", "color")},
            request_state="round-2")
    return InputRequiredResult(input_requests={
        "step1": _name_form("Step 1: What is your name?")}, request_state="round-1")


@server.tool()
async def test_input_required_result_tampered_state(ctx: Context
                                                    ) -> CallToolResult | InputRequiredResult:
    """A state the SDK seals: a changed one is refused."""
    if _answered(ctx, "confirm") is None or ctx.request_state != "sealed":
        return InputRequiredResult(input_requests={
            "confirm": _name_form("Please confirm", "ok", "boolean")}, request_state="sealed")
    return _done("The state was intact")


@server.tool()
async def test_input_required_result_capabilities(ctx: Context
                                                  ) -> CallToolResult | InputRequiredResult:
    """Asks only what its client declared it can answer."""
    if ctx.input_responses:
        return _done("Answered")
    caps = ctx.client_capabilities
    asked: dict[str, Any] = {}
    if caps is not None and caps.sampling is not None:
        asked["question"] = _sample("Anything?")
    if caps is not None and caps.elicitation is not None:
        asked["name"] = _name_form("What is your name?")
    if not asked:
        return _done("Nothing this client can answer")
    return InputRequiredResult(input_requests=asked)


@server.tool()
async def many_questions(count: int, ctx: Context) -> CallToolResult | InputRequiredResult:
    """Asks `count` questions at once (a round past a client's bound on them)."""
    if not ctx.input_responses:
        return InputRequiredResult(input_requests={
            f"q{n}": _ask(f"Question {n}?", "answer") for n in range(count)})
    return CallToolResult(content=[TextContent(type="text", text=f"{count} answered")])


@server.completion()
async def complete(ref: Any, argument: Any, context: Any) -> Completion:
    words = ["paris", "park", "party"]
    return Completion(values=[w for w in words if w.startswith(argument.value)],
                      total=len(words), has_more=False)


@server.resource("test://static-text", mime_type="text/plain")
def static_text() -> str:
    return "This is the content of the static text resource."


@server.resource("test://watched-resource", mime_type="text/plain")
def watched() -> str:
    """What the subscription scenarios subscribe to."""
    return f"Watched, changed {_added} times."


@server.tool()
async def touch_watched(ctx: Context) -> str:
    """Says test://watched-resource changed (on the listen streams that asked for it)."""
    await ctx.notify_resource_updated("test://watched-resource")
    return "Touched"


@server.resource("test://static-binary", mime_type="image/png")
def static_binary() -> bytes:
    return base64.b64decode(PNG)


@server.resource("test://template/{id}/data", mime_type="application/json")
def template(id: str) -> str:
    return json.dumps({"id": id, "templateTest": True, "data": f"Data for ID: {id}"},
                      separators=(",", ":"))


@server.prompt()
async def test_input_required_result_prompt(ctx: Context
                                            ) -> list[UserMessage] | InputRequiredResult:
    """A prompt that asks its context first (input_required on prompts/get)."""
    got = _answered(ctx, "user_context")
    if got is None:
        return InputRequiredResult(input_requests={"user_context": _name_form(
            "What context should the prompt use?", "context")})
    return [UserMessage(f"Use this context: {got.get('context')}")]


@server.prompt()
def test_simple_prompt() -> list[UserMessage]:
    """A simple prompt."""
    return [UserMessage("This is a simple prompt for testing.")]


@server.prompt()
def test_prompt_with_arguments(arg1: str, arg2: str) -> list[UserMessage]:
    """A prompt of two arguments."""
    return [UserMessage(f"Prompt with arguments: arg1='{arg1}', arg2='{arg2}'")]


@server.prompt()
def test_prompt_with_embedded_resource(resourceUri: str) -> list[UserMessage]:
    """A prompt with a resource in it."""
    return [UserMessage(_embedded(resourceUri, "text/plain",
                                  "Embedded resource content for testing.")),
            UserMessage("Please process the embedded resource above.")]


@server.prompt()
def test_prompt_with_image() -> list[UserMessage]:
    """A prompt with an image in it."""
    return [UserMessage(ImageContent(type="image", data=PNG, mime_type="image/png")),
            UserMessage("Please analyze the image above.")]


def _legacy_only() -> None:
    """The server of 2025-11-25 alone: corral's server/discover probe is refused here,
    before the SDK (which would lock the connection to 2026-07-28 by it) reads it, so
    corral initializes, and a server's question comes as elicitation/create in the middle
    of a call. Every other line goes on to the SDK through a pipe in place of stdin."""
    read, write = os.pipe()
    real = os.dup(0)
    os.dup2(read, 0)
    os.close(read)

    def pump() -> None:
        with os.fdopen(real, "rb") as lines:
            for line in lines:
                try:
                    msg = json.loads(line)
                except ValueError:
                    msg = None
                if isinstance(msg, dict) and msg.get("method") == "server/discover":
                    os.write(1, json.dumps({"jsonrpc": "2.0", "id": msg.get("id"), "error": {
                        "code": -32601, "message": "Method not found"}}).encode() + b"\n")
                    continue
                os.write(write, line)
        os.close(write)

    threading.Thread(target=pump, daemon=True).start()


if __name__ == "__main__":
    if "--legacy" in sys.argv:
        _legacy_only()
    server.run()
