"""An agent that misbehaves on request, for tests and demos.

At start-up, by the MISBEHAVE environment variable:
  exit          exit at once (status 3), before answering initialize
  no-init       never answer initialize
  garbage       write lines that are not JSON-RPC to stdout, then behave
  hugeline      write one 100 MB line to stdout, then behave
  stubborn      ignore SIGTERM, the shutdown request and stdin EOF
  grandchild    leave a `sleep` child behind (its pid on stderr as "grandchild PID")
  escape        leave a `sleep` behind that double-forked and called setsid(), so it is
                in no process group of ours (its pid on stderr as "escaped PID")
  escape-brief  the same, but the escapee exits by itself after ESCAPE_SECONDS

As a task, by its input {"do": WHAT, ...}:
  echo          return the input
  crash         exit with status 3 mid-task
  sleep         sleep {"seconds": S}, honouring cancellation; return it and ctx.attempt
  await         wait until the file {"path": P} exists (honouring cancellation), return it
  leak          allocate memory until it runs out (RLIMIT_AS)
  files         open files until none are left (RLIMIT_NOFILE)
  spin          burn CPU forever (RLIMIT_CPU)
  fork          fork sleeping children until the kernel refuses (RLIMIT_NPROC)
  write         write a file of {"mb": N} megabytes (RLIMIT_FSIZE)
  fail          raise an error (the task fails, the worker lives)
  crash-once    crash unless {"marker": PATH} exists (creating it first): a retry succeeds
                (and returns ctx.attempt)
  until         before attempt {"attempt": N} (2 unless said), fail, or with {"how":
                "sleep"} sleep until cancelled; from it, return {"attempt": ctx.attempt}
  block         sleep {"seconds": S} ignoring cancellation
  stray         answer a request id and report progress for a task it was never given
  emit          send each of {"chunks": [...]} as the task's live output (ctx.emit)
  progress      report {"steps": N} progress steps, then return; with {"hold": PATH},
                wait after the first step until PATH exists (up to a minute)
  tools         call {"tool": NAME} {"times": N} times, return the results or the error
  tools-at-once call each of {"calls": [{"tool": NAME, "arguments": {...}}, ...]} at
                once (a thread each), return their results in order
  sequence      call each of {"calls": [{"tool": NAME, "arguments": {...}}, ...]} in
                order, return the results or each one's error; an entry with "attempt": N
                is called on attempt N only, {"crash": N} exits (status 3) on attempt N,
                {"await": PATH} (with "attempt") waits until PATH exists, and
                {"spawn": AGENT, "input": X} spawns a child and waits for its outcome
  publish       publish {"topic": T, "data": D} on the event bus
  subscribe     subscribe to {"topic": PATTERN}; events received are logged to stderr
  checkpoint    checkpoint {"state": S}
  state         return the state this worker was given (or last checkpointed)
  modules       {"names": [...]}: which of these modules are imported so far
  env           return its environment (os.environ)
  usage         report usage: each of {"reports": [{input_tokens, output_tokens,
                cost_usd, model}, ...]} with ctx.report_usage, then return
  raw           send {"method": M, "params": P} to corral, as a request, or as a
                notification with {"notify": true}; return the answer or the error

At start-up, MISBEHAVE=bad-init makes the SDK's on_initialize hook raise.
On `hibernate` it checkpoints {"hibernated": true, "before": STATE}; MISBEHAVE=no-hibernate
makes it never answer.
"""

import os
import sys
import time

mode = os.environ.get("MISBEHAVE", "")

if mode == "exit":
    sys.exit(3)
if mode == "no-init":
    while True:
        time.sleep(3600)
if mode == "garbage":
    sys.stdout.write("this is not json\n{\"jsonrpc\": \"1.0\"}\n[1, 2\n\n{}\n")
    sys.stdout.flush()
if mode == "hugeline":
    chunk = "x" * (1024 * 1024)
    for _ in range(100):
        sys.stdout.write(chunk)
    sys.stdout.write("\n")
    sys.stdout.flush()
if mode == "grandchild":
    # subprocess, signal and threading are imported by the modes that use them: the
    # suite starts this agent for hundreds of tests, and the three were near half of a
    # start's CPU (bench/RESULTS.md)
    import subprocess

    child = subprocess.Popen(["sleep", "1000"])
    print(f"grandchild {child.pid}", file=sys.stderr, flush=True)

if mode.startswith("escape"):
    # the daemon's double fork: child -> setsid -> grandchild; the child exits, so the
    # grandchild is re-parented (to corral, a subreaper) in a session of its own
    r, w = os.pipe()
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.write(w, b"%d\n" % os.getpid())
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            secs = os.environ.get("ESCAPE_SECONDS", "1000") if mode == "escape-brief" else "1000"
            os.execvp("sleep", ["sleep", secs])
        os._exit(0)
    os.close(w)
    escaped = int(os.read(r, 64))
    os.close(r)
    os.wait()
    print(f"escaped {escaped}", file=sys.stderr, flush=True)

from corral.worker import TaskError, run  # noqa: E402

_hold = []


