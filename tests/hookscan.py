"""Where a module fills another object's hook after its construction (the rule held by
tests/test_interceptors.py; decision 523).

A class's hook slots are what its `__init__` gives itself as behaviour or as a
collaborator to be filled in: an attribute annotated with a `Callable` (or a name the
package gives one: `Places = Callable[...]`), one made a
lambda, one named `on_*`, or one of a `Protocol` of the package's that starts as None
(`self.x: P | None = None`, or an `__init__` parameter so annotated). A hook assignment
is `E.x = V` where E is not `self` (nor `cls`) and x is a hook slot of E's class: the
object's owner reaching in to plant behaviour or a collaborator after it was made. E's
class is read, without running anything, from annotations and constructions: a
parameter's annotation, a local made by a class or by a function whose return is
annotated, an attribute that its class's methods make or annotate, and so on down an
attribute chain. Where E's class cannot be read, an `on_*` name alone counts. Giving
None to a Protocol slot (a collaborator let go) is not a hook; to a callable one it is.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .trees import file_tree, walked

Slot = tuple[ast.expr | None, ast.expr | None]  # (annotation, value)


def _named(ann: ast.expr) -> set[str]:
    out: set[str] = set()
    for n in ast.walk(ann):
        if isinstance(n, ast.Name):
            out.add(n.id)
        elif isinstance(n, ast.Attribute):
            out.add(n.attr)
        elif isinstance(n, ast.Constant) and isinstance(n.value, str):
            out.add(n.value)
    return out


def _init(c: ast.ClassDef) -> ast.FunctionDef | None:
    return next((f for f in c.body if isinstance(f, ast.FunctionDef)
                 and f.name == "__init__"), None)


def _self_attr(t: ast.expr) -> str | None:
    if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self":
        return t.attr
    return None


@dataclass
class Package:
    """The classes of a package's modules, what their instances hold, and the hook
    assignments among them."""

    root: Path
    trees: dict[Path, ast.Module] = field(default_factory=dict)
    classes: dict[str, ast.ClassDef] = field(default_factory=dict)
    protocols: set[str] = field(default_factory=set)
    attrs: dict[str, dict[str, Slot]] = field(default_factory=dict)
    returns: dict[str, set[str | None]] = field(default_factory=dict)
    callables: set[str] = field(default_factory=lambda: {"Callable"})

    def __post_init__(self) -> None:
        for p in sorted(self.root.rglob("*.py")):
            self.trees[p] = file_tree(p)
        for t in self.trees.values():
            for c in walked(t):
                if isinstance(c, ast.ClassDef):
                    self.classes.setdefault(c.name, c)
        self.protocols = {n for n, c in self.classes.items()
                          if any(ast.unparse(b).endswith("Protocol") for b in c.bases)}
        self.attrs = {n: self._attrs(c) for n, c in self.classes.items()}
        for t in self.trees.values():
            for s in t.body:  # the package's names for a Callable type
                if isinstance(s, ast.Assign) and len(s.targets) == 1 \
                        and isinstance(s.targets[0], ast.Name) and "Callable" in _named(s.value):
                    self.callables.add(s.targets[0].id)
        for t in self.trees.values():
            for f in walked(t):
                if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef) and f.returns:
                    self.returns.setdefault(f.name, set()).add(self.class_of_ann(f.returns))

    # -- what a class holds --------------------------------------------------------------
    def _attrs(self, c: ast.ClassDef) -> dict[str, Slot]:
        out: dict[str, Slot] = {}
        for n in ast.walk(c):
            if isinstance(n, ast.AnnAssign) and (a := _self_attr(n.target)):
                out.setdefault(a, (n.annotation, n.value))
            elif isinstance(n, ast.Assign):
                for t in n.targets:
                    if a := _self_attr(t):
                        out.setdefault(a, (None, n.value))
        for s in c.body:
            if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name):
                out.setdefault(s.target.id, (s.annotation, s.value))
        return out

    def class_of_ann(self, ann: ast.expr | None, within: set[str] | None = None
                     ) -> str | None:
        """The one class of the package an annotation names (X, X | None, "X")."""
        names = self.classes.keys() if within is None else within
        if isinstance(ann, ast.Constant) and isinstance(ann.value, str):
            try:
                ann = ast.parse(ann.value, mode="eval").body
            except SyntaxError:
                return None
        if isinstance(ann, ast.BinOp) and isinstance(ann.op, ast.BitOr):
            sides = [s for s in (ann.left, ann.right)
                     if not (isinstance(s, ast.Constant) and s.value is None)]
            return self.class_of_ann(sides[0], within) if len(sides) == 1 else None
        name = (ann.id if isinstance(ann, ast.Name) else
                ann.attr if isinstance(ann, ast.Attribute) else None)
        return name if name in names else None

    def hook_slots(self, cname: str) -> set[str]:
        init = _init(self.classes[cname])
        if init is None:
            return set()
        params = {a.arg: a.annotation for a in init.args.args + init.args.kwonlyargs}
        slots = set()
        for n in ast.walk(init):
            if isinstance(n, ast.AnnAssign):
                target, ann, value = n.target, n.annotation, n.value
            elif isinstance(n, ast.Assign) and len(n.targets) == 1:
                target, ann, value = n.targets[0], None, n.value
            else:
                continue
            a = _self_attr(target)
            if a is None:
                continue
            if ann is None and isinstance(value, ast.Name):
                ann = params.get(value.id)  # a parameter kept as it came
            behaviour = a.startswith("on_") or isinstance(value, ast.Lambda) or (
                ann is not None and bool(self.callables & _named(ann)))
            collaborator = (ann is not None and ast.unparse(ann).endswith("None")
                            and self.class_of_ann(ann, self.protocols) is not None)
            if behaviour or collaborator:
                slots.add(a)
        return slots

    # -- the class of an expression ---------------------------------------------------------
    def attr_class(self, cname: str, attr: str) -> str | None:
        slot = self.attrs.get(cname, {}).get(attr)
        if slot is None:
            return None
        ann, value = slot
        return self.class_of_ann(ann) or self.class_of_value(value, cname)

    def class_of_value(self, v: ast.expr | None, cname: str | None = None) -> str | None:
        if isinstance(v, ast.Await):
            return self.class_of_value(v.value, cname)
        if isinstance(v, ast.Call):
            f = v.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) \
                else None
            if name in self.classes:
                return name
            made = self.returns.get(name or "", set())
            return next(iter(made)) if len(made) == 1 else None
        if cname is not None and isinstance(v, ast.Name):
            init = _init(self.classes[cname])
            params = {a.arg: a.annotation for a in init.args.args + init.args.kwonlyargs} \
                if init is not None else {}
            return self.class_of_ann(params.get(v.id))
        if cname is not None and isinstance(v, ast.Attribute):
            return self.class_of(v, {}, cname)
        return None

    def class_of(self, e: ast.expr, scope: dict[str, str], enclosing: str | None
                 ) -> str | None:
        if isinstance(e, ast.Name):
            return enclosing if e.id == "self" else scope.get(e.id)
        if isinstance(e, ast.Attribute):
            base = self.class_of(e.value, scope, enclosing)
            return self.attr_class(base, e.attr) if base else None
        return None

    # -- the rule ---------------------------------------------------------------------------
    def hook_assignments(self) -> Iterator[str]:
        for path, tree in self.trees.items():
            for line, target, owner in self._walk(tree, None, {}):
                yield f"{path.relative_to(self.root.parent)}:{line}: {target} ({owner})"

    def _walk(self, node: ast.AST, enclosing: str | None, scope: dict[str, str]
              ) -> Iterator[tuple[int, str, str | None]]:
        for ch in ast.iter_child_nodes(node):
            if isinstance(ch, ast.ClassDef):
                yield from self._walk(ch, ch.name, {})
                continue
            if isinstance(ch, ast.FunctionDef | ast.AsyncFunctionDef):
                inner = dict(scope)
                for a in ch.args.args + ch.args.kwonlyargs:
                    if c := self.class_of_ann(a.annotation):
                        inner[a.arg] = c
                yield from self._walk(ch, enclosing, inner)
                continue
            if isinstance(ch, ast.Assign):
                yield from self._assigned(ch, enclosing, scope)
            elif isinstance(ch, ast.AnnAssign) and isinstance(ch.target, ast.Name) and (
                    c := self.class_of_ann(ch.annotation)):
                scope[ch.target.id] = c
            yield from self._walk(ch, enclosing, scope)

    def _assigned(self, a: ast.Assign, enclosing: str | None, scope: dict[str, str]
                  ) -> Iterator[tuple[int, str, str | None]]:
        for target in a.targets:
            if isinstance(target, ast.Name):
                c = self.class_of_value(a.value) or self.class_of(a.value, scope, enclosing)
                if c:
                    scope[target.id] = c
            pairs: list[tuple[ast.expr, ast.expr]] = [(target, a.value)]
            if isinstance(target, ast.Tuple) and isinstance(a.value, ast.Tuple) \
                    and len(target.elts) == len(a.value.elts):
                pairs = list(zip(target.elts, a.value.elts, strict=True))
            for t, value in pairs:
                if not isinstance(t, ast.Attribute) or (
                        isinstance(t.value, ast.Name) and t.value.id in ("self", "cls")):
                    continue
                owner = self.class_of(t.value, scope, enclosing)
                if owner is None:
                    if t.attr.startswith("on_"):
                        yield a.lineno, ast.unparse(t), None
                    continue
                if t.attr not in self.hook_slots(owner):
                    continue
                ann = self.attrs.get(owner, {}).get(t.attr, (None, None))[0]
                let_go = isinstance(value, ast.Constant) and value.value is None
                if let_go and not t.attr.startswith("on_") and not (
                        ann is not None and self.callables & _named(ann)):
                    continue
                yield a.lineno, ast.unparse(t), owner
