"""What a worker process needs of its OS, without the stdlib's heavier modules: its
input's lines read in place (`_lines`), and its process title (`_set_title`)."""

from __future__ import annotations

import os

TYPE_CHECKING = False  # not `from typing import ...`: typing costs ~2 ms to import
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

STDIN_IDLE = 64 * 1024  # an idle worker's read buffer; a longer line makes it grow


def _lines(fd: int, before_read: Callable[[int], None] | None = None) -> Any:
    """The lines read from `fd`, without their newlines, until EOF (a last line without
    its newline is still a line). `before_read(fd)` is called before each read that may
    block (it may wait for `fd` itself, doing other work meanwhile).

    Each is a view into one buffer, valid until the next is asked for: a large line is
    never copied (io's readline joined the pieces of a 1 MB line at twice the cost of
    reading it). A buffer is never resized in place: a view handed out may still exist.
    """
    buf = bytearray(STDIN_IDLE)
    view = memoryview(buf)
    start = end = scanned = 0
    long = 0  # the last line's size, if it was long
    while True:
        nl = buf.find(b"\n", scanned, end)
        if nl >= 0:
            long = nl - start if nl - start > STDIN_IDLE // 2 else 0
            yield view[start:nl]
            start = scanned = nl + 1
            continue
        if start == end:
            start = end = scanned = 0
            if len(buf) > STDIN_IDLE and not long:
                buf = bytearray(STDIN_IDLE)
                view = memoryview(buf)
        elif end == len(buf):  # full, a partial line at its end: to the front, or bigger
            part = end - start
            if part > len(buf) // 2:
                bigger = bytearray(max(2 * len(buf), long + STDIN_IDLE))
                bigger[:part] = view[start:end]
                buf, view = bigger, memoryview(bigger)
            else:
                view[:part] = view[start:end]
            start, end, scanned = 0, part, part
        scanned = end
        if before_read is not None:
            before_read(fd)
        n = os.readv(fd, [view[end:]])
        if n == 0:
            if start < end:
                yield view[start:end]
            return
        end += n


_title_setter: Any = None  # setproctitle's C function, once loaded


def _load_title_setter() -> Any:
    """setproctitle's C function, without its package's `import logging` (~15 ms): the C
    extension loaded straight from the package directory, once per process (a zygote
    loads it for all its children: a lookup on sys.path and a dlopen each otherwise).
    Loading it changes nothing: the title's memory is taken at the first title set."""
    global _title_setter
    if _title_setter is None:
        _title_setter = False  # tried: not again
        try:
            import importlib.machinery as machinery

            pkg = machinery.PathFinder.find_spec("setproctitle")
            if pkg is None or not pkg.submodule_search_locations:
                return None
            spec = machinery.PathFinder.find_spec(
                "_setproctitle", list(pkg.submodule_search_locations)
            )
            if spec is None or spec.loader is None:
                return None
            mod = spec.loader.create_module(spec)
            spec.loader.exec_module(mod)  # type: ignore[arg-type]
            _title_setter = mod.setproctitle  # type: ignore[union-attr]
        except Exception:
            pass  # a title is a nicety
    return _title_setter or None


def _set_title(title: str) -> None:
    setter = _load_title_setter()
    if setter is not None:
        try:  # noqa: SIM105 - contextlib is not imported for this (start-up cost)
            setter(title)
        except Exception:
            pass  # a title is a nicety
