"""`corral doctor`: what this host offers to enforce an agent's boundary, and which layer
each agent of a config runs under, or why it cannot.

Every answer is a probe made now (a real sandbox tried, the Landlock syscall made), never
a guess from the kernel's version: a container, an AppArmor profile or a systemd unit may
forbid what the settings allow."""

from __future__ import annotations

import os
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from ..supervisor.config import Config
from ..supervisor.containment import is_delegated, own_cgroup
from ..supervisor.isolation import Isolation, isolation
from ..supervisor.landlock import abi
from ..supervisor.sandbox import host_refusal
from ..supervisor.seccomp import missing

NETWORKS = {
    "host": "the host's network",
    "none": "an empty network namespace",
    "gateway": "an empty network namespace, the gateway's unix socket bound in",
}


# who listens at the gateways' address in an egress = "gateways" sandbox
GATEWAYS_HOW = ("the daemon's own listener where it runs as root, else a relay started "
                "in the sandbox")


class Probe(NamedTuple):
    name: str
    ok: bool
    said: str


def seccomp() -> Probe:
    try:
        with open("/proc/self/status") as f:
            fields = {line.split(":", 1)[0] for line in f}
    except OSError as exc:
        return Probe("seccomp", False, f"/proc/self/status unreadable: {exc.strerror}")
    if "Seccomp_filters" in fields:
        why = missing()
        if why is not None:
            return Probe("seccomp", False, f"filters, but corral builds none: {why}")
        return Probe("seccomp", True, "filters: an egress sandbox's sockets are unix, "
                                      "IPv4 and IPv6 alone")
    if "Seccomp" in fields:
        return Probe("seccomp", False, "strict mode only: this kernel has no filters")
    return Probe("seccomp", False, "this kernel has no seccomp")


def cgroups() -> Probe:
    own = own_cgroup()
    if own is None:
        return Probe("cgroup delegation", False, "no cgroup v2 hierarchy for this process")
    if not os.access(own, os.W_OK):
        return Probe("cgroup delegation", False, f"{own} is not writable (no Delegate=yes?)")
    if not is_delegated(own):
        return Probe("cgroup delegation", False, f"{own} is writable but not marked "
                                                 "delegated (no Delegate=yes)")
    return Probe("cgroup delegation", True, own)


def host(program: str) -> list[Probe]:
    """What this host offers, each with what it said."""
    why = host_refusal(program, None)
    userns = Probe("user namespaces", why is None,
                   why or "bubblewrap makes a sandbox with a user namespace of its own")
    version, said = abi()
    landlock = Probe("landlock", version > 0,
                     f"ABI {version}: {said} (reported; not an egress layer: its network "
                     "rules are TCP by port alone)" if version else said)
    layer = Probe("egress layer", why is None,
                  "bubblewrap: a network namespace of its own, the gateways reachable in it"
                  if why is None else f"none: {why}")
    return [userns, landlock, seccomp(), cgroups(), layer]


def layer(iso: Isolation, refusal: str | None, fallback: str, gateway_url: str | None
          ) -> tuple[str, bool]:
    """The layer an agent runs under, in words, and whether it runs at all."""
    if iso.sandbox == "none":
        return "none: the host's network and files", True
    if refusal is not None:
        if iso.egress != "any" and fallback == "warn":
            return f'none, unenforced (egress_fallback = "warn"): {refusal}', True
        return f"refused: {refusal}", False
    network = NETWORKS.get(iso.network)
    if network is None:  # "gateways"
        parts = urlsplit(gateway_url or "")
        network = (NETWORKS["gateway"] if gateway_url is None or parts.scheme == "unix"
                   else f"a network namespace of its own, the gateways at "
                        f"{parts.hostname}:{parts.port} in it ({GATEWAYS_HOW})")
    return f"bubblewrap: {network}", True


def agents(cfg: Config) -> list[dict[str, Any]]:
    program = cfg.supervisor.bwrap
    listen = cfg.gateway.listen
    url = f"http://{listen}" if listen and not listen.startswith("unix:") else None
    refusals: dict[str | None, str | None] = {}
    out = []
    for name, spec in sorted(cfg.agents.items()):
        tenant = cfg.tenants.get(spec.tenant)
        iso = isolation(spec, tenant)
        user = spec.user or (tenant.user if tenant else None)
        refusal = None
        if iso.sandbox != "none":
            if user not in refusals:
                refusals[user] = host_refusal(program, user)
            refusal = refusals[user]
        said, runs = layer(iso, refusal, spec.egress_fallback, url)
        out.append({"agent": name, "egress": iso.egress, "sandbox": iso.sandbox,
                    "network": iso.network, "layer": said, "runs": runs})
    return out
