"""The canonical forms policy rules match on (docs/security.md#policy-rules): a path as the
file system reads it, a host as a resolver does. A rule compares canonical forms on both
sides, so spelling a value otherwise than its rule does (`//etc/passwd`, `evil.example.`,
`2852039166`) matches as the value it names (issue 88; decision 1130)."""

from __future__ import annotations

import ipaddress
import os
import re
import socket

# what inet_aton(3) reads as an IPv4 address beside dotted quads: integers, hex, octal and
# short forms (`2852039166`, `0xa9fea9fe`, `0251.0376.0251.0376`, `169.254.43518`)
_INET_ATON = re.compile(r"[0-9a-fx.]+")
# what any IP address is written with (an IPv6 one up to its scope's `%`), inet_aton's
# spellings too: a value with another character is neither, and is not parsed as one
# (two exceptions raised and caught a call: ~5 us of an MCP call's `in` test)
_IP_CHARS = frozenset("0123456789abcdefx.:")


def canonical_path(path: str) -> str | None:
    """`path` absolute and normalized (`..` resolved, a leading `//` one `/`: POSIX's
    normpath keeps two, and `//etc/passwd` passed a deny of `/etc`); None for a relative
    path, whose place is its server's cwd, which corral does not know."""
    if not path.startswith("/"):
        return None
    return "/" + os.path.normpath(path).lstrip("/")


def canonical_host(value: str) -> str:
    """`value` as a resolver reads a host: lower case, without the root's trailing dot, an
    IP address in its one written form (IPv4 dotted, from any inet_aton spelling; an
    IPv4-mapped IPv6 address as its IPv4; IPv6 compressed, brackets dropped). Another
    string is given back as `host_text` reads it."""
    v = host_text(value)
    if not addressed(v):
        return v
    try:
        ip = ipaddress.ip_address(v)
    except ValueError:
        if _INET_ATON.fullmatch(v):
            try:
                return socket.inet_ntoa(socket.inet_aton(v))
            except OSError:
                pass
        return v
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def host_text(value: str) -> str:
    """`value` lower-cased, its brackets and the root's trailing dot dropped: a host
    canonical_host reads as no IP address, as it gives it back."""
    v = value.lower()
    if v.startswith("[") and v.endswith("]"):
        v = v[1:-1]
    if len(v) > 1 and v.endswith("."):
        v = v[:-1]
    return v


def addressed(host: str) -> bool:
    """Whether canonical_host may read `host` (host_text's) as an IP address: what it
    gives back for one is written in these characters alone up to a scope's `%`, so a
    canonical host with another one there is no address's."""
    return _IP_CHARS.issuperset(host.partition("%")[0])
