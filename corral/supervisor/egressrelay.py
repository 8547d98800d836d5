"""The gateways inside an egress = "gateways" sandbox (docs/sandbox.md#egress), without
root: `python -I -S egressrelay.py HOST PORT SOCKET -- ARGV...` listens on HOST:PORT in the
sandbox's empty network namespace, leaves a forwarder to SOCKET behind and execs the agent
(the listener exists before the exec, so the agent's first connection finds it).

The forwarder is double-forked: the child of the sandbox's init, not of the agent (which
may wait for its own children), and after the agent in the init's children
(sandbox.sandboxed_pid takes the first). Standard library only, no site: its start is all
egress adds to a start, so the agent's side imports nothing but `_socket`.
"""

import _socket  # the listener's, made before anything else is imported
import os
import sys

BUFFER = 65536


def pipe(src: _socket.socket, dst: _socket.socket) -> None:
    try:
        while data := src.recv(BUFFER):
            dst.sendall(data)
    except OSError:
        pass
    # the other direction may still be talking (a request sent whole, its answer not)
    try:  # noqa: SIM105  (contextlib is not imported on the agent's side)
        dst.shutdown(_socket.SHUT_WR)
    except OSError:
        pass


def serve(conn: _socket.socket, path: str) -> None:
    import threading

    up = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        up.connect(path)
    except OSError:
        up.close()
        conn.close()  # the agent sees its connection reset: the gateway is not there
        return
    back = threading.Thread(target=pipe, args=(up, conn), daemon=True)
    back.start()
    pipe(conn, up)
    back.join()
    up.close()
    conn.close()


def forward(raw: _socket.socket, path: str) -> None:
    import socket  # (the forwarder's alone: imported after the fork)
    import threading

    listener = socket.socket(fileno=raw.detach())
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn, path), daemon=True).start()


def main(argv: list[str]) -> None:
    host, port, path, sep = argv[1], int(argv[2]), argv[3], argv[4]
    if sep != "--" or len(argv) < 6:
        sys.exit("usage: egressrelay.py HOST PORT SOCKET -- ARGV...")
    family = _socket.AF_INET6 if ":" in host else _socket.AF_INET
    listener = _socket.socket(family, _socket.SOCK_STREAM)
    listener.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(128)  # from here the agent's connects queue, whenever it makes them
    if os.fork() == 0:
        if os.fork() == 0:
            os.setsid()  # out of the agent's group: a signal to it is not the relay's
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1):  # the agent's stdio is its link to corral
                os.dup2(devnull, fd)
            forward(listener, path)
        os._exit(0)
    os.wait()
    listener.close()  # (not inherited across exec either: Python's sockets are not)
    os.execv(argv[5], argv[5:])


if __name__ == "__main__":
    main(sys.argv)
