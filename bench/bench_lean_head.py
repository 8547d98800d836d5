"""Issue 86: the gateways' request heads read by the lean path (corral/daemon/models/
lean.py `_head`: httptools, llhttp's parser, pinned, then the checks of the common shape)
beside the hand parser it replaced (`hand_head` below, as lean.py had it at aa98fb22): the
head a real client sends, read into what lean needs (the endpoint, the path, the headers
by lowercased name, the Content-Length). httptools' parse alone is measured too, with a
parser made for each head (as `_head` does) and with one parser per connection fed each
whole request (head and body).

    .venv/bin/python -m bench.bench_lean_head [--n 50000] [--rounds 7]

Prints, per head, the median over the rounds of the µs of the thread's CPU a head took.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from collections.abc import Callable
from typing import Any

import httptools

from corral.daemon.models import lean

BODY = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'


def request(path: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers),
             f"Content-Length: {len(BODY)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + BODY


HEADS = {
    # what openai's Python client sends (its x-stainless-* headers included)
    "openai client, 14 headers": request("/v1/chat/completions", [
        ("Host", "127.0.0.1:8765"), ("Accept-Encoding", "gzip, deflate"),
        ("Connection", "keep-alive"), ("Accept", "application/json"),
        ("Content-Type", "application/json"), ("User-Agent", "OpenAI/Python 3.57.0"),
        ("X-Stainless-Lang", "python"), ("X-Stainless-Package-Version", "3.57.0"),
        ("X-Stainless-OS", "Linux"), ("X-Stainless-Arch", "x64"),
        ("X-Stainless-Runtime", "CPython"), ("X-Stainless-Runtime-Version", "3.11.2"),
        ("Authorization", "Bearer crl_" + "x" * 40)]),
    "MCP POST, 7 headers": request("/mcp", [
        ("Host", "127.0.0.1:8765"), ("Accept", "application/json, text/event-stream"),
        ("Content-Type", "application/json"), ("Mcp-Session-Id", "s" * 32),
        ("Mcp-Protocol-Version", "2025-06-18"), ("Authorization", "Bearer crl_" + "x" * 40)]),
    "bare, 2 headers": request("/v1/chat/completions", [("Host", "127.0.0.1:8765")]),
}


class Collected:
    """httptools' callbacks: the URL and the headers as they are read."""

    __slots__ = ("done", "names", "url", "values")

    def __init__(self) -> None:
        self.url = b""
        self.names: list[bytes] = []
        self.values: list[bytes] = []
        self.done = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.names.append(name)
        self.values.append(value)

    def on_headers_complete(self) -> None:
        self.done = True


# the hand parser lean.py had (its regexes and `_head`), the peer measured
_LINE = re.compile(rb"POST (/[!$%%&-;=?-Z_a-z~]{0,%d}) HTTP/1\.1" % (lean.MAX_FIELD - 14))
_FIELDS = re.compile(r"(?:(?<=\r\n)|\A)([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*+"
                     r"((?:[\t\x20-\x7e]*[\x21-\x7e])?+)[ \t]*+(?:\r\n|\Z)")


def hand_head(head: bytes) -> tuple[Any, str, dict[str, str], int] | None:
    lines = head.split(b"\r\n")
    line = _LINE.fullmatch(lines[0])
    endpoint = lean._PATHS.get(path := line[1].partition(b"?")[0] if line else b"")
    if line is None or (endpoint is None and path != lean.MCP) or not 1 < len(lines) <= \
            lean.MAX_HEADERS or max(map(len, lines[1:])) > lean.MAX_FIELD:
        return None
    fields = _FIELDS.findall(head[len(lines[0]) + 2:].decode("latin-1"))
    if len(fields) != len(lines) - 1:
        return None
    headers = {name.lower(): value for name, value in fields}
    if len(headers) < len(fields) or not lean._ASKING.isdisjoint(headers) or \
            headers.get("connection", "close").lower() not in ("keep-alive", "close"):
        return None
    length = headers.get("content-length", "")
    return (endpoint, line[1].decode(), headers, int(length)) if "host" in headers \
        and length.isdecimal() and int(length) <= lean.LEAN_BODY else None


def hand(whole: bytes) -> Callable[[], object]:
    head = whole[:whole.index(b"\r\n\r\n")]
    return lambda: hand_head(head)


def lean_head(whole: bytes) -> Callable[[], object]:
    head = whole[:whole.index(b"\r\n\r\n") + 4]
    return lambda: lean._head(head)


def per_head(whole: bytes) -> Callable[[], object]:
    head = whole[:whole.index(b"\r\n\r\n") + 4]

    def run() -> object:
        got = Collected()
        httptools.HttpRequestParser(got).feed_data(head)
        return got.done

    return run


def per_connection(whole: bytes) -> Callable[[], object]:
    got = Collected()
    parser = httptools.HttpRequestParser(got)

    def run() -> object:
        got.url, got.names, got.values, got.done = b"", [], [], False
        parser.feed_data(whole)  # (the body too: the parser is at its next request)
        return got.done

    return run


def timed(fn: Callable[[], object], n: int, rounds: int) -> float:
    assert fn()  # (each reads the head as lean would take it)
    medians = []
    for _ in range(rounds):
        start = time.thread_time_ns()
        for _ in range(n):
            fn()
        medians.append((time.thread_time_ns() - start) / n / 1000)
    return statistics.median(medians)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--rounds", type=int, default=7)
    a = ap.parse_args()
    variants: dict[str, Callable[[bytes], Callable[[], object]]] = {
        "the hand parser (lean.py before)": hand,
        "lean._head now: httptools + the shape's checks": lean_head,
        "httptools' parse alone, a parser per head": per_head,
        "httptools' parse alone, a parser per connection": per_connection,
    }
    print(f"httptools {httptools.__version__}; µs per head, median of {a.rounds} rounds "
          f"of {a.n} (the thread's CPU time)")
    for name, whole in HEADS.items():
        print(f"\n{name} ({len(whole) - len(BODY)} bytes of head)")
        for variant, make in variants.items():
            print(f"  {variant:52s} {timed(make(whole), a.n, a.rounds):6.2f}")


if __name__ == "__main__":
    main()
