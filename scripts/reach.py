"""How far the tests reach past corral's public surface: the internal modules they import
and corral's private names they touch (issue 53 item 6: a test that holds an internal
still breaks when it is recut, though it tests nothing a user sees).

    .venv/bin/python scripts/reach.py          # the totals
    .venv/bin/python scripts/reach.py --files  # and each test file's own, most first

Public is what the README offers a Python user: the worker SDK (corral.worker) and the
embedding API (the corral.supervisor package's own names); every other corral module a
test imports is internal. A private name is one corral defines with a leading underscore
(a function, class, attribute set on self or a module's name); a test reaches it when it
reads or writes it on anything but its own `self`/`cls`, or imports it."""

from __future__ import annotations

import argparse
import ast
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PUBLIC = frozenset({"corral", "corral.worker", "corral.supervisor"})
# a named tuple's own public methods, spelled with an underscore so as not to clash
TUPLE_METHODS = frozenset({"_replace", "_asdict", "_fields", "_make"})


def private(name: str) -> bool:
    return name.startswith("_") and not name.endswith("__")


def defined_privates(package: Path) -> set[str]:
    """Every private name the package defines."""
    names: set[str] = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
    return {n for n in names if private(n)} - TUPLE_METHODS


class Reach:
    """One test file's imports of internal modules and touches of corral's private names."""

    def __init__(self, path: Path, root: Path, privates: set[str]) -> None:
        self.modules: set[str] = set()
        self.touches: Counter[str] = Counter()
        package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
        tree = ast.parse(path.read_text(), str(path))
        # os._exit, sys._getframe: another library's underscore, not corral's
        others = {(a.asname or a.name).split(".")[0] for node in ast.walk(tree)
                  if isinstance(node, ast.Import) for a in node.names
                  if not a.name.startswith("corral")}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                self.modules |= {a.name for a in node.names if a.name.startswith("corral")}
            elif isinstance(node, ast.ImportFrom):
                module = absolute(node, package)
                if not module.startswith("corral"):
                    continue
                self.modules.add(module)
                self.touches.update(a.name for a in node.names if a.name in privates)
            elif isinstance(node, ast.Attribute) and node.attr in privates and not (
                    isinstance(node.value, ast.Name) and node.value.id in {"self", "cls", *others}):
                self.touches[node.attr] += 1
        self.modules -= PUBLIC


def absolute(node: ast.ImportFrom, package: str) -> str:
    if not node.level:
        return node.module or ""
    base = package.split(".")[: len(package.split(".")) - node.level + 1]
    return ".".join([*base, *([node.module] if node.module else [])])


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", action="store_true", help="each test file's own counts")
    ap.add_argument("--root", type=Path, default=ROOT,
                    help="a checkout: its corral/ and tests/ (default: this one)")
    args = ap.parse_args(argv)
    root: Path = args.root
    privates = defined_privates(root / "corral")
    reaches = {p: Reach(p, root, privates) for p in sorted((root / "tests").rglob("*.py"))}
    modules = set().union(*(r.modules for r in reaches.values()))
    touches: Counter[str] = sum((r.touches for r in reaches.values()), Counter())
    print(f"test files: {len(reaches)}; importing an internal module: "
          f"{sum(bool(r.modules) for r in reaches.values())}; touching a private name: "
          f"{sum(bool(r.touches) for r in reaches.values())}")
    print(f"internal modules imported: {len(modules)}")
    print(f"private names touched: {len(touches)} ({sum(touches.values())} touches)")
    if args.files:
        for path, r in sorted(reaches.items(), key=lambda kv: -sum(kv[1].touches.values())):
            if r.touches or r.modules:
                print(f"{sum(r.touches.values()):5} touches {len(r.modules):3} modules  "
                      f"{path.relative_to(root)}  {' '.join(sorted(r.touches))}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
