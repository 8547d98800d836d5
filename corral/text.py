"""How corral words things for people, shared by the CLI and the daemon's messages."""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Iterable


def plural(n: float, word: str, many: str | None = None) -> str:
    """`1 agent`, `2 agents`: counts as a person would write them (`many` for a word
    whose plural is not WORD + s: `plural(n, "process", "processes")`)."""
    count = f"{n:g}" if isinstance(n, float) else str(n)
    return f"{count} {word}" if n == 1 else f"{count} {many or word + 's'}"


def ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th, 11th, 12th, 13th, 21st."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The choice `word` most likely misspells, or None when none is near enough."""
    import difflib  # here: the CLI's start-up does not pay for it

    found = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return found[0] if found else None


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """` (did you mean `NAME`?)` for the closest choice, or nothing."""
    near = closest(word, choices)
    return f" (did you mean `{near}`?)" if near is not None else ""


def listing(names: Iterable[str], most: int = 10) -> str:
    """Names in a sentence, at most `most` of them: `a, b, c and 12 more`."""
    shown = list(names)
    if len(shown) <= most:
        return ", ".join(shown)
    return f"{', '.join(shown[:most])} and {len(shown) - most} more"


def iso_time(t: float, ms: bool = False) -> str:
    """A wall-clock time as corral shows every time: ISO 8601, UTC (`Z`), to the second
    (`ms`: to the millisecond), the same in log files, the daemon's messages and the CLI.
    time's gmtime, not datetime: a third of the cost, at every line a log file gets."""
    us = round(t * 1e6)  # (to the microsecond, then cut to the millisecond, as datetime)
    second = _second(us // 1_000_000)
    return f"{second}.{us // 1000 % 1000:03d}Z" if ms else f"{second}Z"


# what a terminal may act on: the C0 controls (ESC begins every escape sequence, BEL
# ends an OSC, CR redraws a line), DEL, and the C1 controls (CSI and OSC in one character)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_BUT_NEWLINE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")
_second = functools.lru_cache(maxsize=4)(  # a second's lines share its strftime (dearest)
    lambda s: time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(s)))
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped(found: re.Match[str]) -> str:
    return _ESCAPES.get(found[0], f"\\x{ord(found[0]):02x}")


def one_line(text: str) -> str:
    """`text` as one line of a log: newlines and other control characters escaped
    (`\\n`, `\\x1b`), so that a record never spans lines nor moves a terminal's cursor."""
    if not _CONTROL.search(text):
        return text
    return _CONTROL.sub(_escaped, text)


def visible(text: str) -> str:
    """`text` as a terminal is given it (the CLI's output: cli/terminal.py): control
    characters escaped as `one_line` escapes them, but for the newline, so that lines
    stay lines and none of an agent's sequences (a clipboard write, a title, a CR that
    redraws a line) acts on the terminal."""
    if not _CONTROL_BUT_NEWLINE.search(text):
        return text
    return _CONTROL_BUT_NEWLINE.sub(_escaped, text)


def clip(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters for a one-line record: at the last space
    (a URL or a word is not cut in its middle, unless it is all there is), saying how
    long it was."""
    if len(text) <= limit:
        return text
    cut = text.rfind(" ", 0, limit + 1)
    head = text[:cut if cut > 0 else limit].rstrip()
    return f"{head}… ({len(text)} characters)"
