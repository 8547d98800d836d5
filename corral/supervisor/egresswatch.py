"""What an egress sandbox tried and its network namespace refused, seen (issue 88): in a
namespace the daemon holds (egressdoors.py, as root), every address is made local (`local
0.0.0.0/0` and `::/0` on the loopback), so that whatever the agent sends goes by the
loopback, and a packet socket there reads it. A connect nothing listens to is answered by
the kernel's reset ("Connection refused", at once); a datagram nothing takes, by its ICMP
port unreachable. Each such answer is a refusal told to refusals.py, with the agent, its
task and the address: `connect` or `send` to HOST:PORT.

Nothing is let out by this: the namespace has no route but its loopback, as before; what
changes is that a connect off the host is refused by the loopback rather than found
unroutable. A connect something in the namespace answers (the gateways' listener, one of
the agent's own) is no refusal.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable

from .refusals import BoundaryRefusals

# rtnetlink (linux/rtnetlink.h, netlink.h)
RTM_NEWROUTE = 24
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
RT_TABLE_LOCAL, RTPROT_BOOT, RT_SCOPE_HOST, RTN_LOCAL, RTA_OIF = 255, 3, 254, 2, 4
NLMSG_ERROR = 2
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
SYN, RST, ACK = 0x02, 0x04, 0x10
TCP, UDP, ICMP, ICMPV6 = 6, 17, 1, 58
PENDING = 4096  # connects awaiting their answer, kept at most (the oldest forgotten)
READS = 256  # packets read a turn of the loop, at most
SO_RCVBUFFORCE = 33
RECEIVE_BUFFER = 16 * 1024 * 1024
PACKET_MAX = 65535
# each loop's thread reads every watch's packets into one buffer of its own, made once: a
# block of the largest packet's size taken and freed at every read (or at every watch)
# left holes in the loop's heap as it turned over (issue 90)
_buffers = threading.local()


def _route_all_local(family: int) -> None:
    """`ip route add local DEFAULT dev lo table local` in this thread's namespace."""
    rtmsg = struct.pack("=BBBBBBBBI", family, 0, 0, 0, RT_TABLE_LOCAL, RTPROT_BOOT,
                        RT_SCOPE_HOST, RTN_LOCAL, 0)
    body = rtmsg + struct.pack("=HHI", 8, RTA_OIF, socket.if_nametoindex("lo"))
    head = struct.pack("=IHHII", 16 + len(body), RTM_NEWROUTE,
                       NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, 1, 0)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as nl:
        nl.send(head + body)
        answer = nl.recv(4096)
    kind = struct.unpack_from("=H", answer, 4)[0]
    err = struct.unpack_from("=i", answer, 16)[0] if kind == NLMSG_ERROR else 0
    if err:
        raise OSError(-err, f"a local default route: {err}")


def listen_here() -> socket.socket:
    """In the calling thread's network namespace (the daemon's own for a replica): every
    address local, and the packet socket that sees the loopback's traffic, non-blocking.
    OSError where it cannot be made (no IPv6 in it is no error)."""
    _route_all_local(socket.AF_INET)
    with contextlib.suppress(OSError):
        _route_all_local(socket.AF_INET6)
    packets = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
    try:
        packets.bind(("lo", ETH_P_ALL))
        # room for a flood's packets while the loop is busy (root may pass rmem_max)
        with contextlib.suppress(OSError):
            packets.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER)
        packets.setblocking(False)
    except BaseException:
        packets.close()
        raise
    return packets


def _shown(addr: bytes, port: int) -> str:
    ip = ipaddress.ip_address(addr)
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def _ip(packet: bytes) -> tuple[int, bytes, bytes, bytes] | None:
    """(protocol, source, destination, payload) of an IPv4 or IPv6 packet."""
    if len(packet) < 20:
        return None
    version = packet[0] >> 4
    if version == 4:
        ihl = (packet[0] & 0x0F) * 4
        return packet[9], packet[12:16], packet[16:20], packet[ihl:]
    if version == 6 and len(packet) >= 40:
        return packet[6], packet[8:24], packet[24:40], packet[40:]
    return None


class Watch:
    """One replica's namespace seen: its refused connects and sends told to `refusals`
    as agent `agent`'s, of the task `task_of` says (None: of no task)."""

    def __init__(self, packets: socket.socket, refusals: BoundaryRefusals, agent: str,
                 task_of: Callable[[], str | None]) -> None:
        self.packets = packets
        self.refusals = refusals
        self.agent = agent
        self.task_of = task_of
        # (source, its port, destination, its port) of a SYN not answered yet
        self.pending: OrderedDict[tuple[bytes, int, bytes, int], None] = OrderedDict()
        asyncio.get_running_loop().add_reader(packets.fileno(), self._read)

    def close(self) -> None:
        with contextlib.suppress(ValueError, RuntimeError):  # (the loop gone first)
            asyncio.get_running_loop().remove_reader(self.packets.fileno())
        self.packets.close()

    def _read(self) -> None:
        view: memoryview | None = getattr(_buffers, "view", None)
        if view is None:
            view = _buffers.view = memoryview(bytearray(PACKET_MAX))
        for _ in range(READS):
            try:
                size, where = self.packets.recvfrom_into(view)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if where[2] == PACKET_OUTGOING:  # (the loopback shows each twice)
                self.seen(bytes(view[:size]))

    def seen(self, packet: bytes) -> None:
        ip = _ip(packet)
        if ip is None:
            return
        proto, src, dst, payload = ip
        if proto == TCP and len(payload) >= 14:
            sport, dport = struct.unpack_from("!HH", payload)
            flags = payload[13]
            if flags & SYN and not flags & ACK:
                self.pending[(src, sport, dst, dport)] = None
                if len(self.pending) > PENDING:
                    self.pending.popitem(last=False)
            elif flags & (SYN | RST):  # an answer to (dst, dport)'s SYN
                key = (dst, dport, src, sport)
                if key in self.pending:
                    del self.pending[key]
                    if flags & RST:
                        self._refused("connect", src, sport)
        elif proto in (ICMP, ICMPV6) and len(payload) >= 8:
            unreachable = payload[0] == 3 if proto == ICMP else payload[0] == 1
            inner = _ip(payload[8:]) if unreachable else None
            if inner is not None and inner[0] == UDP and len(inner[3]) >= 4:
                self._refused("send", inner[2], struct.unpack_from("!H", inner[3], 2)[0])

    def _refused(self, kind: str, addr: bytes, port: int) -> None:
        self.refusals.refused(self.agent, kind, _shown(addr, port), task=self.task_of())
