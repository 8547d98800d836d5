"""A worker that answers each task at once and, asked to shut down, reports the usage
it had not reported yet for its last task (a worker flushing its counts as it stops):
80 input and 20 output tokens of model m1."""

from corral.worker import run

last = []


def handle(task, ctx):
    last[:] = [ctx]
    return "answered"


def flush():
    if last:
        last[0].report_usage(input_tokens=80, output_tokens=20, model="m1")


if __name__ == "__main__":
    run(handle, on_shutdown=flush)
