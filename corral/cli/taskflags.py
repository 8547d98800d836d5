"""The CLI's flags of a task's options and of the listings' filters, read off the fields
of their one definition (corral.taskoptions): an option added there is a flag of `corral
run` and `corral submit` (a filter, of `corral tasks`) with no change here. What the
flags give is checked by msgspec's conversion to the Struct, as the daemon checks it, so
a bad value is refused before a call with the daemon's words."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

import click
import msgspec
import msgspec.inspect as mi

from .durations import duration

F = TypeVar("F", bound=Callable[..., Any])


class Flag:
    """One field's flag: the field (`parent`: the nested value holding it) and its click
    option."""

    def __init__(self, field: mi.Field, parent: str | None) -> None:
        self.name, self.parent = field.name, parent
        typ, meta = _unwrapped(field.type)
        cli = (meta.extra or {}).get("cli", {}) if meta is not None else {}
        schema = meta.extra_json_schema or {} if meta is not None else {}
        self.flag = flag = "--" + (cli.get("flag") or field.name).replace("_", "-")
        kw: dict[str, Any] = {"help": schema.get("description"), "metavar": cli.get("metavar")}
        if isinstance(typ, mi.ListType | mi.VarTupleType):
            kw.update(multiple=True, callback=_items)
        elif cli.get("parse") == "duration":
            kw.update(callback=_duration)
        elif isinstance(typ, mi.FloatType | mi.IntType):
            low = typ.ge if typ.ge is not None else typ.gt
            high = typ.le if typ.le is not None else typ.lt
            opened = {"min_open": typ.gt is not None, "max_open": typ.lt is not None}
            if low is None and high is None:
                kw["type"] = float if isinstance(typ, mi.FloatType) else int
            elif isinstance(typ, mi.FloatType):
                kw["type"] = click.FloatRange(low, high, **opened)
            else:
                kw["type"] = click.IntRange(None if low is None else int(low),
                                            None if high is None else int(high), **opened)
        if field.default not in (None, msgspec.NODEFAULT):
            kw.update(default=field.default, show_default=True)
        self.option = click.option(flag, field.name, **kw)


def _unwrapped(t: mi.Type) -> tuple[mi.Type, mi.Metadata | None]:
    """A field's type without its None and its metadata (and that metadata)."""
    meta = None
    while True:
        if isinstance(t, mi.UnionType):
            t = next(x for x in t.types if not isinstance(x, mi.NoneType))
        elif isinstance(t, mi.Metadata):
            meta, t = t, t.type
        else:
            return t, meta


def _items(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
           ) -> list[str] | None:
    """A list's flag given again, or items separated by commas (none given: None); an
    empty item is kept, for the check to refuse rather than the flag to drop."""
    return [item.strip() for v in value for item in v.split(",")] or None


def _duration(ctx: click.Context, param: click.Parameter, value: str | None
              ) -> float | None:
    try:
        return duration(value)
    except click.BadParameter as exc:
        raise click.BadParameter(exc.message, ctx, param) from None


def flags_of(struct: type[msgspec.Struct]) -> list[Flag]:
    """The flags of a Struct's fields, a nested Struct's fields in its place."""
    out = []
    for field in mi.type_info(struct).fields:  # type: ignore[attr-defined]
        typ, _ = _unwrapped(field.type)
        if isinstance(typ, mi.StructType):
            out += [Flag(inner, field.name) for inner in typ.fields]
        else:
            out.append(Flag(field, None))
    return out


def with_flags(struct: type[msgspec.Struct]) -> Callable[[F], F]:
    """A command decorator: the Struct's flags, their values given to the command as
    keyword arguments (`given` reads them back as the Struct's fields)."""
    flags = flags_of(struct)

    def decorate(fn: F) -> F:
        for flag in reversed(flags):
            fn = flag.option(fn)
        return fn

    return decorate


def given(struct: type[msgspec.Struct], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The Struct's fields from a command's keyword arguments (taken out of them), checked
    as the daemon checks them: a field left at its default is left out. A value the
    Struct refuses ends the command with a usage error in msgspec's words."""
    data: dict[str, Any] = {}
    flags = flags_of(struct)
    for flag in flags:
        value = kwargs.pop(flag.name)
        if value is None:
            continue
        (data.setdefault(flag.parent, {}) if flag.parent else data)[flag.name] = value
    try:
        made = msgspec.convert(data, struct)
    except msgspec.ValidationError as exc:
        said, _, where = str(exc).partition(" - at `$")
        named = re.findall(r"\.(\w+)", where)
        hint = next((f.flag for f in flags if named and f.name == named[-1]), None)
        raise click.BadParameter(said, param_hint=None if hint is None else repr(hint)
                                 ) from None
    return {name: getattr(made, name) for name in data}
