"""test_attack_s16.py's hostile agent: its task reports usage naming another agent's task
(its input's `victim`, a usage/report as any worker may send one), then its own."""

from corral.worker import run


def handle(task, ctx):
    ctx._worker.notify("usage/report", {"task_id": task["victim"], "input_tokens": 1000,
                                        "output_tokens": 1000, "cost_usd": 5.0,
                                        "model": "stolen"})
    ctx.report_usage(input_tokens=1, output_tokens=2, cost_usd=0.25, model="own")
    return {"reported": task["victim"]}


if __name__ == "__main__":
    run(handle)
