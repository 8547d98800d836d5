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

from ..http1answer import Http1Answer, read_from
from ..timeouts import within
from .config import tcp_address


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
        code, reason = await _status(reader)
    finally:
        await _close(writer)
    said = f"GET {url}: {code}" + (f" {reason}" if reason else "")
    return ProbeResult(200 <= code < 400, said)


async def _status(reader: asyncio.StreamReader) -> tuple[int, str]:
    """The answer's status and reason once its final head is whole (ValueError: it broke
    HTTP/1.1 or a bound, or the connection ended first). What follows it is not read: a
    refusal of it (a body, a next answer read with the head) fails nothing."""
    answer = Http1Answer("the server", ValueError)
    try:
        while not answer.head_done:
            await read_from(reader, answer)
    except ValueError:
        if not answer.head_done:
            raise
    finally:
        answer.close()
    return answer.status, answer.reason.decode("latin-1").strip()


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError):
        await writer.wait_closed()
