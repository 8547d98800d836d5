"""The test modules' byte code, kept once per machine by their sources' contents.

pytest rewrites each test module's asserts and compiles it, about 10 s of a core for the
whole suite, and keeps the result beside the source (tests/**/__pycache__). A fresh clone
had none, and made it all again in its collection (decision 1005). Here each such file is
kept once a machine under a hash of its source's bytes and its name's tag (the
interpreter's, and pytest's version for a rewritten module): `restore` writes those of
this checkout's sources into their __pycache__, and `keep` keeps what a collection wrote.
pytest's files are checked by the source's hash (PEP 552) and name the source where it is
now when read, so they are restored as they are; a plain module's (a helper the tests
import) is checked by its source's mtime and size, so its header is written anew from the
source here, whose bytes are the kept ones. A source edited since is not found under its
new bytes: it is compiled again, as it would be.

`restore` exits 1 where a test module (a file pytest rewrites: test_*.py, conftest.py) is
left without its rewritten byte code, and prints what a collection needs to make those (each
such test file, and for a conftest a test file beside it), a line each; 0 where every one
has it: then a collection would make nothing the workers' own do not, and test.sh makes
none before pytest.

`link FROM TO` hard-links each byte-code file under FROM's __pycache__ directories that TO
lacks, or holds older, at the same place (copied where a link cannot be made): test.sh
keeps the installed packages' byte code so, once per machine under the venv's pins, and
links it into a fresh clone's venv and back. uv installs none, and every pytest worker's
collection compiled the same packages at once in a fresh clone. A package's files are the
same across those venvs (uv links them from its cache), and Python checks a byte-code
file against its source's mtime and size as it reads it, writing a new file in its place
where it differs.

usage: kept_pycs.py restore|keep STORE [ROOT]   (STORE: the kept files' directory, test.sh's
$CORRAL_KEPT/pycs as scripts/kept.sh places the store; ROOT: the tests' directory, tests/
by default)
       kept_pycs.py link FROM TO
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import os
import struct
import sys
import tempfile
import time
from pathlib import Path

HEADER = struct.Struct("<4sIII")  # magic, flags, the source's mtime, its size
UNUSED_DAYS = 30  # a kept file no restore has used for this long is let go


def sources(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def tag_of(pyc: Path) -> tuple[str, str]:
    """(module, tag) of `module.cpython-311[-pytest-9.2.0].pyc`."""
    module, _, rest = pyc.name.partition(".")
    return module, rest


def key(source_bytes: bytes, tag: str) -> str:
    return f"{hashlib.sha256(source_bytes).hexdigest()}.{tag}"


def rewritten(source: Path) -> bool:
    """Whether pytest rewrites the module's asserts (the suite's test files and conftests:
    pyproject's python_files is pytest's default)."""
    return source.name == "conftest.py" or (source.name.startswith("test_")
                                            and source.suffix == ".py")


def restore(root: Path, kept: Path) -> tuple[int, int, list[Path]]:
    """Write every kept pyc of a source under `root` into its __pycache__: (written, of
    sources, test modules left without their rewritten one)."""
    if not kept.is_dir():
        found = sources(root)
        return 0, len(found), [s for s in found if rewritten(s)]
    wanted: dict[str, list[Path]] = {}  # a source's bytes' hash: its kept files
    for f in kept.iterdir():
        digest, _, tag = f.name.partition(".")
        if tag.endswith(".pyc"):
            wanted.setdefault(digest, []).append(f)
    written = 0
    missing: list[Path] = []
    found = sources(root)
    # the name pytest gives the modules it rewrites (assertion/rewrite.py's PYC_TAIL)
    ours = f"{sys.implementation.cache_tag}-pytest-{importlib.metadata.version('pytest')}.pyc"
    for source in found:
        data = source.read_bytes()
        restored = False
        for f in wanted.get(hashlib.sha256(data).hexdigest(), []):
            tag = f.name.partition(".")[2]
            try:
                blob = f.read_bytes()
                magic, flags, _, _ = HEADER.unpack_from(blob)
            except (OSError, struct.error):
                continue  # let go by another clone meanwhile: compiled again instead
            if magic != importlib.util.MAGIC_NUMBER:
                continue  # another interpreter's: its tag said so too
            if flags == 0:  # checked by mtime and size: this source's
                st = source.stat()
                blob = HEADER.pack(magic, 0, int(st.st_mtime) & 0xFFFFFFFF,
                                   st.st_size & 0xFFFFFFFF) + blob[HEADER.size:]
            out = source.parent / "__pycache__" / f"{source.stem}.{tag}"
            out.parent.mkdir(exist_ok=True)
            atomic_write(out, blob)
            os.utime(f)  # used: not let go
            written += 1
            restored = restored or tag == ours
        if rewritten(source) and not restored:
            missing.append(source)
    return written, len(found), missing


def to_collect(missing: list[Path]) -> list[Path]:
    """The test files whose collection rewrites every module of `missing`: each test file,
    and for a conftest one beside it or below (a collection rewrites the conftests on its
    files' paths), none where a listed file is so already."""
    files = [m for m in missing if m.name != "conftest.py"]
    for conftest in (m for m in missing if m.name == "conftest.py"):
        here = conftest.parent
        if not any(here in f.parents for f in files):
            files.extend(sorted(p for p in sources(here) if rewritten(p)
                                and p.name != "conftest.py")[:1])
    return files


def keep(root: Path, kept: Path) -> int:
    """Keep every current pyc of a source under `root` (its header names the source as it
    is, by its hash or by its mtime and size): how many were new."""
    kept.mkdir(parents=True, exist_ok=True)
    new = 0
    for pyc in sorted(root.rglob("__pycache__/*.pyc")):
        module, tag = tag_of(pyc)
        source = pyc.parent.parent / f"{module}.py"
        try:
            st = source.stat()
            blob = pyc.read_bytes()
            _, flags, mtime, size = HEADER.unpack_from(blob)
            data = source.read_bytes()
        except (OSError, struct.error):
            continue
        if flags == 0:
            current = (mtime, size) == (int(st.st_mtime) & 0xFFFFFFFF,
                                        st.st_size & 0xFFFFFFFF)
        else:  # PEP 552's hash of the source (pytest's files)
            current = blob[8:16] == importlib.util.source_hash(data)[:8]
        if not current:
            continue  # stale: not what a collection made of the source here
        name = kept / key(data, tag)
        if name.exists():
            continue
        atomic_write(name, blob)
        new += 1
    cutoff = time.time() - UNUSED_DAYS * 86400
    for f in kept.iterdir():
        try:
            if f.stat().st_mtime < cutoff:
                f.unlink()
        except OSError:
            pass  # another clone let it go first
    return new


def link(source: Path, target: Path) -> int:
    """Each byte-code file under `source`'s __pycache__ directories that `target` lacks,
    or holds older (one written before its source was installed anew: Python wrote the
    newer where it read the older), linked there in its place: how many."""
    new = 0
    for pyc in sorted(source.rglob("__pycache__/*.pyc")):
        out = target / pyc.relative_to(source)
        try:
            made = pyc.stat()
            there = out.stat()
        except FileNotFoundError:
            pass
        except OSError:
            continue
        else:
            if there.st_ino == made.st_ino or there.st_mtime >= made.st_mtime:
                continue
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.{os.getpid()}")
        try:
            os.link(pyc, tmp)
        except OSError:  # another filesystem
            try:
                atomic_write(out, pyc.read_bytes())
            except OSError:
                continue
        else:
            os.replace(tmp, out)
        new += 1
    return new


def atomic_write(path: Path, data: bytes) -> None:
    """`path` holds `data` whole or is as it was: a reader beside never sees half of it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "link":
        print(f"kept_pycs: {link(Path(argv[1]), Path(argv[2]))} byte-code files linked",
              file=sys.stderr)
        return 0
    if len(argv) not in (2, 3) or argv[0] not in ("restore", "keep"):
        print(__doc__.rsplit("usage: ", 1)[1].strip(), file=sys.stderr)
        return 2
    store = Path(argv[1])
    root = Path(argv[2] if len(argv) == 3 else "tests")
    if argv[0] == "restore":
        written, of, missing = restore(root, store)
        print(f"kept_pycs: {written} byte-code files restored for {of} sources; "
              f"{len(missing)} test modules without theirs", file=sys.stderr)
        for path in to_collect(missing):
            print(path)
        return 1 if missing else 0
    else:
        print(f"kept_pycs: {keep(root, store)} new byte-code files kept", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
