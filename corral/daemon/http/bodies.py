"""Request bodies: read only after the caller may make the call, within the route's limit,
and decoded straight into the method's typed params, unknown fields forbidden. Decoded as
untyped JSON first, 16 MiB of `[{},{},...]` was 400 MB and a quarter of a second of the
loop before anything looked at it.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Iterable
from functools import cache
from typing import Any

import msgspec

from ... import jsonrpc
from ...jsonline import one_line
from ...jsonrpc import RpcError

NOT_OBJECT = "invalid params: the body must be a JSON object"
UNKNOWN = "Object contains unknown field `"
INT_GOT_FLOAT = re.compile(r"Expected `[^`]*\bint\b[^`]*`, got `float`")
# Past this no float spells one integer only.
EXACT = 2**53
# The body fields that carry config tables ([agents.NAME], [tenants.NAME], [workflows.NAME],
# [teams.NAME], a patch of one), typed by the config's Structs only after the body is
# read, as strictly as TOML's ints and floats are told apart.
TABLES = frozenset({"agents", "tenants", "workflows", "teams", "set"})


@cache
def body_type(params: type[msgspec.Struct], fields: tuple[str, ...]
              ) -> type[msgspec.Struct]:
    """A Struct of `fields` (their JSON names) of `params`, with their types and
    constraints, each UNSET when absent (the method's own defaults and required fields
    apply when the params are made), unknown fields refused."""
    hints = typing.get_type_hints(params, include_extras=True)
    taken = [f for f in msgspec.structs.fields(params) if f.encode_name in fields]
    return msgspec.defstruct(
        f"{params.__name__}Body",
        [(f.name, hints[f.name] | msgspec.UnsetType, msgspec.UNSET) for f in taken],
        kw_only=True, forbid_unknown_fields=True, rename={f.name: f.encode_name for f in taken})


def field_types(params: type[msgspec.Struct], fields: Iterable[str]) -> list[Any]:
    wanted = set(fields)
    return [info.type for info in msgspec.structs.fields(params)
            if info.encode_name in wanted]


def whole(value: Any) -> Any:
    """`value` with every float that is a whole number an int: in JSON (and so in the
    OpenAPI document's JSON Schema) `2.0` is the integer 2, where msgspec and TOML take
    only `2` for an int."""
    if isinstance(value, float):
        return int(value) if value.is_integer() and -EXACT <= value <= EXACT else value
    if isinstance(value, dict):
        return {k: whole(v) for k, v in value.items()}
    if isinstance(value, list):
        return [whole(v) for v in value]
    return value


@cache
def _raw_fields(into: type[msgspec.Struct]) -> frozenset[str]:
    """The JSON names of `into`'s fields kept as they came (an agent's input)."""
    hints = typing.get_type_hints(into)
    return frozenset(f.encode_name for f in msgspec.structs.fields(into)
                     if msgspec.Raw in (typing.get_args(hints[f.name]) or (hints[f.name],)))


def _typed(text: bytes, into: type[msgspec.Struct]) -> Any:
    """`text` decoded into `into`, a whole number given as a float taken for an int field
    (and in a config table); an agent's input kept as it came."""
    try:
        given = msgspec.json.decode(text, type=into)
    except msgspec.ValidationError as exc:
        if not INT_GOT_FLOAT.match(str(exc)):
            raise
        # the rare body that spells an integer `2.0`: read again once, untyped
        doc = msgspec.json.decode(text)
        if not isinstance(doc, dict):
            raise
        raw = _raw_fields(into)
        given = msgspec.json.decode(msgspec.json.encode(
            {k: v if k in raw else whole(v) for k, v in doc.items()}), type=into)
    for name in _table_fields(into):
        value = getattr(given, name)
        if value is not msgspec.UNSET:
            setattr(given, name, whole(value))
    return given


@cache
def _table_fields(into: type[msgspec.Struct]) -> tuple[str, ...]:
    """The attribute names of `into`'s config tables: msgspec.structs.fields evaluates
    the annotations anew each call, which every request paid before."""
    return tuple(f.name for f in msgspec.structs.fields(into) if f.encode_name in TABLES)


def decode(body: bytes, into: type[msgspec.Struct], known: tuple[str, ...]) -> Any:
    """`body` (empty: `{}`) decoded into `into`; raises RpcError (400). `known`: the
    fields a route takes, named when another is sent."""
    try:
        if (why := jsonrpc.not_utf8(body)) is not None:  # (a value kept undecoded too)
            raise RpcError(jsonrpc.PARSE_ERROR, f"malformed JSON: {why}")
        # an input kept as it came is sent on in one line of a worker's link
        return _typed(one_line(body) if body.strip() else b"{}", into)
    except msgspec.ValidationError as exc:
        said = str(exc)
        if said.startswith("Expected `object`, got `") and " - at " not in said:
            raise RpcError(jsonrpc.INVALID_PARAMS, NOT_OBJECT) from None
        if said.startswith(UNKNOWN) and " - at " not in said:
            key = said.removeprefix(UNKNOWN).removesuffix("`")
            raise RpcError(jsonrpc.INVALID_PARAMS,
                           f"invalid params: unknown field `{key}`"
                           + (f" (known: {', '.join(known)})" if known
                              else ": this request takes no body fields")) from None
        raise RpcError(jsonrpc.INVALID_PARAMS, f"invalid params: {exc}") from None
    except (msgspec.DecodeError, RecursionError) as exc:
        said = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise RpcError(jsonrpc.PARSE_ERROR, f"malformed JSON: {said}") from None
