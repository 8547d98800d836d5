"""`hey` (Debian's package, the Go load generator GoModel's harness drives its targets
with) as a load generator of bench/gateways: whole model calls only (it times no first
chunk and speaks no MCP session). Its per-request CSV read back into the figures
loadgen.py and loadgen.c write.

    command(spec)          argv of one run (its CSV on stdout)
    figures(csv, wall_s)   that CSV as {"wall_s", "latencies", "first_chunks", "errors",
                           "first_error"}; an answer not 200 is an error
"""

from __future__ import annotations

import shutil
from typing import Any

from . import loadgen


def command(spec: dict[str, Any]) -> list[str]:
    if spec["kind"] != "model" or spec.get("stream"):
        raise ValueError("hey drives whole model calls only (no stream, no MCP)")
    exe = shutil.which("hey")
    if exe is None:
        raise RuntimeError("hey is not installed (apt-get install hey)")
    headers = [x for k, v in spec["headers"].items() for x in ("-H", f"{k}: {v}")]
    return [exe, "-n", str(spec["n"]), "-c", str(spec["c"]), "-m", "POST",
            "-T", "application/json", *headers, "-d", loadgen.model_body(spec).decode(),
            "-t", str(int(spec.get("seconds", 120))), "-o", "csv", spec["url"]]


def figures(csv: str, wall_s: float) -> dict[str, Any]:
    latencies: list[float] = []
    errors, first_error = 0, ""
    for line in csv.splitlines()[1:]:
        cells = line.split(",")
        if len(cells) < 8:
            continue
        if cells[6] != "200":
            errors += 1
            first_error = first_error or f"status {cells[6]}"
            continue
        latencies.append(float(cells[0]))
    return {"wall_s": wall_s, "latencies": latencies, "first_chunks": [],
            "errors": errors, "first_error": first_error}
