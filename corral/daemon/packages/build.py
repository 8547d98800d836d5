"""Building a release with uv (docs/packages.md, "Builds").

A release is named by a hash of what makes it: the package's source (paths, bytes,
executable bits), the interpreter (its real path and version) and this recipe's version,
so deploying what was deployed before builds nothing. A venv cannot be moved: it is made
at the release's final path, and READY is written last. uv and the interpreter run as
children known to containment, so a crash of the daemon does not leave them running.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import fnmatch
import functools
import hashlib
import os
import shutil
import signal
import stat
import sys
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import msgspec

from ...jsonrpc import LineBlock
from ...statefiles import open_file
from ...supervisor.config import Limits, PackagesSettings
from ...supervisor.containment import Containment
from ...supervisor.process import ChildProcess, Launch
from ...supervisor.release import READY, SOURCE, VENV
from ...timeouts import waited
from . import checked
from .manifest import Manifest
from .releases import (
    BUILD_LOCK,
    INFO,
    ReleaseInfo,
    Releases,
    fsync_dir,
    make_read_only,
    remove_tree,
    tree_size,
)
from .requirements import check_file, check_pylock

FORMAT = b"corral-release-1"  # this recipe: a new one names every release anew
RELEASE_CHARS = 16  # hex characters of the hash in a release's name
# never copied from a package's directory: version control, environments, caches
SKIP_DIRS = frozenset({".git", ".hg", ".svn", ".venv", "__pycache__", ".mypy_cache",
                       ".pytest_cache", ".ruff_cache", ".tox", ".nox", "node_modules",
                       ".corral"})
SKIP_FILES = ("*.pyc", "*.pyo")
MAX_FILES = 50_000
TAIL = 20  # the last lines of a failing step's output shown in the error
DISK_CHECK = 1.0  # seconds between two looks at a build's size while uv installs
PROBE_TIMEOUT = 30.0  # seconds uv, then the interpreter, may take to say which Python
PROBE = ("import os, sys; print(os.path.realpath(getattr(sys, '_base_executable', "
         "sys.executable))); print(sys.version.split()[0])")

Say = Callable[[str], None]


class BuildError(Exception):
    """The message says which step failed, and why."""


class Plan(msgspec.Struct, kw_only=True):
    """What a deploy would build: the release's name and the inputs it hashes."""

    manifest: Manifest
    release: str
    interpreter: str  # real path
    python_version: str
    files: list[str]  # relative paths of the source, as copied
    source: str  # the hash of the source


def scan_source(manifest: Manifest, max_bytes: int, stop: threading.Event | None = None
                ) -> tuple[list[str], int, str]:
    """The package's files and links (relative paths, sorted), their size, and the hash
    of them. A size past `max_bytes` is refused before a byte is read. Blocking."""
    with _source(manifest) as root:
        found = _walk(root, manifest, stop)
        files = [rel for rel, _ in found]
        total = 0
        for rel, st in found:  # every size counted before any file is read
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
                if total > max_bytes:
                    raise BuildError(
                        f"source: more than {max_bytes // (1 << 20)} MB under "
                        f"{manifest.directory}: {rel} ({st.st_size >> 20} MB) takes it past "
                        "[packages] max_source_mb; leave out what is not the package with "
                        "exclude = [...]")
        digest = hashlib.sha256()
        known = set(files)
        for rel, st in found:
            _hash_entry(root, rel, st, known, digest, None, stop)
        return files, total, digest.hexdigest()


