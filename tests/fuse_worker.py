"""A worker with a thread stuck where the cgroup freezer cannot stop it: a lookup on a
FUSE file system of its own whose server (a child process, in the same cgroup) holds the
request. The freezer interrupts the wait, the kernel then waits for the server's answer
in a killable sleep (no freezer), and the server is frozen: the cgroup does not report
frozen until it is thawed. Root only (a mount namespace and a FUSE mount of its own,
gone with the process: nothing changes outside it).

Only the server holds the FUSE device: whatever kills it (with or without this process)
aborts the connection and ends the lookup. A server in this process would deadlock it on
a SIGKILL (the dying lookup waits for an answer nobody is left to give, and the device
stays open while it waits).

Tasks: {"do": "stick"} starts the lookup on a thread (answered once the server holds the
request); {"do": "info"}: its pid and what the lookup ended with, once one started has
ended (waited for at most 10 s)."""

import ctypes
import errno
import os
import select
import signal
import struct
import tempfile
import threading

from corral.worker import run

CLONE_NEWNS = 0x00020000
MS_REC, MS_PRIVATE, MS_NOSUID, MS_NODEV = 0x4000, 0x40000, 0x2, 0x4
INIT, LOOKUP, INTERRUPT = 26, 1, 36
IN_HEADER = struct.Struct("<IIQQIIII")  # len, opcode, unique, nodeid, uid, gid, pid, pad
OUT_HEADER = struct.Struct("<IiQ")  # len, error, unique

libc = ctypes.CDLL(None, use_errno=True)


def check(rc: int, what: str) -> None:
    if rc != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


# while the process has one thread (unshare of a mount namespace needs that)
check(libc.unshare(CLONE_NEWNS), "unshare")
check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "make / private")
# its mount point in a /tmp of its own: nothing is left behind in the machine's
check(libc.mount(b"tmpfs", b"/tmp", b"tmpfs", MS_NOSUID | MS_NODEV, b"size=1m"), "tmpfs")
mnt = tempfile.mkdtemp(prefix="corral-fuse-")
dev = os.open("/dev/fuse", os.O_RDWR)
check(libc.mount(b"corral-test", mnt.encode(), b"fuse", MS_NOSUID | MS_NODEV,
                 f"fd={dev},rootmode=40000,user_id=0,group_id=0".encode()), "mount fuse")

PR_SET_PDEATHSIG = 1
held_r, held_w = os.pipe()  # a byte: the server holds a lookup
ended: list[str] = []  # how the lookup ended
lookup_started, lookup_ended = threading.Event(), threading.Event()


def reply(unique: int, error: int, body: bytes = b"") -> None:
    os.write(dev, OUT_HEADER.pack(OUT_HEADER.size + len(body), -error, unique) + body)


def serve() -> None:
    holding: int | None = None
    held = False
    while True:
        try:
            data = os.read(dev, 1 << 20)
        except OSError as exc:
            if exc.errno == errno.ENODEV:  # unmounted
                return
            raise
        _, opcode, unique, *_ = IN_HEADER.unpack_from(data)
        body = data[IN_HEADER.size:]
        if opcode == INIT:
            _major, minor = struct.unpack_from("<II", body)
            # major, minor, max_readahead, flags, max_background, congestion_threshold,
            # max_write, time_gran, max_pages, map_alignment, flags2, unused[7]
            out = struct.pack("<IIIIHHIIHHI7I", 7, min(minor, 31), 0, 0, 1, 1, 4096, 1,
                              1, 0, 0, *[0] * 7)
            reply(unique, 0, out)
        elif opcode == LOOKUP and not held:
            holding = unique  # the first lookup waits for an answer; a retry is answered
            held = True
            os.write(held_w, b"h")
        elif opcode == INTERRUPT and holding is not None:
            (of,) = struct.unpack_from("<Q", body)
            if of == holding:  # asked to give it up: it ends with EINTR, after a thaw
                reply(holding, errno.EINTR)
                holding = None
        else:
            reply(unique, errno.ENOENT)


def stick() -> None:
    try:
        os.stat(os.path.join(mnt, "held"))
    except OSError as exc:
        ended.append(exc.strerror or str(exc))
    else:
        ended.append("found")
    lookup_ended.set()


server = os.fork()
if server == 0:
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # it goes with the agent
    try:
        serve()
    finally:
        os._exit(0)
os.close(dev)


def handle(task, ctx):
    if task.get("do") == "stick":
        lookup_started.set()
        threading.Thread(target=stick, daemon=True).start()
        assert select.select([held_r], [], [], 10)[0], "no lookup reached the server"
        os.read(held_r, 1)
        return {"pid": os.getpid(), "stuck": True}
    # the thawed server answers the lookup on its own time: an info asked right after a
    # resume waits for the lookup's end, bounded, and says what it saw
    if lookup_started.is_set():
        lookup_ended.wait(10)
    return {"pid": os.getpid(), "ended": ended}


if __name__ == "__main__":
    run(handle)