def handle(task, ctx):
    what = task.get("do", "echo") if isinstance(task, dict) else "echo"
    if what == "echo":
        return task
    if what == "env":
        return dict(os.environ)
    if what == "crash":
        print("crashing on request", file=sys.stderr, flush=True)
        os._exit(3)
    if what == "sleep":
        deadline = time.monotonic() + float(task.get("seconds", 1))
        while time.monotonic() < deadline:
            ctx.check_cancelled()
            time.sleep(0.01)
        return {"slept": task.get("seconds", 1), "attempt": ctx.attempt}
    if what == "await":
        while not os.path.exists(task["path"]):
            ctx.check_cancelled()
            time.sleep(0.01)
        return {"awaited": task["path"]}
    if what == "leak":
        while True:
            _hold.append(bytearray(16 * 1024 * 1024))
    if what == "files":
        while True:
            _hold.append(open(os.devnull))  # noqa: SIM115
    if what == "spin":
        x = 0
        while True:
            x += 1
    if what == "fork":
        while True:
            pid = os.fork()
            if pid == 0:
                time.sleep(1000)
                os._exit(0)
            _hold.append(pid)
    if what == "write":
        with open(task["path"], "wb") as f:
            block = b"\0" * (1024 * 1024)
            for _ in range(int(task.get("mb", 1))):
                f.write(block)
        return {"written_mb": task.get("mb", 1)}
    if what == "fail":
        raise TaskError("failed on request", {"asked": True})
    if what == "until":
        if ctx.attempt < int(task.get("attempt", 2)):
            if task.get("how") == "sleep":
                while True:
                    ctx.check_cancelled()
                    time.sleep(0.01)
            raise TaskError(f"attempt {ctx.attempt} failed on request", None)
        return {"attempt": ctx.attempt}
    if what == "crash-once":
        marker = task["marker"]
        if not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(3)
        return {"survived": True, "replica": ctx.replica, "attempt": ctx.attempt}
    if what == "block":
        time.sleep(float(task.get("seconds", 1000)))
        return {"blocked": task.get("seconds")}
    if what == "stray":
        ctx._worker._send({"jsonrpc": "2.0", "id": 424242, "result": {"output": "stray"}})
        ctx._worker.notify("task/progress", {"task_id": "never-given", "progress": 1})
        return {"strayed": True}
    if what == "emit":
        for chunk in task.get("chunks", []):
            ctx.emit(chunk)
        return {"emitted": len(task.get("chunks", []))}
    if what == "progress":
        for i in range(int(task.get("steps", 3))):
            ctx.progress(i + 1, task.get("steps", 3), f"step {i + 1}")
            deadline = time.monotonic() + 60
            while i == 0 and "hold" in task and not os.path.exists(task["hold"]):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{task['hold']} never appeared")
                time.sleep(0.02)
        return {"steps": task.get("steps", 3)}
    if what == "tools":
        results = []
        for _ in range(int(task.get("times", 1))):
            try:
                results.append(ctx.call_tool(task["tool"], task.get("arguments", {})))
            except Exception as exc:  # the refusal is the answer under test
                results.append({"error": getattr(exc, "code", None), "message": str(exc)})
        return results
    if what == "sequence":
        results = []
        for step in task["calls"]:
            if step.get("crash") == ctx.attempt:
                os._exit(3)
            if "await" in step and step.get("attempt", ctx.attempt) == ctx.attempt:
                while not os.path.exists(step["await"]):
                    ctx.check_cancelled()
                    time.sleep(0.01)
            if "spawn" in step:  # a child (ctx.spawn), waited for: its outcome
                [end] = ctx.wait([ctx.spawn(step["spawn"], step.get("input"))])
                results.append(end)
                continue
            if "tool" not in step or step.get("attempt", ctx.attempt) != ctx.attempt:
                continue
            try:
                results.append(ctx.call_tool(step["tool"], step.get("arguments", {})))
            except Exception as exc:  # a refusal is the answer under test
                results.append({"error": getattr(exc, "code", None), "message": str(exc)})
        return results
    if what == "tools-at-once":
        import threading

        calls = task["calls"]
        got: list[object] = [None] * len(calls)

        def call(i: int) -> None:
            got[i] = ctx.call_tool(calls[i]["tool"], calls[i].get("arguments", {}))
        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(calls))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return got
    if what == "publish":
        ctx.publish(task["topic"], task.get("data"))
        return {"published": task["topic"]}
    if what == "subscribe":
        return ctx.subscribe(task["topic"])
    if what == "checkpoint":
        ctx.checkpoint(task["state"])
        return {"checkpointed": True}
    if what == "state":
        return {"state": ctx.state}
    if what == "modules":  # which of these modules the worker has imported so far
        return {name: name in sys.modules for name in task["names"]}
    if what == "usage":
        for report in task.get("reports", []):
            ctx.report_usage(**report)
        return {"reported": len(task.get("reports", []))}
    if what == "raw":
        if task.get("notify"):
            ctx._worker.notify(task["method"], task.get("params"))
            return {"notified": task["method"]}
        try:
            return {"result": ctx._worker.request(task["method"], task.get("params"))}
        except Exception as exc:
            return {"error": getattr(exc, "code", None), "message": str(exc)}
    raise TaskError(f"unknown misbehaviour: {what}")


if mode == "stubborn":
    import json
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for line in sys.stdin:
        msg = json.loads(line)
        if "id" in msg and msg.get("method") in ("initialize", "ping"):
            print(json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": {}}), flush=True)
    while True:  # stdin closed: stay anyway
        time.sleep(3600)


def on_event(topic, data):
    print(f"event {topic} {data!r}", file=sys.stderr, flush=True)


def on_initialize(params):
    if mode == "bad-init":
        raise RuntimeError("refusing to start")
    return {}


def on_hibernate(state):
    if mode == "no-hibernate":
        time.sleep(3600)
    return {"hibernated": True, "before": state}


run(handle, on_event=on_event, on_initialize=on_initialize, on_hibernate=on_hibernate)
