"""The seccomp filters corral builds with libseccomp (corral/supervisor/seccomp.py): the
program read instruction by instruction (a classic BPF interpreter here runs it on the
calls it must refuse or allow), and the same program loaded in a real process, where an
x32 socket(2) kills it and io_uring_setup(2) fails."""

from __future__ import annotations

import errno
import json
import platform
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from corral.importer import jsbox
from corral.supervisor import seccomp
from corral.supervisor.config import AgentSpec, ConfigError
from corral.supervisor.configload import check_sandboxes

# (AUDIT_ARCH_*, socket, socketpair, io_uring_setup) by machine
ARCHES = {"x86_64": (0xC000003E, 41, 53, 425), "aarch64": (0xC00000B7, 198, 199, 425)}
pytestmark = pytest.mark.skipif(platform.machine() not in ARCHES or
                                seccomp.missing() is not None,
                                reason=f"no filter read here: {seccomp.missing()}")
ARCH, SOCKET, SOCKETPAIR, URING = ARCHES.get(platform.machine(), (0, 0, 0, 0))
X32 = 0x40000000
I386 = 0x40000003
ALLOW, KILL_PROCESS = 0x7FFF0000, 0x80000000


def refused(code: int) -> int:
    return 0x00050000 | code


def run(program: bytes, nr: int, *args: int, arch: int = ARCH) -> int:
    """The action `program` returns for a call (struct seccomp_data: nr, arch, ip, six
    arguments), by the instructions libseccomp emits (loads, jumps, returns)."""
    data = struct.pack("=iIQ6Q", nr, arch, 0, *args, *[0] * (6 - len(args)))
    ops = [struct.unpack_from("=HBBI", program, at) for at in range(0, len(program), 8)]
    a, x, pc = 0, 0, 0
    while True:
        code, jt, jf, k = ops[pc]
        pc += 1
        kind, src = code & 0x07, code & 0x08
        if kind == 0x06:  # BPF_RET | BPF_K
            return k
        if code == 0x20:  # BPF_LD | BPF_W | BPF_ABS
            a = struct.unpack_from("=I", data, k)[0]
        elif code == 0x00:  # BPF_LD | BPF_IMM
            a = k
        elif code == 0x01:  # BPF_LDX | BPF_IMM
            x = k
        elif code == 0x07:  # BPF_MISC | BPF_TAX
            x = a
        elif code == 0x87:  # BPF_MISC | BPF_TXA
            a = x
        elif kind == 0x05:  # BPF_JMP
            operand = x if src else k
            op = code & 0xF0
            if op == 0x00:  # BPF_JA
                pc += k
                continue
            taken = {0x10: a == operand, 0x20: a > operand, 0x30: a >= operand,
                     0x40: bool(a & operand)}[op]
            pc += jt if taken else jf
        elif kind == 0x04 and code & 0xF0 == 0x50:  # BPF_ALU | BPF_AND
            a &= x if src else k
        else:
            raise AssertionError(f"an instruction not read here: {code:#x} at {pc - 1}")


def test_egress_filter_allows_unix_and_ip_sockets_alone() -> None:
    program = seccomp.program(seccomp.EGRESS)
    assert program is not None
    for family in (socket.AF_UNIX, socket.AF_INET, socket.AF_INET6):
        assert run(program, SOCKET, family, socket.SOCK_STREAM) == ALLOW, family
    for family in (0, socket.AF_NETLINK, socket.AF_PACKET, 3, 9, 11, 0xFFFF,
                   (1 << 32) | socket.AF_INET, (1 << 64) - 1):
        assert run(program, SOCKET, family) == refused(errno.EAFNOSUPPORT), family
    assert run(program, SOCKETPAIR, socket.AF_UNIX) == ALLOW
    assert run(program, 0, 3) == ALLOW  # read(2), and any call not named


@pytest.mark.parametrize("kind", ["egress", "import"])
def test_each_filter_ends_io_uring_and_every_other_abi(kind: str) -> None:
    program = seccomp.program(seccomp.EGRESS if kind == "egress" else seccomp.IMPORT)
    assert program is not None
    for nr in (URING, URING + 1, URING + 2):  # io_uring_setup, _enter, _register
        assert run(program, nr, 1, 0) == refused(errno.ENOSYS), nr
    assert run(program, SOCKET, socket.AF_INET, arch=I386) == KILL_PROCESS
    if platform.machine() == "x86_64":
        # the x32 ABI: x86_64's arch, its numbers with the bit 0x40000000
        for nr in (SOCKET, SOCKETPAIR, URING, 0):
            assert run(program, X32 | nr, socket.AF_INET) == KILL_PROCESS, nr


