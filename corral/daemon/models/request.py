"""A model request's body as the gateway reads it: held once, never decoded whole.

The body is split at its top level only (each member's value the bytes that came, as
`msgspec.Raw`), and the few members corral acts on decoded, checked as the provider checks
them and refused in its words. What goes upstream is the bytes that came, or the members
re-joined once where corral changes one. Why: decoded into Python objects, a 16 MiB body of
small messages took ~420 MiB for as long as its upstream answered.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import msgspec

from .wire import Endpoint, Format

if TYPE_CHECKING:
    from ...supervisor.config import ModelSpec

BYTES_PER_TOKEN = 4  # the estimate of a text's tokens from its size
OUTPUT_BOUNDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
# the output a call with no bound is reserved at: a budget's reservation needs a number,
# and a call that states none may write as much as its model allows
DEFAULT_OUTPUT = 4096
MAX_N = 128  # OpenAI's bound on a Chat Completions call's choices

_members = msgspec.json.Decoder(dict[str, msgspec.Raw])
_encode = msgspec.json.Encoder()
_CHAT = "/v1/chat/completions"


class _Options(msgspec.Struct):
    """The members corral acts on, decoded in one pass (the rest skipped, not kept)."""

    model: Any = None
    stream: Any = None
    n: Any = None
    max_tokens: Any = None
    max_completion_tokens: Any = None
    max_output_tokens: Any = None
    stream_options: Any = None


_read = msgspec.json.Decoder(_Options)


class BadBody(Exception):
    """A body corral refuses as its provider would (400); `param` names the member."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None
                 ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class ModelRequest(msgspec.Struct):
    """A request read; `digest` of its body as it came is what a retry's same call is
    known by (a task's call's alone, `digest`: "" until the gateway knows it is one). A
    Struct: made a call with no Python of its own."""

    model: str
    stream: bool
    n: int
    bound: int | None  # its output's bound, in tokens; None: none stated
    digest: str
    size: int  # bytes of the body as it came
    sent: bytes
    input_estimate: int  # tokens: of its size
    output_estimate: int  # of its bound (DEFAULT_OUTPUT without one), for each choice


def read(raw: bytes, endpoint: Endpoint, served: Mapping[str, ModelSpec]
         ) -> ModelRequest | None:
    """None when `raw` is no JSON object naming its model (corral's own refusal);
    BadBody when a member corral reads is not of the type the provider takes. `served`:
    the models corral serves (one's name upstream sent in its place)."""
    try:
        members = _read.decode(raw)
    except msgspec.DecodeError:
        return None
    model = members.model
    if not isinstance(model, str):
        return None
    fmt = endpoint.format
    stream = members.stream
    if stream is not None and type(stream) is not bool:  # (each tested inline: most are)
        _typed(stream, "stream", bool, fmt)
    n = members.n if endpoint.path == _CHAT else None
    if n is not None and (type(n) is not int or not 1 <= n <= MAX_N):
        _typed(n, "n", int, fmt)
        raise BadBody(_range_words("n", n), "n", "integer_below_min_value" if n < 1
                      else "integer_above_max_value")
    bound = None
    for k in OUTPUT_BOUNDS:
        bound = getattr(members, k)
        if bound is not None:
            if type(bound) is not int:
                _typed(bound, k, int, fmt)
            break
    changed: dict[str, Any] = {}
    spec = served.get(model)  # (its `model`: its name upstream, None: the same)
    if spec is not None and spec.model is not None and spec.model != model:
        changed["model"] = spec.model
    if stream and endpoint.path == _CHAT:
        options = members.stream_options
        if not (isinstance(options, dict) and options.get("include_usage")):
            changed["stream_options"] = {**(options if isinstance(options, dict) else {}),
                                         "include_usage": True}
    if list(changed) == ["stream_options"] and b"stream_options" not in raw and \
            b"\\u" not in raw:  # (absent, not even escaped: most streams) added at the end
        sent = raw.rstrip(b" \t\r\n")[:-1] + b',"stream_options":{"include_usage":true}}'
    elif changed:  # (the members decoded again, as they came, to join them)
        whole = _members.decode(raw)
        whole.update((k, msgspec.Raw(_encode.encode(v))) for k, v in changed.items())
        sent = _encode.encode(whole)
    else:
        sent = raw
    n, bound = n or 1, max(bound, 0) if bound is not None else None
    return ModelRequest(model, bool(stream), n, bound, "", len(raw), sent,
                        -(-len(raw) // BYTES_PER_TOKEN),
                        (DEFAULT_OUTPUT if bound is None else bound) * n)


def digest(raw: bytes) -> str:
    """A body's digest as it came (a task's call's `digest`)."""
    return hashlib.blake2b(raw, digest_size=16).hexdigest()


_KINDS = {bool: ("boolean", "a boolean", "a valid boolean"),
          int: ("integer", "an integer", "a valid integer")}


def _typed(value: Any, key: str, kind: type, fmt: Format) -> Any:
    """The member `key`'s `value` when it is of `kind` or null (None, as absent); else
    BadBody in the provider's words."""
    if value is None or (type(value) is kind):
        return value
    _, article, valid = _KINDS[kind]
    if fmt == "anthropic":
        raise BadBody(f"{key}: Input should be {valid}", key)
    raise BadBody(f"Invalid type for '{key}': expected {article}, but got "
                  f"{_article_of(value)} instead.", key, "invalid_type")


def _article_of(value: Any) -> str:
    return {str: "a string", bool: "a boolean", int: "an integer", float: "a decimal",
            list: "an array", dict: "an object"}.get(type(value), "a value")


def _range_words(key: str, value: int) -> str:
    if value < 1:
        return f"Invalid '{key}': integer below minimum value. Expected a value >= 1, but " \
               f"got {value} instead."
    return f"Invalid '{key}': integer above maximum value. Expected a value <= {MAX_N}, " \
           f"but got {value} instead."
