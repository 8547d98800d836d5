"""The reference language of a workflow's inputs and conditions
(docs/workflows.md#references): a whole reference (`$input.topic`, `$steps.ID.output`,
`$item`, `$index`) is replaced by its value, a template ("Hello {$input.name}") by text.
No code, no arithmetic: a path, nothing more.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

import msgspec

NAME = r"[A-Za-z_][A-Za-z0-9_-]*"
PART = rf"\.{NAME}|\[\d+\]"  # (the REST document's step schema says these too)
WHOLE = re.compile(rf"\$(input|item|index|steps\.({NAME})\.output)((?:{PART})*)")
TEMPLATE = re.compile(r"\{(\$[^{}]*)\}")
SHAPE = ("a reference is $input, $steps.NAME.output, $item or $index, followed by "
         ".key or [N] parts")


class Missing(LookupError):
    """A reference whose path is not in the value (a key absent, a list too short)."""


class Ref(msgspec.Struct, frozen=True):
    text: str
    root: str  # "input", "item", "index" or "steps"
    step: str | None  # the step of $steps.NAME.output
    path: tuple[str | int, ...]


@functools.lru_cache(maxsize=1024)
def parse(text: str) -> Ref | None:
    """The reference `text` is, or None when it is not one (a definition's, parsed again
    at each step's input and condition: kept)."""
    m = WHOLE.fullmatch(text)
    if m is None:
        return None
    path = [int(part[1:-1]) if part.startswith("[") else part[1:]
            for part in re.findall(PART, m.group(3))]
    root = "steps" if m.group(2) is not None else m.group(1)
    return Ref(text, root, m.group(2), tuple(path))


def refs_in(value: Any) -> list[str]:
    """Every reference-like text in a value (each `$...` string and template part)."""
    out: list[str] = []
    if isinstance(value, str):
        if value.startswith("$"):
            out.append(value)
        else:
            out.extend(TEMPLATE.findall(value))
    elif isinstance(value, list):
        for v in value:
            out.extend(refs_in(v))
    elif isinstance(value, dict):
        for v in value.values():
            out.extend(refs_in(v))
    return out


class Scope(msgspec.Struct):
    """What references resolve against."""

    input: Any
    outputs: Mapping[str, Any]  # (a run's reads each back from its rows as it is named)
    item: Any = None
    index: int | None = None


def resolve(ref: Ref, scope: Scope) -> Any:
    """The value `ref` names, or Missing."""
    if ref.step is None:  # $input, $item, $index: the scope's member of that name
        value = getattr(scope, ref.root)
    else:
        if ref.step not in scope.outputs:
            raise Missing(f"{ref.text}: step {ref.step} has no output")
        value = scope.outputs[ref.step]
    for part in ref.path:
        if isinstance(part, int):
            if not isinstance(value, list) or part >= len(value):
                raise Missing(f"{ref.text}: no item [{part}]")
        elif not isinstance(value, dict) or part not in value:
            raise Missing(f"{ref.text}: no key {part}")
        value = value[part]
    return value


def _text(value: Any) -> str:
    return value if isinstance(value, str) else msgspec.json.encode(value).decode()


def build(value: Any, scope: Scope) -> Any:
    """A step's input: `value` with its references replaced (Missing if one is not
    there). Validated definitions only: every reference here parses."""
    if isinstance(value, str):
        if value.startswith("$"):
            ref = parse(value)
            assert ref is not None
            return resolve(ref, scope)
        if "{$" in value:
            def sub(m: re.Match[str]) -> str:
                ref = parse(m.group(1))
                assert ref is not None
                return _text(resolve(ref, scope))
            return TEMPLATE.sub(sub, value)
        return value
    if isinstance(value, list):
        return [build(v, scope) for v in value]
    if isinstance(value, dict):
        return {k: build(v, scope) for k, v in value.items()}
    return value