def test_import_filter_refuses_every_socket() -> None:
    program = jsbox.seccomp_program()
    for family in (socket.AF_UNIX, socket.AF_INET, socket.AF_INET6, socket.AF_NETLINK):
        assert run(program, SOCKET, family) == refused(errno.EACCES), family
        assert run(program, SOCKETPAIR, family) == refused(errno.EACCES), family
    assert run(program, 0, 3) == ALLOW


# a process that loads the filter (as bubblewrap does: no new privileges, then the
# program) and makes one system call, printing its result and errno
UNDER_FILTER = """
import ctypes, json, sys
libc = ctypes.CDLL(None, use_errno=True)
program = open(sys.argv[1], "rb").read()
class Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]
assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
fprog = Fprog(len(program) // 8, program)
assert libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) == 0  # PR_SET_SECCOMP, FILTER
libc.syscall.restype = ctypes.c_long
said = libc.syscall(*(ctypes.c_long(int(a)) for a in sys.argv[2:]))
print(json.dumps([said, ctypes.get_errno()]))
"""


def under(program: bytes | None, tmp_path: Path, nr: int, *args: int) -> object:
    """The call's [result, errno] in a process under `program`, or the signal it was
    killed by."""
    assert program is not None
    path = tmp_path / "filter.bpf"
    path.write_bytes(program)
    done = subprocess.run([sys.executable, "-c", UNDER_FILTER, str(path), str(nr),
                           *map(str, args)], capture_output=True, text=True, timeout=60)
    if done.returncode < 0:
        return signal.Signals(-done.returncode).name
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("kind", ["egress", "import"])
def test_under_each_filter_io_uring_fails_and_x32_is_killed(kind: str,
                                                           tmp_path: Path) -> None:
    program = seccomp.program(seccomp.EGRESS if kind == "egress" else seccomp.IMPORT)
    # io_uring_setup(1, NULL): EFAULT where it reaches the kernel
    assert under(program, tmp_path, URING, 1, 0) == [-1, errno.ENOSYS]
    if platform.machine() == "x86_64":
        assert under(program, tmp_path, X32 | SOCKET, socket.AF_INET,
                     socket.SOCK_STREAM, 0) == "SIGSYS"
        assert under(program, tmp_path, X32 | URING, 1, 0) == "SIGSYS"
    # and a call the filter allows still works: getpid(2)
    said = under(program, tmp_path, 39 if platform.machine() == "x86_64" else 172)
    assert isinstance(said, list) and said[0] > 0


def test_without_libseccomp_no_filter_the_import_refused_and_egress_fails_closed(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Fail closed: an egress agent is refused at the config's check, no egress sandbox
    starts without its filter (its spawn fails, saying why), and no JavaScript file is
    run."""
    monkeypatch.setitem(sys.modules, "pyseccomp", None)  # its import fails, as unloaded
    monkeypatch.setattr(seccomp, "_written", None)  # (this process may have written one)
    why = ("pyseccomp (corral[daemon]'s binding of libseccomp) is not installed: install "
           "corral's dependencies again")
    assert seccomp.missing() == why
    assert seccomp.program(seccomp.EGRESS) is None
    with pytest.raises(OSError) as failed:
        seccomp.egress_file()
    assert str(failed.value) == (f"no seccomp filter can be built here ({why}): an egress "
                                 f"sandbox is not started without one")
    with pytest.raises(jsbox.SandboxRefusal) as refusal:
        jsbox.seccomp_program()
    assert str(refusal.value) == (
        f"no seccomp filter can be built here ({why}): a JavaScript ecosystem file is "
        f"not run here; {jsbox.ASK_JSON}")
    # an egress agent is refused as where no sandbox can be made (the hand-built filter
    # needed no library: its loss must not leave netlink and packet sockets open)
    spec = AgentSpec(name="boxed", command=["true"], cwd=str(tmp_path), egress="gateways")
    with pytest.raises(ConfigError) as refused:
        check_sandboxes({"boxed": spec}, "bwrap", "corral.toml")
    assert str(refused.value) == (
        f'corral.toml: agents.boxed.egress: egress = "gateways" cannot be enforced on this '
        f'host: {why} (egress_fallback = "warn" runs it unenforced)')
    check_sandboxes({"boxed": msgspec.structs.replace(spec, egress="any")}, "bwrap",
                    "corral.toml")  # no egress asked: no filter needed
