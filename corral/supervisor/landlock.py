"""Landlock, probed: the ABI this kernel offers (`landlock_create_ruleset` with
LANDLOCK_CREATE_RULESET_VERSION), or why there is none (docs/sandbox.md#egress).

corral reports it (`corral doctor`) and does not enforce egress with it: its network
rules (ABI 4 on) bind TCP by port alone, so the gateway's port on any host would pass,
and they cover neither UDP nor unix sockets."""

from __future__ import annotations

import ctypes
import errno
import os

SYS_LANDLOCK_CREATE_RULESET = 444  # the same number on every architecture
CREATE_RULESET_VERSION = 1 << 0
# what each ABI added that matters to a boundary (the kernel's Documentation/userspace-api)
ADDED = {1: "filesystem rules", 4: "TCP bind/connect by port", 6: "abstract unix socket "
         "and signal scoping"}


def abi() -> tuple[int, str]:
    """(the ABI version, what it offers) where the kernel has Landlock on, else (0, why
    not)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        version = int(libc.syscall(SYS_LANDLOCK_CREATE_RULESET, None, 0,
                                   CREATE_RULESET_VERSION))
    except (OSError, AttributeError) as exc:
        return 0, f"the syscall could not be made ({exc})"
    if version > 0:
        offers = [what for since, what in sorted(ADDED.items()) if version >= since]
        return version, ", ".join(offers)
    err = ctypes.get_errno()
    if err == errno.ENOSYS:
        return 0, "this kernel has no Landlock (ENOSYS: built without CONFIG_SECURITY_LANDLOCK)"
    if err == errno.EOPNOTSUPP:
        return 0, ("Landlock is built in but not enabled (EOPNOTSUPP: add landlock to the "
                   "kernel's lsm= boot parameter)")
    return 0, f"landlock_create_ruleset failed: {os.strerror(err)}"
