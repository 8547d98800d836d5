"""Where a JavaScript ecosystem file is evaluated: node under bubblewrap, with no reach
beyond printing what the file exports (docs/security.md says what the sandbox holds and
why). Where bubblewrap cannot make that sandbox, the file is not run at all, and the
refusal says how to give its JSON instead."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import IO

from ..supervisor import seccomp
from ..supervisor.sandbox import find_program, program_paths, system_args, userns_forbidden

TIME_LIMIT = 10.0
MEMORY_MB = 2048  # address space: node 20 reserves about 1 GiB before it runs a line
HEAP_MB = 256  # V8's old space: a file that grows past it ends with V8's OOM
OUTPUT_LIMIT = 16 * 1024 * 1024
# the host's system directories bound read-only where they are directories, recreated
# where they are merged /usr's links; /etc is not among them (it holds secrets)
SYSTEM = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32")
# variables of the operator's environment node would act on: options and certificates
# that are the operator's, not the file's
DROPPED_ENV = ("NODE_OPTIONS", "NODE_EXTRA_CA_CERTS", "NODE_REPL_EXTERNAL_MODULE")
ASK_JSON = ("give its JSON (`node -p 'JSON.stringify(require(\"./FILE\"))' > "
            "ecosystem.json`)")

# what node says when a bound of memory stopped it: V8's heap, its reservations, a
# buffer's allocation (each may come first, by where the file was)
_OUT_OF_MEMORY = ("out of memory", "Fatal process OOM", "allocation failed")
_EACCES = 13


class SandboxRefusal(Exception):
    """Why the file was not evaluated, or not to the end (the message says it whole)."""


class NodeOutput:
    """What node printed and said: its exit status, stdout and stderr."""

    def __init__(self, status: int, stdout: str, stderr: str) -> None:
        self.status, self.stdout, self.stderr = status, stdout, stderr


def seccomp_program() -> bytes:
    """The importer's filter (supervisor/seccomp.py: no socket, no io_uring, no call of
    another ABI), or the refusal that says why there is none."""
    program = seccomp.program(seccomp.IMPORT)
    if program is None:
        raise SandboxRefusal(f"no seccomp filter can be built here "
                             f"({seccomp.missing()}): a JavaScript ecosystem file is not "
                             f"run here; {ASK_JSON}")
    return program


def argv(node: str, tree: Path, flag: str, script: str, target: str, filter_fd: int
         ) -> list[str]:
    """bwrap's command line running node's `script` on `target` with `tree` readable."""
    bwrap = find_program("bwrap")
    if bwrap is None:
        raise SandboxRefusal("a JavaScript ecosystem file is evaluated only in a sandbox "
                      "(bubblewrap), which is not installed here (Debian's package is "
                      f"bubblewrap): {ASK_JSON}")
    args = [bwrap, "--die-with-parent", "--new-session", "--unshare-all",
            "--unshare-user", "--disable-userns", "--cap-drop", "ALL", *system_args(SYSTEM)]
    for path in program_paths(node):
        args += ["--ro-bind-try", str(path), str(path)]
    args += ["--ro-bind", str(tree), str(tree), "--remount-ro", "/",
             "--add-seccomp-fd", str(filter_fd), "--chdir", str(tree), "--",
             node, flag, f"--allow-fs-read={tree}/*", f"--max-old-space-size={HEAP_MB}",
             "--input-type=module", "-e", script, target]
    return args


def _bounds() -> None:
    """In the child, before bwrap runs: the bounds everything in the sandbox inherits."""
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_MB << 20, MEMORY_MB << 20))
    resource.setrlimit(resource.RLIMIT_FSIZE, (OUTPUT_LIMIT, OUTPUT_LIMIT))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def evaluate(node: str, path: Path, flag: str, script: str,
             env: dict[str, str]) -> NodeOutput:
    """Run node's `script` on the file `path` (resolved) in the sandbox."""
    tree = path.parent
    if tree == Path("/"):
        raise SandboxRefusal("a JavaScript ecosystem file in / would be given the whole host to "
                      "read: move it into a directory of its own")
    program = seccomp_program()
    env = {k: v for k, v in env.items() if k not in DROPPED_ENV}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.TemporaryFile() as bpf:
        bpf.write(program)
        bpf.seek(0)
        cmd = argv(node, tree, flag, script, path.as_uri(), bpf.fileno())
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                env=env, cwd=tree, pass_fds=(bpf.fileno(),),
                                preexec_fn=_bounds, start_new_session=True)
        try:
            status = proc.wait(TIME_LIMIT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # bwrap's: the sandbox dies with it
            proc.wait()
            raise SandboxRefusal(f"node did not finish evaluating it within {TIME_LIMIT:g} s "
                          "(it was stopped)") from None
        said = _tail(err)
        if status != 0 and said.startswith("bwrap:"):
            forbidden = userns_forbidden()
            why = f" ({forbidden})" if forbidden else ""
            raise SandboxRefusal(f"a JavaScript ecosystem file is evaluated only in a sandbox, "
                          f"and bubblewrap could not make one here{why}: "
                          f"{said.splitlines()[0]}: {ASK_JSON}")
        if status in (-signal.SIGXFSZ, 128 + signal.SIGXFSZ) or \
                out.tell() >= OUTPUT_LIMIT:
            raise SandboxRefusal(f"node's output passed {OUTPUT_LIMIT >> 20} MiB: not read")
        if status != 0 and any(sign in said for sign in _OUT_OF_MEMORY):
            raise SandboxRefusal(f"node ran out of memory evaluating it (it may use "
                          f"{HEAP_MB} MiB of heap, {MEMORY_MB} MiB in all)")
        out.seek(0)
        return NodeOutput(status, out.read(OUTPUT_LIMIT).decode("utf-8", "replace"), said)


def _tail(err: IO[bytes]) -> str:
    """The last 64 KiB of what node said on stderr (the file is left at its end)."""
    err.seek(max(0, err.tell() - 65536))
    return err.read().decode("utf-8", "replace")
