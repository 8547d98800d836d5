"""The socket families an egress sandbox may open (docs/sandbox.md#egress): a seccomp
filter for bubblewrap's `--seccomp FD` under which `socket(2)` makes only unix, IPv4 and
IPv6 sockets (else EAFNOSUPPORT), io_uring is absent (ENOSYS) and every call of another ABI
is refused. Classic BPF built here; on an unknown architecture `program()` says None."""

from __future__ import annotations

import atexit
import errno
import os
import platform
import shutil
import socket
import struct
import tempfile

# BPF opcodes (linux/filter.h) and seccomp's (linux/seccomp.h)
LD_W_ABS = 0x20
JEQ_K = 0x15
RET_K = 0x06
RET_ALLOW = 0x7FFF0000
RET_ERRNO = 0x00050000
# seccomp_data: nr at 0, arch at 4, args[0] at 16 (its low half: little-endian)
NR, ARCH, ARG0 = 0, 4, 16
# (AUDIT_ARCH_*, __NR_socket, __NR_io_uring_setup) by machine
ARCHES = {
    "x86_64": (0xC000003E, 41, 425),
    "aarch64": (0xC00000B7, 198, 425),
}
ALLOWED_FAMILIES = (socket.AF_UNIX, socket.AF_INET, socket.AF_INET6)


def _op(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def program(machine: str | None = None) -> bytes | None:
    """The filter as bubblewrap reads it (struct sock_filter's, packed), or None."""
    known = ARCHES.get(machine or platform.machine())
    if known is None:
        return None
    arch, nr_socket, nr_uring = known
    families = len(ALLOWED_FAMILIES)
    ops = [
        _op(LD_W_ABS, ARCH),
        _op(JEQ_K, arch, 1, 0),  # another ABI: refused whole
        _op(RET_K, RET_ERRNO | errno.ENOSYS),
        _op(LD_W_ABS, NR),
        _op(JEQ_K, nr_uring, 0, 1),
        _op(RET_K, RET_ERRNO | errno.ENOSYS),
        # not socket(2): allowed (jump past the family checks and the refusal)
        _op(JEQ_K, nr_socket, 0, families + 2),
        _op(LD_W_ABS, ARG0),
    ]
    for i, family in enumerate(ALLOWED_FAMILIES):
        # a family allowed: to the allow at the end, past the checks left and the refusal
        ops.append(_op(JEQ_K, family, families - i, 0))
    ops.append(_op(RET_K, RET_ERRNO | errno.EAFNOSUPPORT))
    ops.append(_op(RET_K, RET_ALLOW))
    return b"".join(ops)


_written: str | None = None


def filter_file() -> str | None:
    """The filter in a file every user may read (the sandbox's shell opens it as the
    agent's user), written once per process; None where there is no filter."""
    global _written
    if _written is not None:
        return _written
    code = program()
    if code is None:
        return None
    where = tempfile.mkdtemp(prefix="corral-seccomp-")
    atexit.register(shutil.rmtree, where, True)
    os.chmod(where, 0o755)
    path = os.path.join(where, "egress.bpf")
    with open(path, "wb") as f:
        f.write(code)
    os.chmod(path, 0o644)
    _written = path
    return path