def _walk(root: int, manifest: Manifest, stop: threading.Event | None
          ) -> list[tuple[str, os.stat_result]]:
    """(path, lstat) of every regular file and link of the source, sorted; anything else
    that is not left out is refused."""
    exclude = manifest.exclude
    owner = os.fstat(root).st_uid
    out: list[tuple[str, os.stat_result]] = []
    pending = [""]
    seen = 0  # directories too: a tree of empty ones is no cheaper to walk
    while pending:
        if stop is not None and stop.is_set():
            raise checked.ReadCancellation()
        rel_dir = pending.pop()
        for name, st in checked.entries(root, rel_dir):
            seen += 1
            rel = f"{rel_dir}/{name}" if rel_dir else name
            mode = st.st_mode
            if stat.S_ISDIR(mode) or (stat.S_ISLNK(mode) and name in SKIP_DIRS):
                if name in SKIP_DIRS or _excluded(rel, exclude) or _is_venv(root, rel):
                    continue
                if checked.depth(rel) > checked.MAX_DEPTH:
                    raise checked.PathRefusal(rel, f"more than {checked.MAX_DEPTH} directories "
                                               "deep")
                pending.append(rel)
                continue
            if any(fnmatch.fnmatch(name, p) for p in SKIP_FILES) or _excluded(rel, exclude):
                continue  # left out: never opened, whatever it is
            if stat.S_ISREG(mode) and st.st_nlink > 1 and st.st_uid != owner:
                # a hard link the package's writer made to a file they do not own: the
                # release would publish what they may not read
                raise checked.PathRefusal(rel, f"a hard link to a file of uid {st.st_uid} (the "
                                           f"package's directory is uid {owner}'s): not "
                                           "copied")
            if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
                raise checked.PathRefusal(rel, f"{checked.kind(mode)}: a package holds regular "
                                           "files, directories and links (leave it out "
                                           "with exclude = [...])")
            out.append((rel, st))
        if seen > MAX_FILES:
            raise BuildError(f"source: more than {MAX_FILES} files under "
                             f"{manifest.directory} (leave out what is not the package "
                             "with exclude = [...])")
    out.sort()
    return out


def _is_venv(root: int, rel: str) -> bool:
    """A directory holding a pyvenv.cfg: an environment, never a package's source."""
    try:
        fd = checked.open_dir(root, rel)
    except checked.PathRefusal:
        return False
    try:
        os.stat("pyvenv.cfg", dir_fd=fd, follow_symlinks=False)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _hash_entry(root: int, rel: str, st: os.stat_result, files: set[str],
                digest: hashlib._Hash, dest: Path | None, stop: threading.Event | None
                ) -> None:
    """Add a file or link of the source to the hash, and copy it to `dest` if given: a
    file read no further than the size it was looked at with."""
    if stat.S_ISLNK(st.st_mode):
        target = checked.read_link(root, rel)
        inside = checked.link_target(rel, target)
        if inside is None:
            raise checked.PathRefusal(rel, f"a link to {target!r}, outside the package: not "
                                       "followed (copy the file in, or exclude the link)")
        if inside not in files:
            raise checked.PathRefusal(rel, f"a link to {target!r}, which is not a file of the "
                                       "package's source: not followed (copy the file in, "
                                       "or exclude the link)")
        data = target.encode()
        digest.update(rel.encode() + b"\0" + b"l" + len(data).to_bytes(8, "big"))
        digest.update(data)
        if dest is not None:
            os.symlink(target, dest / rel)
        return
    fd, opened = checked.open_file(root, rel)
    try:
        if opened.st_size != st.st_size:
            raise checked.PathRefusal(rel, "changed while it was read (its size)")
        executable = bool(opened.st_mode & stat.S_IXUSR)
        digest.update(rel.encode() + b"\0" + (b"x" if executable else b"-")
                      + opened.st_size.to_bytes(8, "big"))
        out = None
        if dest is not None:
            out = os.open(dest / rel, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                          | os.O_CLOEXEC, 0o755 if executable else 0o644)
        try:
            for data in checked.chunks(fd, opened.st_size, rel, stop):
                digest.update(data)
                if out is not None:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(out, view):]
        finally:
            if out is not None:
                os.close(out)
    finally:
        os.close(fd)


def _excluded(rel: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(os.path.basename(rel), p)
               for p in patterns)


def release_name(interpreter: str, version: str, source: str) -> str:
    digest = hashlib.sha256(b"\0".join([FORMAT, interpreter.encode(), version.encode(),
                                        source.encode()]))
    return digest.hexdigest()[:RELEASE_CHARS]


def copy_source(manifest: Manifest, files: list[str], dest: Path, expected: str,
                stop: threading.Event | None = None) -> None:
    """Copy the files to `dest`, hashing what is written: a source that changed since it
    was planned is refused (its release would not be what its name says)."""
    digest = hashlib.sha256()
    with _source(manifest) as root:
        known = set(files)
        for rel in files:
            if stop is not None and stop.is_set():
                raise checked.ReadCancellation()
            parent, _, name = rel.rpartition("/")
            fd = checked.open_dir(root, parent)
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except OSError:
                raise BuildError(f"source: {manifest.directory} changed while it was "
                                 "deployed; deploy again") from None
            finally:
                os.close(fd)
            (dest / parent).mkdir(parents=True, exist_ok=True)
            _hash_entry(root, rel, st, known, digest, dest, stop)
    if digest.hexdigest() != expected:
        raise BuildError(f"source: {manifest.directory} changed while it was deployed; "
                         "deploy again")


