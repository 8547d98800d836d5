"""bench_durable_throughput's paired sitting (--vs): the median of the per-chunk ratios,
a chunk whose other side measured none left out. A chunk of the other tree with no CPU
(its daemon's time under the scheduler's granularity, rounded to zero) or no run
finished divided by zero, and the sitting's whole JSON was lost."""

from __future__ import annotations


def chunk(per_s: float, cpu: float, p50: float) -> dict[str, float]:
    return {"per_s": per_s, "server_cpu_us": cpu, "p50_ms": p50}


def test_a_chunk_the_other_side_measured_nothing_of_is_left_out_of_the_ratios() -> None:
    # imported here, not at collection (which every pytest-xdist worker makes): the bench's
    # harness compiles corral/ in a child process at its import
    from bench.bench_durable_throughput import paired

    out = {"runs": {}, "steps": {
        "corral normal": {"median": {}, "chunks": [chunk(10, 0, 1), chunk(12, 5, 2),
                                                   chunk(9, 4, 1)]},
        "before normal": {"median": {}, "chunks": [chunk(10, 0, 1), chunk(6, 10, 0),
                                                   chunk(0, 0, 0)]}}}
    assert paired(out)["steps corral normal"]["this/before"] == {
        "per_s": 1.5, "server_cpu_us": 0.5, "p50_ms": 1.0}
    out["steps"]["before normal"]["chunks"] = [chunk(0, 0, 0)] * 3
    assert paired(out)["steps corral normal"]["this/before"] == {
        "per_s": None, "server_cpu_us": None, "p50_ms": None}
