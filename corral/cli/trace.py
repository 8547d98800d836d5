"""`corral trace TASK_ID`: a task's trace as a waterfall in the terminal."""

from __future__ import annotations

import click

from .. import methods as m
from .app import fail, shows

BAR = 40  # columns of the time axis


def waterfall(view: m.TraceView) -> list[str]:
    """One line a span, children under their parent, a bar on the trace's time axis:
    `!` marks a span that failed."""
    spans = view.spans
    if not spans:
        return []
    t0 = min(s.start for s in spans)
    total = max(max(s.end for s in spans) - t0, 1e-9)
    ids = {s.span_id for s in spans}
    children: dict[str | None, list[m.SpanView]] = {}
    for s in spans:
        parent = s.parent_id if s.parent_id in ids else None
        children.setdefault(parent, []).append(s)
    rows: list[tuple[int, m.SpanView]] = []

    def walk(parent: str | None, depth: int) -> None:
        for s in sorted(children.get(parent, ()), key=lambda s: s.start):
            rows.append((depth, s))
            walk(s.span_id, depth + 1)

    walk(None, 0)
    label_width = max(2 * d + len(s.name) for d, s in rows) + 2
    lines = [f"trace {view.trace_id}  task {view.task_id}  {_ms(total)}"]
    for depth, s in rows:
        first = int((s.start - t0) / total * BAR)
        length = max(1, round((s.end - s.start) / total * BAR))
        bar = " " * first + ("!" if s.error else "█") * min(length, BAR - first or 1)
        label = ("  " * depth + s.name).ljust(label_width)
        lines.append(f"{label}|{bar.ljust(BAR)}| {_ms(s.end - s.start):>9}{_detail(s)}"
                     + (f"  {s.error}" if s.error else ""))
        for t, name, attrs in s.events:
            why = next(iter(attrs.values()), "") if isinstance(attrs, dict) else ""
            lines.append(f"{'  ' * (depth + 1)}· {name} at +{_ms(t - t0)} {why}".rstrip())
    return lines


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 10 else f"{seconds:.2f} s"


def _detail(s: m.SpanView) -> str:
    a = s.attributes
    parts = [f"{k.rpartition('.')[2]}={a[k]}" for k in (
        "corral.replica", "process.pid", "jsonrpc.request.id", "gen_ai.usage.input_tokens",
        "gen_ai.usage.output_tokens") if k in a]
    return "  " + " ".join(parts) if parts else ""


@shows(m.TracesGet)
@click.argument("task_id")
def trace(res: m.TraceView) -> None:
    lines = waterfall(res)
    if not lines:
        fail(f"no trace kept for task {res.task_id} (not sampled, not finished yet, or pruned "
             "from the local store)")
    click.echo("\n".join(lines))