class Builder:
    def __init__(self, releases: Releases, settings: PackagesSettings,
                 containment: Containment, cache: Path) -> None:
        self.releases = releases
        self.settings = settings
        self.containment = containment
        self.cache = cache
        self._turn = asyncio.Lock()  # one build at a time in this daemon...
        self._probe = asyncio.Lock()
        self.built = 0
        self.reused = 0
        self.failed = 0
        self.building: str | None = None  # NAME/RELEASE of the build under way

    # -- what a deploy would build -----------------------------------------------------
    async def plan(self, manifest: Manifest) -> Plan:
        interpreter, version = await self._interpreter(manifest.python)
        files, _, source = await checked.in_thread(
            lambda stop: scan_source(manifest, self.settings.max_source_mb << 20, stop))
        return Plan(manifest=manifest, release=release_name(interpreter, version, source),
                    interpreter=interpreter, python_version=version, files=files,
                    source=source)

    async def _interpreter(self, wanted: str | None) -> tuple[str, str]:
        """(real path, version) of the interpreter a release of `wanted` is made from:
        the daemon's own when the manifest names none."""
        async with self._probe:
            python = sys.executable
            if wanted is not None:
                out = await self._run([self._uv(), "python", "find", wanted], kind="probe",
                                      name="python", cwd=None, timeout=PROBE_TIMEOUT,
                                      what=f"finding Python {wanted}")
                python = out[-1].decode().strip() if out else ""
                if not python:
                    raise BuildError(f"no Python {wanted} on this host")
            out = await self._run([python, "-I", "-c", PROBE], kind="probe", name="python",
                                  cwd=None, timeout=PROBE_TIMEOUT, what=f"asking {python}")
        if len(out) < 2:
            raise BuildError(f"{python} did not say what it is")
        return out[0].decode().strip(), out[1].decode().strip()

    @functools.cached_property
    def uv(self) -> str | None:
        """The uv corral[daemon] pins (the uv its builds are tested with), else one on
        PATH; looked for at the first build or status that asks, not at the daemon's
        start: the uv package's import and its search were ~10 ms of every boot's CPU,
        and most daemons never deploy a package."""
        with contextlib.suppress(ImportError, FileNotFoundError):
            from uv import find_uv_bin

            return str(find_uv_bin())
        return shutil.which("uv")

    def _uv(self) -> str:
        if self.uv is None:
            raise BuildError("uv not found: install corral[daemon] (it brings uv), or put "
                             "uv on PATH")
        return self.uv

    # -- the build -----------------------------------------------------------------------
    async def build(self, name: str, plan: Plan, who: str, say: Say) -> tuple[Path, bool]:
        """The release's directory, and whether it was built now."""
        final = self.releases.root / name / plan.release
        if self.releases.ready(final):
            self.reused += 1
            return final, False
        if self._turn.locked():
            say(f"waiting for the build of {self.building} to finish")
        async with self._turn, self._host_turn(say):
            if self.releases.ready(final):  # built by the deploy we waited for
                self.reused += 1
                return final, False
            self.building = f"{name}/{plan.release}"
            try:
                await self._build(name, plan, final, who, say)
            except BaseException:
                self.failed += 1
                # a cancelled deploy too: nothing of the build is left
                await asyncio.shield(asyncio.to_thread(remove_tree, final))
                raise
            finally:
                self.building = None
        self.built += 1
        return final, True

    @contextlib.asynccontextmanager
    async def _host_turn(self, say: Say) -> AsyncIterator[None]:
        """The host's build lock, for another daemon sharing this packages directory
        (flock: released by the kernel when its holder dies)."""
        fd = open_file(self.releases.root / BUILD_LOCK, os.O_RDWR | os.O_CREAT)
        try:
            told = False
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if not told:
                        say("waiting for another daemon's build to finish")
                        told = True
                    await asyncio.sleep(0.2)  # a rare case: no wakeup to wait on
            yield
        finally:
            os.close(fd)  # the lock goes with it

    async def _build(self, name: str, plan: Plan, final: Path, who: str, say: Say) -> None:
        settings = self.settings
        started = time.monotonic()
        deadline = started + settings.build_timeout
        manifest = plan.manifest
        await asyncio.to_thread(remove_tree, final)  # a failed build of the same release
        free = shutil.disk_usage(self.releases.root).free
        if free < settings.min_free_mb << 20:
            raise BuildError(f"{free >> 20} MB free on the file system of "
                             f"{self.releases.root}, less than [packages] min_free_mb "
                             f"({settings.min_free_mb}): nothing was built")
        src, venv, scratch = final / SOURCE, final / VENV, final / ".build"
        say(f"building release {plan.release} of {name} (version "
            f"{manifest.version or '-'}, Python {plan.python_version})")
        try:
            await asyncio.to_thread(_make_dirs, final, src, scratch)
            await checked.in_thread(lambda stop: copy_source(manifest, plan.files, src, plan.source,
                                                    stop))
        except OSError as exc:
            raise BuildError(_os_error("copying the source", exc, final)) from None
        uv = self._uv()

        def left() -> float:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BuildError(f"the build took longer than [packages] build_timeout "
                                 f"({settings.build_timeout:g} s)")
            return remaining

        async def step(argv: list[str], what: str, watch: Path | None = None) -> None:
            # in the source: a requirements file's relative paths are the package's
            await self._run(argv, kind="build", name=name, cwd=src, timeout=left(),
                            what=what, watch=watch)

        await step([uv, "venv", str(venv), "--python", plan.interpreter, "--no-project",
                    "--quiet"], "making the venv")
        python = str(venv / "bin" / "python")
        lock = manifest.lock
        if lock is not None:
            rel = lock.relative_to(manifest.directory).as_posix()
            exported: Path | None = None
            if manifest.lock_kind == "uv.lock":
                exported = scratch / "requirements.txt"
                await step([uv, "export", "--frozen", "--no-dev", "--no-emit-project",
                            "--format", "requirements-txt", "--no-header", "--quiet",
                            "--project", str((src / rel).parent), "-o", str(exported)],
                           f"reading {lock.name}")
            await checked.in_thread(lambda _: _check_lock(
                src, rel, manifest.lock_kind, exported, manifest.directory))
            say(f"installing {lock.name} with uv")
            await step([uv, "pip", "install", "--python", python, "--link-mode",
                        settings.link_mode,
                        "--compile-bytecode", "--quiet", "-r", str(exported or src / rel)],
                       f"installing {lock.name}", watch=final)
        await step([python, "-I", "-m", "compileall", "-q", str(src)], "compiling the source")
        size = await asyncio.to_thread(tree_size, final)
        self._check_size(size)
        info = ReleaseInfo(name=name, release=plan.release, version=manifest.version,
                           python=plan.interpreter, python_version=plan.python_version,
                           lock=lock.name if lock else None, built_at=time.time(),
                           build_seconds=round(time.monotonic() - started, 3),
                           size_bytes=size, who=who, source=str(manifest.directory))
        try:
            await asyncio.to_thread(_seal, final, scratch, info)
        except OSError as exc:
            raise BuildError(_os_error("sealing the release", exc, final)) from None
        say(f"built release {plan.release} in {info.build_seconds:.1f} s "
            f"({size / (1 << 20):.1f} MB)")

    def _check_size(self, size: int) -> None:
        limit = self.settings.max_release_mb
        if size > limit << 20:
            raise BuildError(f"the release grew past [packages] max_release_mb ({limit} MB)")

    async def _run(self, argv: list[str], *, kind: str, name: str, cwd: Path | None,
                   timeout: float, what: str, watch: Path | None = None) -> list[bytes]:
        """One step's stdout lines, or BuildError with its last lines of output. Its group
        is killed at `timeout`, when `watch` grows past max_release_mb, or cancelled."""
        out: deque[bytes] = deque(maxlen=1000)
        err: deque[bytes] = deque(maxlen=TAIL)

        def on_err(lines: LineBlock) -> None:
            err.extend(lines.last(TAIL))

        try:
            child = await ChildProcess.spawn(
                Launch(argv, build_environment(self.cache), str(cwd) if cwd else None,
                       Limits(), None, None),
                containment=self.containment, kind=kind, name=name, index=0, stop_timeout=5.0,
                on_stdout_line=out.append, on_stderr_lines=on_err,
                on_oversize=lambda *_: None)
        except OSError as exc:
            raise BuildError(f"{what}: cannot run {argv[0]}: {exc.strerror}") from None
        child.close_stdin()
        watcher = asyncio.ensure_future(self._watch(watch)) if watch else None
        waits: list[asyncio.Future[object]] = [child.exited]  # type: ignore[list-item]
        if watcher is not None:
            waits.append(watcher)  # type: ignore[arg-type]
        try:
            done, _ = await asyncio.wait(waits, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
            if watcher is not None and watcher in done:
                watcher.result()  # raises: too big
            if child.exited not in done:
                # a build's step is bounded by what is left of build_timeout; a probe, by
                # its own
                raise BuildError(f"{what}: " + (
                    f"no answer within {timeout:g} s" if kind == "probe" else
                    f"the build took longer than [packages] build_timeout "
                    f"({self.settings.build_timeout:g} s)"))
            rc = child.exited.result()
        finally:
            if watcher is not None:
                watcher.cancel()
            await asyncio.shield(self._end(child))
        if rc != 0:
            lines = [line.decode("utf-8", "replace") for line in err if line.strip()]
            tail = "; ".join(lines[-5:]) or f"exit status {rc}"
            if any("No space left on device" in line for line in lines):
                tail = (f"the file system of {self.releases.root} is full "
                        f"({shutil.disk_usage(self.releases.root).free >> 20} MB free): "
                        + tail)
            raise BuildError(f"{what} failed: {tail}")
        return list(out)

    async def _watch(self, path: Path) -> None:
        while True:
            await asyncio.sleep(DISK_CHECK)
            self._check_size(await asyncio.to_thread(tree_size, path))

    async def _end(self, child: ChildProcess) -> None:
        if child.alive:
            child.kill_group(signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                await waited(child.exited, 10.0)
        with contextlib.suppress(TimeoutError):
            await waited(child.output_closed, 1.0)
        child.kill_group(signal.SIGKILL)  # what it left in its group
        self.containment.ended(child.token)
        child.close()


def _check_lock(src: Path, rel: str, kind: str | None, exported: Path | None,
                shown: Path) -> None:
    """What the lock would make uv read, as the daemon's user: only the package's own
    files (requirements.py). On the release's copy, before uv sees it."""
    root = checked.open_root(str(src))
    try:
        if kind == "pylock":
            check_pylock(root, rel)
        else:  # the requirements file, or uv export's text of the package's uv.lock
            check_file(root, rel, exported.read_text() if exported is not None else None)
    except checked.PathRefusal as exc:
        raise BuildError(f"{shown / exc.rel}: {exc.reason}") from None
    finally:
        os.close(root)


def build_environment(cache: Path) -> dict[str, str]:
    """The daemon's environment (proxies, uv's index settings) without what would send
    a build's Python elsewhere, with the shared cache; no interpreter is downloaded."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CORRAL_", "PYTHON", "VIRTUAL_ENV", "CONDA_"))}
    env.update(UV_CACHE_DIR=str(cache), UV_PYTHON_DOWNLOADS="never", UV_NO_PROGRESS="1")
    return env


def _make_dirs(final: Path, src: Path, scratch: Path) -> None:
    final.parent.mkdir(parents=True, exist_ok=True)
    final.parent.chmod(0o711)
    final.mkdir(mode=0o755)
    src.mkdir()
    scratch.mkdir()


def _seal(final: Path, scratch: Path, info: ReleaseInfo) -> None:
    """Read-only, then READY: a release only once everything before it is on disk."""
    shutil.rmtree(scratch)
    (final / INFO).write_bytes(msgspec.json.format(msgspec.json.encode(info)) + b"\n")
    make_read_only(final)
    os.chmod(final, 0o755)
    ready = final / READY
    fd = os.open(ready, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
    try:
        os.write(fd, info.release.encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(final, 0o555)
    fsync_dir(final)
    fsync_dir(final.parent)


def _os_error(what: str, exc: OSError, final: Path) -> str:
    if exc.errno == errno.ENOSPC:
        return (f"{what}: the file system of {final.parent} is full: nothing was built")
    return f"{what}: {exc.strerror or exc} ({exc.filename or final})"


@contextlib.contextmanager
def _source(manifest: Manifest) -> Iterator[int]:
    """The package's directory, opened as checked.py opens it; a path refused in it a
    BuildError."""
    try:
        root = checked.open_root(str(manifest.directory))
    except OSError as exc:
        raise BuildError(f"source: cannot read {manifest.directory}: {exc.strerror}"
                         ) from None
    try:
        yield root
    except checked.PathRefusal as exc:
        raise BuildError(f"source: {manifest.directory / exc.rel}: {exc.reason}") from None
    finally:
        os.close(root)
