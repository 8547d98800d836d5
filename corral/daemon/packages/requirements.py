"""What a package's requirements may make uv read (docs/packages.md, the lock's rules).

uv runs as root and quotes in its error what it read: `-r /etc/shadow` or
`--find-links /root` would put root's files in the deploy's error and the daemon's log. So
the lock is read line by line before uv sees it, and errors name the file, the line's
number and the option, never its text.
"""

from __future__ import annotations

import os
import shlex

from . import checked

MAX_REQUIREMENTS = 4 << 20  # bytes of one requirements file
MAX_INCLUDES = 32  # files one lock may include, all told
INCLUDES = {"-r": "-r", "--requirement": "-r", "-c": "-c", "--constraint": "-c"}
EDITABLE = ("-e", "--editable")
INDEXES = ("-i", "--index-url", "--extra-index-url", "-f", "--find-links")
FLAGS = ("--no-index", "--pre", "--prefer-binary", "--only-binary", "--no-binary",
         "--trusted-host", "--index-strategy")
PER_LINE = ("--hash",)  # what may follow a requirement on its line


def check_file(root: int, rel: str, text: str | None = None) -> None:
    """A requirements file of the package (`rel`, inside `root`) and what it includes
    (`text`: uv export's, its relative paths from `rel`). checked.PathRefusal when uv
    would read something outside the package."""
    _check(root, rel, _read(root, rel) if text is None else text, [0])


def check_pylock(root: int, rel: str) -> None:
    """A pylock.toml (PEP 751): every `path` of it relative and inside the package, no
    `file:` URL."""
    import tomllib

    try:
        data = tomllib.loads(_read(root, rel))
    except tomllib.TOMLDecodeError as exc:
        raise checked.PathRefusal(rel, f"syntax error: {exc}") from None

    def walk(value: object, where: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                here = f"{where}.{key}" if where else str(key)
                if key == "path" and isinstance(item, str) and _inside(rel, item) is None:
                    raise checked.PathRefusal(rel, f"{here}: a path outside the package")
                if key == "url" and isinstance(item, str) and not _remote(item):
                    raise checked.PathRefusal(rel, f"{here}: not an http(s) URL (a local file "
                                               "is read as the daemon's user)")
                walk(item, here)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                walk(item, f"{where}[{i}]")

    walk(data, "")


def _read(root: int, rel: str) -> str:
    try:
        return checked.read_small(root, rel, MAX_REQUIREMENTS).decode()
    except UnicodeDecodeError:
        raise checked.PathRefusal(rel, "not UTF-8 text") from None


def _check(root: int, rel: str, text: str, included: list[int]) -> None:
    for number, line in _lines(text):
        def bad(why: str, number: int = number) -> checked.PathRefusal:
            return checked.PathRefusal(rel, f"line {number}: {why}")

        try:
            tokens = shlex.split(line, comments=True)
        except ValueError:
            raise bad("not a requirement uv can read (its quoting)") from None
        if not tokens:
            continue
        first = tokens[0]
        if first.startswith("-"):
            option, value = _option(tokens)
            if option in INCLUDES:
                target = _inside(rel, value, relative_to_file=True)
                if target is None:
                    raise bad(f"{option} names a file outside the package")
                included[0] += 1
                if included[0] > MAX_INCLUDES:
                    raise bad(f"more than {MAX_INCLUDES} included files")
                _check(root, target, _read(root, target), included)
            elif option in EDITABLE:
                if not _remote(value) and _inside(rel, value) is None:
                    raise bad(f"{option} names a directory outside the package")
            elif option in INDEXES:
                if not _remote(value):
                    raise bad(f"{option} is not an http(s) URL (a local index is read "
                              "as the daemon's user)")
            elif option not in FLAGS:
                raise bad(f"option {option} is not one corral passes to uv")
            continue
        if "file:" in " ".join(tokens):
            raise bad("a file: URL (read as the daemon's user)")
        if _path_like(first) and _inside(rel, first) is None:
            raise bad("a path outside the package")
        for extra in tokens[1:]:
            if extra.startswith("-") and extra.partition("=")[0] not in PER_LINE:
                raise bad(f"option {extra.partition('=')[0]} is not one corral passes to "
                          "uv")


def _lines(text: str) -> list[tuple[int, str]]:
    """Logical lines (a trailing backslash continues one), with their first number."""
    out: list[tuple[int, str]] = []
    held: list[str] = []
    start = 1
    for number, raw in enumerate(text.splitlines(), 1):
        if not held:
            start = number
        if raw.endswith("\\"):
            held.append(raw[:-1])
            continue
        held.append(raw)
        out.append((start, " ".join(held)))
        held = []
    if held:
        out.append((start, " ".join(held)))
    return out


def _option(tokens: list[str]) -> tuple[str, str]:
    first = tokens[0]
    if first.startswith("--"):
        option, eq, value = first.partition("=")
        if not eq:
            value = tokens[1] if len(tokens) > 1 else ""
        return option, value
    option, value = first[:2], first[2:]  # "-r file" or "-rfile"
    if not value:
        value = tokens[1] if len(tokens) > 1 else ""
    return option, value.lstrip("=")


def _remote(value: str) -> bool:
    scheme = value.partition("://")[0].lower()
    return "://" in value and scheme.split("+")[-1] in ("http", "https")


def _path_like(token: str) -> bool:
    return token.startswith((".", "/", "~", "$")) or ("/" in token and "://" not in token
                                                     and "@" not in token)


def _inside(rel: str, value: str, relative_to_file: bool = False) -> str | None:
    """The package's path `value` names (from the requirements file's directory, or
    for a requirement's path the package's root too: both must stay inside), or None."""
    if not value or value.startswith(("/", "~")) or "$" in value or "\\" in value:
        return None
    bases = [os.path.dirname(rel)] + ([] if relative_to_file else [""])
    found = None
    for base in bases:
        joined = os.path.normpath(os.path.join(base, value))
        if joined == ".." or joined.startswith("../") or os.path.isabs(joined):
            return None
        found = found or joined
    return found
