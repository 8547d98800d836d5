"""JSON5 read as data: what PM2's users write in a `.json` ecosystem file besides JSON
(comments, trailing commas, unquoted keys, single-quoted strings, hexadecimal numbers,
Infinity and NaN). pm2 evaluates a `.json` as JavaScript; corral import never runs one:
anything past JSON5 (a call, a variable, `process.env`) is refused where it stands."""

from __future__ import annotations

import json
import math
import re
from typing import Any, NoReturn

_IDENT = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*")
_NUMBER = re.compile(r"[+-]?(0[xX][0-9A-Fa-f]+|Infinity|NaN|(\d+\.?\d*|\.\d+)"
                     r"([eE][+-]?\d+)?)")
_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "0": "\0",
            "\n": "", "\r": "", "\u2028": "", "\u2029": ""}
_SPACE = re.compile(r"\s+|//[^\n]*|/\*.*?\*/", re.S)
_WORDS = {"true": True, "false": False, "null": None}
MAX_DEPTH = 200


class Json5Error(ValueError):
    """Where the text stops being JSON5, and what was expected there."""


def loads(text: str) -> Any:
    reader = _Reader(text)
    value = reader.value(0)
    reader.space()
    if reader.pos != len(text):
        reader.fail("the end of the text")
    return value


class _Reader:
    def __init__(self, text: str) -> None:
        self.text, self.pos = text, 0

    def fail(self, expected: str) -> NoReturn:
        line = self.text.count("\n", 0, self.pos) + 1
        column = self.pos - (self.text.rfind("\n", 0, self.pos) + 1) + 1
        found = self.text[self.pos:self.pos + 12].split("\n")[0]
        raise Json5Error(f"line {line} column {column}: expected {expected}, found "
                         f"{json.dumps(found) if found else 'the end'}")

    def space(self) -> None:
        while True:
            m = _SPACE.match(self.text, self.pos)
            if m is None or m.end() == self.pos:
                if self.text.startswith("/*", self.pos):
                    self.fail("the end of the comment (*/)")
                return
            self.pos = m.end()

    def value(self, depth: int) -> Any:
        if depth > MAX_DEPTH:
            self.fail(f"at most {MAX_DEPTH} levels of nesting")
        self.space()
        c = self.text[self.pos:self.pos + 1]
        if c == "{":
            return self.members(depth)
        if c == "[":
            return self.items(depth)
        if c in ("'", '"'):
            return self.string()
        m = _NUMBER.match(self.text, self.pos)
        if m is not None:
            self.pos = m.end()
            return _number(m[0])
        m = _IDENT.match(self.text, self.pos)
        if m is not None and m[0] in _WORDS:
            self.pos = m.end()
            return _WORDS[m[0]]
        self.fail("a value (JSON5: an object, array, string, number, true, false or "
                  "null; a .json file is data, never run)")

    def members(self, depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        self.pos += 1
        while True:
            self.space()
            if self.text.startswith("}", self.pos):
                self.pos += 1
                return out
            c = self.text[self.pos:self.pos + 1]
            if c in ("'", '"'):
                key = self.string()
            else:
                m = _IDENT.match(self.text, self.pos)
                if m is None:
                    self.fail("a key or }")
                key, self.pos = m[0], m.end()
            self.space()
            if not self.text.startswith(":", self.pos):
                self.fail(":")
            self.pos += 1
            out[key] = self.value(depth + 1)
            self.space()
            if self.text.startswith(",", self.pos):
                self.pos += 1
            elif not self.text.startswith("}", self.pos):
                self.fail(", or }")

    def items(self, depth: int) -> list[Any]:
        out: list[Any] = []
        self.pos += 1
        while True:
            self.space()
            if self.text.startswith("]", self.pos):
                self.pos += 1
                return out
            out.append(self.value(depth + 1))
            self.space()
            if self.text.startswith(",", self.pos):
                self.pos += 1
            elif not self.text.startswith("]", self.pos):
                self.fail(", or ]")

    def string(self) -> str:
        quote = self.text[self.pos]
        self.pos += 1
        out: list[str] = []
        while True:
            if self.pos >= len(self.text):
                self.fail(f"the closing {quote}")
            c = self.text[self.pos]
            self.pos += 1
            if c == quote:  # \u escapes of a pair of surrogates are one character
                return "".join(out).encode("utf-16", "surrogatepass").decode(
                    "utf-16", "replace")
            if c == "\n":
                self.pos -= 1
                self.fail(f"the closing {quote} before the line's end")
            if c != "\\":
                out.append(c)
                continue
            e = self.text[self.pos:self.pos + 1]
            self.pos += 1
            if e == "\r" and self.text.startswith("\n", self.pos):
                self.pos += 1
            if e in _ESCAPES:
                out.append(_ESCAPES[e])
            elif e in ("x", "u"):
                n = 2 if e == "x" else 4
                digits = self.text[self.pos:self.pos + n]
                if not re.fullmatch(f"[0-9A-Fa-f]{{{n}}}", digits):
                    self.pos -= 2
                    self.fail(f"\\{e} and {n} hexadecimal digits")
                out.append(chr(int(digits, 16)))
                self.pos += n
            else:
                out.append(e)  # \' \" \\ \/ and any other character as itself


def _number(text: str) -> int | float:
    sign = -1 if text.startswith("-") else 1
    body = text.lstrip("+-")
    if body.lower().startswith("0x"):
        return sign * int(body, 16)
    if body == "Infinity":
        return sign * math.inf
    if body == "NaN":
        return math.nan
    if re.fullmatch(r"\d+", body):
        return sign * int(body)
    return sign * float(body)
