"""Health checks corral makes itself, from the daemon: a TCP connection and an HTTP GET,
bounded by the check's timeout. They connect from the daemon's network namespace, so an
agent with a network of its own is refused one (configload.isolation_problem).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import urllib.parse
from typing import NamedTuple

from ..timeouts import within
from .config import tcp_address

# the longest status line read from an HTTP answer; the rest of the answer is not read
STATUS_LINE_MAX = 1024


class ProbeResult(NamedTuple):
    ok: bool
    message: str


async def probe_tcp(address: str, timeout: float) -> ProbeResult:
    parsed = tcp_address(address)
    if parsed is None:  # (config refuses it; a probe never raises)
        return ProbeResult(False, f"{address!r} is not HOST:PORT")
    host, port = parsed
    try:
        _, writer = await within(asyncio.open_connection(host, port), timeout)
    except TimeoutError:
        return ProbeResult(False, f"connect to {address}: no answer within {timeout:g} s")
    except OSError as exc:
        return ProbeResult(False, f"connect to {address}: {exc.strerror or exc}")
    await _close(writer)
    return ProbeResult(True, f"{address} accepts connections")


async def probe_http(url: str, timeout: float) -> ProbeResult:
    """Passes when a GET of `url` answers a status of 200-399 within `timeout` (a redirect
    is an answer: it is not followed)."""
    try:
        return await within(_get(url), timeout)
    except TimeoutError:
        return ProbeResult(False, f"GET {url}: no answer within {timeout:g} s")
    except (OSError, ValueError) as exc:
        return ProbeResult(False, f"GET {url}: {getattr(exc, 'strerror', None) or exc}")


async def _get(url: str) -> ProbeResult:
    u = urllib.parse.urlsplit(url)
    tls = u.scheme == "https"
    host = u.hostname or ""
    port = u.port or (443 if tls else 80)
    target = (u.path or "/") + (f"?{u.query}" if u.query else "")
    reader, writer = await asyncio.open_connection(
        host, port, ssl=ssl.create_default_context() if tls else None,
        server_hostname=host if tls else None)
    try:
        netloc = u.netloc.rpartition("@")[2]  # never a URL's credentials in a header
        writer.write(f"GET {target} HTTP/1.1\r\nHost: {netloc}\r\nUser-Agent: corral-health"
                     f"\r\nAccept: */*\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        line = await reader.readline()
    finally:
        await _close(writer)
    parts = line[:STATUS_LINE_MAX].decode("latin-1").split(None, 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdecimal():
        return ProbeResult(False, f"GET {url}: not an HTTP answer: {line[:80]!r}")
    code = int(parts[1])
    said = f"GET {url}: {code}" + (f" {parts[2].strip()}" if len(parts) > 2 else "")
    return ProbeResult(200 <= code < 400, said)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError):
        await writer.wait_closed()
