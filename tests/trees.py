"""The syntax trees of the sources the structural tests read, each parsed once a process.

Those tests walk every module of corral/, most of them in more than one test and file: a
parse of corral/ is most of their CPU, and a worker ran it some forty times. A tree is
shared by every test that asks for the same text, so it is read and never changed; it is
found by the text itself, so a source changed since is parsed anew.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path


@functools.cache
def parsed(source: str) -> ast.Module:
    """`source`'s tree (shared: never changed by its readers)."""
    return ast.parse(source)


def file_tree(path: Path) -> ast.Module:
    """The tree of the file at `path` as it is now (shared: never changed by its readers)."""
    return parsed(path.read_text())


@functools.cache
def walked(module: ast.Module) -> tuple[ast.AST, ...]:
    """Every node of a shared `module` in ast.walk's order, walked once: the tests walk
    each module's whole tree again and again, and a walk costs more than the parse."""
    return tuple(ast.walk(module))
