"""bench/gateways/pycount.py's hook in the daemon it starts (this directory first on its
PYTHONPATH, CORRAL_PYCOUNT the file to write): on SIGRTMIN+5 the main thread's Python
work is counted, on SIGRTMIN+6 the counts are written, one function a line. With
CORRAL_PYCOUNT_MODE=ops, the bytecode instructions each function ran (sys.settrace's
opcode events), with =lines those of each line; else its calls and resumes
(sys.setprofile's call events) and the C functions called. Nothing is counted without
CORRAL_PYCOUNT."""

import os
import signal
import sys
from collections import Counter
from typing import Any

if os.environ.get("CORRAL_PYCOUNT"):
    _counts: Counter[tuple[str, str]] = Counter()
    _c_calls: Counter[str] = Counter()

    def _profile(frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            _counts[(frame.f_code.co_filename, frame.f_code.co_name)] += 1
        elif event == "c_call":
            _c_calls[getattr(arg, "__qualname__", str(arg))] += 1

    def _trace(frame: Any, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        if event == "opcode":
            _counts[(frame.f_code.co_filename, frame.f_code.co_name)] += 1
        return _trace

    def _trace_lines(frame: Any, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        if event == "opcode":
            code = frame.f_code
            _counts[(code.co_filename, f"{code.co_name}:{frame.f_lineno}")] += 1
        return _trace_lines

    def _start(*_: Any) -> None:
        _counts.clear()
        _c_calls.clear()
        mode = os.environ.get("CORRAL_PYCOUNT_MODE")
        if mode in ("ops", "lines"):
            sys.settrace(_trace if mode == "ops" else _trace_lines)
        else:
            sys.setprofile(_profile)
        with open(os.environ["CORRAL_PYCOUNT"] + ".on", "w"):
            pass  # (counting: the bench's load may begin)

    def _stop(*_: Any) -> None:
        sys.setprofile(None)
        sys.settrace(None)
        out = os.environ["CORRAL_PYCOUNT"]
        with open(out + ".tmp", "w") as f:
            for (path, name), n in _counts.most_common():
                f.write(f"{n}\tpy\t{name}\t{path}\n")
            for name, n in _c_calls.most_common():
                f.write(f"{n}\tc\t{name}\t\n")
        os.replace(out + ".tmp", out)  # (whole: the bench reads it once it is there)

    signal.signal(signal.SIGRTMIN + 5, _start)
    signal.signal(signal.SIGRTMIN + 6, _stop)
