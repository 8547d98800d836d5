"""Every seccomp filter corral gives bubblewrap, built by libseccomp (its ctypes binding,
pyseccomp): an egress sandbox's (docs/sandbox.md#egress) and a JavaScript ecosystem
file's (importer/jsbox.py). Each allows what it does not name. Both end io_uring (a ring
makes sockets past any filter of socket(2)) and kill a call of another ABI: a 32-bit
call, or on x86_64 an x32 one (its number with the bit 0x40000000), which a filter of
x86_64's numbers alone would let through; libseccomp kills it for the architectures not
added, and only the native one is."""

from __future__ import annotations

import atexit
import errno
import os
import shutil
import socket
import tempfile
from typing import Any

# a call refused: its name, the errno it fails with, the values of its first argument it
# is still allowed with (none: always refused)
Refusal = tuple[str, int, tuple[int, ...]]

_RINGS: tuple[Refusal, ...] = tuple(
    (name, errno.ENOSYS, ()) for name in
    ("io_uring_setup", "io_uring_enter", "io_uring_register"))
# socket(2) of unix, IPv4 and IPv6 alone; another family fails as unsupported
EGRESS: tuple[Refusal, ...] = (
    ("socket", errno.EAFNOSUPPORT, (socket.AF_UNIX, socket.AF_INET, socket.AF_INET6)),
    *_RINGS)
# no socket at all: connect(2) to a unix socket in the file's tree needs no write
# permission, a read-only mount is no guard
IMPORT: tuple[Refusal, ...] = (
    ("socket", errno.EACCES, ()), ("socketpair", errno.EACCES, ()), *_RINGS)


def _libseccomp() -> Any:
    """pyseccomp, or None where it or libseccomp (Debian's libseccomp2, which its import
    loads) is missing."""
    try:
        import pyseccomp
    except (ImportError, RuntimeError, OSError):
        return None
    return pyseccomp


def missing() -> str | None:
    """Why no filter can be built here, or None."""
    if _libseccomp() is not None:
        return None
    try:
        import pyseccomp  # noqa: F401
    except ImportError:
        return ("pyseccomp (corral[daemon]'s binding of libseccomp) is not installed: "
                "install corral's dependencies again")
    except (RuntimeError, OSError):
        pass
    return "libseccomp is not installed (Debian's package is libseccomp2)"


def program(refusals: tuple[Refusal, ...]) -> bytes | None:
    """The filter as bubblewrap reads it (struct sock_filter's, packed), or None where
    `missing()` says why."""
    lib = _libseccomp()
    if lib is None:
        return None
    built = lib.SyscallFilter(lib.ALLOW)
    built.set_attr(lib.Attr.ACT_BADARCH, lib.KILL_PROCESS)
    for name, code, allowed in refusals:
        for compared in _outside(lib, allowed):
            built.add_rule(lib.ERRNO(code), name, *compared)
    with tempfile.TemporaryFile() as out:
        built.export_bpf(out)
        out.seek(0)
        return out.read()


def _outside(lib: Any, allowed: tuple[int, ...]) -> list[tuple[Any, ...]]:
    """The first argument's comparisons, a rule each, that together hold for every value
    but `allowed`'s (libseccomp compares an argument once per rule: the values below the
    largest allowed one named one by one, and every value above it)."""
    if not allowed:
        return [()]
    top = max(allowed)
    return [(lib.Arg(0, lib.EQ, value),) for value in range(top) if value not in allowed] \
        + [(lib.Arg(0, lib.GT, top),)]


_written: str | None = None


def egress_file() -> str:
    """The egress filter in a file every user may read (the sandbox's shell opens it as
    the agent's user), written once per process. Where none can be built the sandbox is
    not started (OSError, its spawn's failure): bwrap alone would let netlink, packet and
    raw sockets through, an egress that fails open (DESIGN 27)."""
    global _written
    if _written is not None:
        return _written
    code = program(EGRESS)
    if code is None:
        raise OSError(f"no seccomp filter can be built here ({missing()}): an egress "
                      f"sandbox is not started without one")
    where = tempfile.mkdtemp(prefix="corral-seccomp-")
    atexit.register(shutil.rmtree, where, True)
    os.chmod(where, 0o755)
    path = os.path.join(where, "egress.bpf")
    with open(path, "wb") as f:
        f.write(code)
    os.chmod(path, 0o644)
    _written = path
    return path
