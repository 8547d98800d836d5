"""A real systemd, booted as PID 1 of its own namespaces, for tests of the service.

systemd is installed on the machines here but is not PID 1, so a test boots one: new PID,
mount, cgroup, UTS and IPC namespaces (`unshare`), a root that is an overlay of `/` (writes
go to a tmpfs and vanish with it), `/proc/sys` and `/sys` mounted read-only before systemd
runs (a systemd that could write /proc/sys would change the host's kernel settings), a
cgroup2 hierarchy rooted at a cgroup of the test's own, and units that would touch the
machine (module loading, binfmt, clocks, timers, fstab mounts, udev) masked. It boots to
an empty target; tests start what they need with `systemctl`.

    with NSystemd() as nsd:                  # boots; stops and removes its cgroup after
        nsd.write("/etc/corral/corral.toml", text)
        nsd.run("systemctl", "start", "corral")
        nsd.run("systemctl", "show", "-p", "MainPID", "--value", "corral").stdout

Nothing else runs at boot (it takes well under 2 s): start what a test needs, e.g.
`nsd.run("systemctl", "start", "systemd-journald.socket")` for the journal (then
`nsd.run("journalctl", ...)`). There is no D-Bus (tools that need it, like `systemd-run`,
fail; systemctl talks to systemd's private socket). Processes started with `run` are not
in the container's cgroups; the host's view of a unit's cgroup is `unit_cgroup(unit)`.

`skip_reason()` says why it cannot run here (not root, no systemd, no unshare, no cgroup
v2), for `pytest.skip`. The `nsystemd` fixture does both.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.supervisor.containment import (
    cgroup_kill,
    cgroup_pids,
    own_cgroup,
    read_stat,
    remove_cgroup,
    scan_processes,
)

SYSTEMD = "/lib/systemd/systemd"
TARGET = "nsd-test.target"
# Units that would reach past the namespaces (kernel modules, binfmt_misc, the clock,
# hardware, the host's block devices) or only slow the boot down.
MASKED = [
    "tmp.mount",  # see BOOT: /tmp is the overlay's
    "modprobe@.service", "systemd-modules-load.service", "kmod-static-nodes.service",
    "systemd-sysctl.service", "systemd-binfmt.service", "proc-sys-fs-binfmt_misc.automount",
    "proc-sys-fs-binfmt_misc.mount", "systemd-timesyncd.service",
    "systemd-time-wait-sync.service", "systemd-pstore.service",
    "systemd-random-seed.service", "systemd-boot-random-seed.service",
    "systemd-hwdb-update.service", "systemd-udevd.service", "systemd-udevd-control.socket",
    "systemd-udevd-kernel.socket", "systemd-udev-trigger.service",
    "systemd-udev-settle.service", "sys-kernel-config.mount", "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount", "sys-fs-fuse-connections.mount", "dev-hugepages.mount",
    "dev-mqueue.mount", "systemd-remount-fs.service", "systemd-fsck-root.service",
    "systemd-fsck@.service", "systemd-machine-id-commit.service",
    "systemd-firstboot.service", "ldconfig.service", "systemd-update-utmp.service",
    "systemd-repart.service", "systemd-tpm2-setup.service", "timers.target",
    "cryptsetup.target", "remote-fs.target", "swap.target", "getty.target",
    "systemd-journal-catalog-update.service", "systemd-update-done.service",
]
GENERATORS_MASKED = ["systemd-fstab-generator", "systemd-gpt-auto-generator",
                     "systemd-getty-generator", "systemd-sysv-generator",
                     "systemd-cryptsetup-generator", "systemd-run-generator"]
DEVICES = ["null", "zero", "full", "random", "urandom", "tty"]

# Runs as PID 1 of the new PID namespace, inside the new mount/cgroup/UTS/IPC namespaces:
# build the root, make the kernel's knobs read-only, pivot, exec systemd.
BOOT = r"""
set -eu
S=$1
mount --make-rprivate /
mount -t tmpfs -o mode=0755 nsd "$S"
mkdir -p "$S/upper" "$S/work" "$S/root"
mount -t overlay -o lowerdir=/,upperdir="$S/upper",workdir="$S/work" overlay "$S/root"
R=$S/root
mount -t proc -o nosuid,nodev,noexec proc "$R/proc"
# read-only FIRST: nothing in here may write the host's kernel settings
mount --bind "$R/proc/sys" "$R/proc/sys"
mount -o remount,bind,ro,nosuid,nodev,noexec "$R/proc/sys"
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$R/sys"
mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$R/sys/fs/cgroup"
mount -t tmpfs -o mode=0755,nosuid tmpfs "$R/dev"
for d in DEVICES; do : > "$R/dev/$d"; mount --bind "/dev/$d" "$R/dev/$d"; done
mkdir -p "$R/dev/shm" "$R/dev/pts"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$R/dev/shm"
ln -s /proc/self/fd "$R/dev/fd"
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$R/run"
# /tmp stays the overlay's (writes land in the upper layer, never on the host): a checkout
# under /tmp, as CI's may be, must be visible inside at its own path
cp -a "$S.files/." "$R/"
hostname corral-nsd
cd "$R"
mkdir -p .oldroot
pivot_root . .oldroot
umount -l /.oldroot
rmdir /.oldroot
exec env -i container=corral-nsd PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    SYSTEMD --unit=TARGET --log-target=console --show-status=no
""".replace("DEVICES", " ".join(DEVICES)).replace("SYSTEMD", SYSTEMD).replace(
    "TARGET", TARGET)

INNER_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
             "LANG": "C.UTF-8", "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"}


def install_corral(n: NSystemd, checkout: Path, service: str = "") -> None:
    """corral installed in the root before boot, as the README installs it: the unit from
    `systemd/` as shipped, the checkout's venv as /opt/corral, and a drop-in with only what
    a test needs (`service`: [Service] lines, e.g. shorter clocks)."""
    n.put("etc/systemd/system/corral.service",
          (checkout / "systemd" / "corral.service").read_text())
    if checkout.is_relative_to("/tmp"):
        # the unit's private /tmp would hide a checkout (and its venv) that lives under /tmp
        service += "PrivateTmp=no\n"
    if service:
        n.put("etc/systemd/system/corral.service.d/test.conf", "[Service]\n" + service)
    n.files.joinpath("opt").mkdir(exist_ok=True)
    n.files.joinpath("opt/corral").symlink_to(checkout / ".venv")
    # the test's users (a member of the socket's group) run the CLI from the checkout's
    # venv: a checkout under a directory they may not enter (a 0700 /root) is opened to
    # them inside the container only (its root is an overlay: the host's stays as it is),
    # every directory on the way keeping its own mode otherwise
    closed = [p for p in checkout.parents if not p.stat().st_mode & stat.S_IXOTH]
    if closed:
        deepest = max(closed, key=lambda p: len(p.parts))
        for p in reversed([deepest, *deepest.parents]):
            if p == Path("/"):
                continue
            inside = n.files / p.relative_to("/")
            inside.mkdir(exist_ok=True)
            inside.chmod(stat.S_IMODE(p.stat().st_mode) | (0o011 if p in closed else 0))


def skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "booting systemd in namespaces needs root (the suite is not running as root)"
    for tool in (SYSTEMD, shutil.which("unshare"), shutil.which("nsenter")):
        if tool is None or not os.access(tool, os.X_OK):
            return f"{tool or 'unshare/nsenter'} is not installed"
    own = own_cgroup()
    if own is None or not os.access(own, os.W_OK):
        return "no writable cgroup v2 hierarchy for systemd's cgroup namespace"
    return None


class NSystemd:
    """One booted systemd; `stop()` kills everything in it and removes its cgroup."""

    def __init__(self, files: dict[str, str] | None = None) -> None:
        own = own_cgroup()
        assert own is not None
        tag = f"corral-nsd-{os.getpid()}-{secrets.token_hex(3)}"
        self.cgroup = Path(own) / tag  # the host's view of the container's cgroup root
        self.stage = Path(tempfile.mkdtemp(prefix=tag))
        self.files = Path(f"{self.stage}.files")  # copied over the root before boot
        self.files.mkdir()
        self.unshare: subprocess.Popen[bytes] | None = None
        self.pid1 = 0  # the host's pid of the container's PID 1
        self.console = self.stage.with_suffix(".console")
        self._write_boot_files(files or {})

    # -- boot and stop --------------------------------------------------------------------
    def _write_boot_files(self, files: dict[str, str]) -> None:
        units = "etc/systemd/system"
        self.put(f"{units}/{TARGET}", "[Unit]\nDescription=nsystemd test target\n")
        for unit in MASKED:
            (self.files / units).mkdir(parents=True, exist_ok=True)
            os.symlink("/dev/null", self.files / units / unit)
        gens = self.files / "etc/systemd/system-generators"
        gens.mkdir(parents=True)
        for gen in GENERATORS_MASKED:
            os.symlink("/dev/null", gens / gen)
        self.put("etc/fstab", "")  # no mounts of the host's devices
        # no cleaning of /tmp at boot (tmpfiles' `D /tmp`): it would hide a checkout there
        self.put("etc/tmpfiles.d/tmp.conf", "")
        for path, text in files.items():
            self.put(path, text)

    def put(self, path: str, text: str, mode: int = 0o644) -> None:
        """A file in the root before boot (after boot: `write`)."""
        p = self.files / path.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        p.chmod(mode)

    def boot(self, timeout: float = 60.0) -> NSystemd:
        self.cgroup.mkdir()
        with open(self.console, "wb") as console:
            self.unshare = subprocess.Popen(
                ["/bin/sh", "-c", f'echo $$ > {self.cgroup}/cgroup.procs && exec "$@"', "nsd",
                 "unshare", "--pid", "--fork", "--mount", "--cgroup", "--uts", "--ipc",
                 "--propagation", "private", "/bin/sh", "-c", BOOT, "nsd-boot",
                 str(self.stage)],
                stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not self.pid1:
            self._check_alive()
            self.pid1 = next((st.pid for st in scan_processes()
                              if st.ppid == self.unshare.pid), 0)
            if time.monotonic() > deadline:
                raise TimeoutError("the namespace's PID 1 did not start")
            time.sleep(0.02)
        while True:  # boot is over when systemd says so (an empty target: fast)
            self._check_alive()
            state = self.run("systemctl", "is-system-running", check=False).stdout.strip()
            if state in ("running", "degraded"):
                return self
            if time.monotonic() > deadline:
                raise TimeoutError(f"systemd did not finish booting ({state!r}):\n"
                                   f"{self.console_text()[-3000:]}")
            time.sleep(0.05)

    def _check_alive(self) -> None:
        assert self.unshare is not None
        if self.unshare.poll() is not None:
            raise RuntimeError(f"the namespace exited ({self.unshare.returncode}):\n"
                               f"{self.console_text()[-3000:]}")

    def console_text(self) -> str:
        with contextlib.suppress(OSError):
            return self.console.read_text(errors="replace")
        return ""

    def stop(self) -> None:
        """Kill the namespace's PID 1 (the kernel kills everything in the PID namespace),
        then whatever else is in its cgroup; remove the cgroup and the staging files."""
        if self.pid1:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid1, signal.SIGKILL)
        if self.unshare is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.unshare.wait(10)
            if self.unshare.poll() is None:
                self.unshare.kill()
                self.unshare.wait()
        if self.cgroup.exists():
            cgroup_kill(str(self.cgroup))
            deadline = time.monotonic() + 10
            while self._cgroup_procs() and time.monotonic() < deadline:
                time.sleep(0.02)
            remove_cgroup(str(self.cgroup))
        for p in (self.stage, self.files):
            shutil.rmtree(p, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.console.unlink()

    def __enter__(self) -> NSystemd:
        try:
            return self.boot()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- inside ---------------------------------------------------------------------------
    def run(self, *argv: str, check: bool = True, timeout: float = 60.0,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command inside (all its namespaces, its root); output as text."""
        r = subprocess.run(
            ["nsenter", "--target", str(self.pid1), "--mount", "--uts", "--ipc", "--pid",
             "--cgroup", "--root", "--wd=/", "--", *argv],
            capture_output=True, text=True, timeout=timeout, input=input, env=INNER_ENV)
        if check and r.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} exited {r.returncode}:\n"
                                 f"{r.stdout}\n{r.stderr}")
        return r

    def path(self, inner: str) -> Path:
        """The host's path to a file inside (through PID 1's root)."""
        return Path(f"/proc/{self.pid1}/root") / inner.lstrip("/")

    def write(self, inner: str, text: str, mode: int = 0o644) -> None:
        p = self.path(inner)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        p.chmod(mode)

    def copy_in(self, src: Path, inner: str) -> None:
        dest = self.path(inner)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dest, symlinks=True, dirs_exist_ok=True)
        else:
            shutil.copy2(src, dest)

    def unit_cgroup(self, unit: str) -> Path:
        """The host's path to a unit's cgroup."""
        cg = self.run("systemctl", "show", "-p", "ControlGroup", "--value", unit).stdout
        return self.cgroup / cg.strip().lstrip("/")

    def _cgroup_procs(self) -> list[int]:
        return [pid for d, _, _ in os.walk(self.cgroup) for pid in cgroup_pids(d)]

    def processes(self, cgroup: Path) -> set[int]:
        """Host pids of every live process in `cgroup` and below."""
        out = set()
        for d, _, _ in os.walk(cgroup):
            for pid in cgroup_pids(d):
                st = read_stat(pid)
                if st is not None and st.state != "Z":
                    out.add(pid)
        return out


@pytest.fixture
def nsystemd() -> Iterator[NSystemd]:
    """A booted systemd (skips with the reason where it cannot run); stopped after."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    with NSystemd() as nsd:
        yield nsd
