"""docs/decisions.md grouped by subsystem, with an index and each entry's status.

    .venv/bin/python scripts/decisions.py          # rewrite docs/decisions.md in place
    .venv/bin/python scripts/decisions.py --check  # exit 1 if a run would change it

An entry is `N\\. **Title** ...` at the start of a line (`N. ` is read too), its text
running to the next entry or heading; its number is kept for good (code and docs cite
"decision N"). An entry under a subsystem's heading stays there (move it by hand to regroup
it); an entry appended at the end of the file (under the closing "Added in this cut"
heading, or in a file not grouped yet) goes to the subsystem its text names (`subsystem:
KEY` anywhere in it), else to the one the paths it names point to, else to the one its
title's words point to, else to "other". An entry is active unless it says `Status:
superseded by N`; the script writes that line on the entries other entries say they
supersede or replace ("decision N superseded", "superseded by decision N", "supersedes
decision N", "replaces decision N").
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "decisions.md"

TITLE = "# Design decisions and departures from DESIGN.md"
INTRO = """\
The design decisions in force, one short entry each: what was decided and why (the
alternative rejected where it matters). An entry's number is its name for good: code and
docs cite "decision N". Entries are grouped by subsystem, each group in the order of its
numbers; a new entry is appended under the closing "Added in this cut" heading, and
`scripts/decisions.py` moves it into its group (guessed from the paths it names, or
`subsystem: KEY` written in it) and keeps the index true. A new entry takes the number
after the highest: a removed entry's number is never given again. An entry that still
stands in part, or that code cites, says "Status: superseded by N" where another replaced
it.

Decisions superseded or historical were removed on 2026-11-27, and the rest shortened; git
history keeps every one in full (`git log -p docs/decisions.md`). The measurements behind
them are in bench/RESULTS.md and its notebook, bench/notebook/RESULTS-archive.md."""
INDEX = "## Index"
APPENDED = "## Added in this cut"

# (key, heading): the index's order and the file's
SUBSYSTEMS = [
    ("supervisor", "Supervisor: processes, replicas and their lifecycle"),
    ("worker", "Worker SDK and the wire protocol"),
    ("tasks", "Tasks"),
    ("sessions", "Sessions"),
    ("workflows", "Workflows and teams"),
    ("cluster", "Cluster"),
    ("mcp", "MCP servers and the gateway"),
    ("http", "HTTP API and dashboard"),
    ("daemon", "Daemon: control methods, events, packages"),
    ("state", "State, journal and upgrade"),
    ("observability", "Logs, metrics, history and tracing"),
    ("security", "Security and tenants"),
    ("cli", "CLI and import"),
    ("tests", "Tests and benchmarks"),
    ("other", "Other"),
]
HEADINGS = {heading: key for key, heading in SUBSYSTEMS}

# a path's subsystem: the first prefix (of the path under corral/) that matches
PATH_RULES = [
    ("supervisor/tasks/sessions", "sessions"), ("daemon/sessionhandlers", "sessions"),
    ("cluster/sessions", "sessions"),
    ("supervisor/tasks/", "tasks"), ("daemon/tasks", "tasks"), ("daemon/taskjournal", "tasks"),
    ("daemon/steps", "tasks"), ("daemon/steplog", "tasks"), ("taskviews", "tasks"),
    ("supervisor/workflows", "workflows"), ("daemon/workflows", "workflows"),
    ("supervisor/teams", "workflows"), ("daemon/teams", "workflows"),
    ("daemon/defcatalog", "workflows"),
    ("cluster/", "cluster"), ("daemon/clusterpeer", "cluster"),
    ("mcp/", "mcp"), ("supervisor/mcpserver", "mcp"), ("supervisor/tools", "mcp"),
    ("daemon/gateway", "mcp"), ("daemon/http_gateway", "mcp"), ("daemon/http/mcp", "mcp"),
    ("cli/mcp_serve", "mcp"),
    ("daemon/http/", "http"),
    ("daemon/tenant", "security"), ("daemon/visibility", "security"),
    ("daemon/tokens", "security"), ("daemon/privilege", "security"),
    ("supervisor/sandbox", "security"), ("supervisor/tenant", "security"),
    ("supervisor/runas", "security"), ("redact", "security"), ("caller", "security"),
    ("daemon/store", "state"), ("daemon/statefiles", "state"), ("daemon/revisions", "state"),
    ("daemon/upgrade", "state"), ("daemon/handoff", "state"), ("daemon/boot", "state"),
    ("supervisor/adopt", "state"), ("daemon/journal", "state"), ("daemon/incarnation", "state"),
    ("daemon/log", "observability"), ("daemon/journald", "observability"),
    ("daemon/trace", "observability"), ("supervisor/tracing", "observability"),
    ("daemon/history", "observability"), ("daemon/audit", "observability"),
    ("daemon/metrics", "observability"), ("daemon/enginelog", "observability"),
    ("tracecontext", "observability"),
    ("worker/", "worker"), ("workerproto", "worker"), ("jsonrpc", "worker"),
    ("supervisor/", "supervisor"),
    ("cli/", "cli"), ("importer/", "cli"),
    ("daemon/", "daemon"), ("methods", "daemon"), ("results", "daemon"),
    ("tests/cluster", "cluster"), ("tests/", "tests"), ("bench/", "tests"), ("scripts/", "tests"),
]

# words, when the entry names no path: each rule's hits, thrice in the title; GENERIC
# words count in the title alone
GENERIC = {"agent", "process", "task", "replica", "log", "test", "corral ", "node", "restart"}
WORD_RULES = [
    ("exporter", "observability"), ("span", "observability"),
    ("new image", "state"), ("new install", "state"), ("hand-over", "state"),
    ("re-exec", "state"), ("adopt", "state"),
    ("claim", "cluster"), ("incarnation", "cluster"), ("pull loop", "cluster"),
    ("sampling", "mcp"), ("elicitation", "mcp"), ("outputschema", "mcp"),
    ("prompts", "mcp"), ("allowlist", "mcp"),
    ("step", "tasks"), ("retry", "tasks"), ("sticky", "tasks"), ("broadcast", "workflows"),
    ("schedule", "daemon"), ("reload", "daemon"), ("control connection", "daemon"),
    ("quota", "supervisor"), ("pause", "supervisor"), ("deadline", "supervisor"),
    ("stop", "supervisor"), ("exit", "supervisor"), ("spawn", "supervisor"),
    ("cgroup", "supervisor"), ("heartbeat", "supervisor"), ("one-shot", "supervisor"),
    ("hung", "supervisor"), ("cap", "supervisor"), ("drain", "cluster"),
    ("cluster", "cluster"), ("redis", "cluster"), ("node", "cluster"),
    ("mcp", "mcp"), ("gateway", "mcp"),
    ("team", "workflows"), ("workflow", "workflows"), ("a run", "workflows"),
    ("tenant", "security"), ("token", "security"), ("secret", "security"),
    ("sandbox", "security"), ("attacker", "security"),
    ("session", "sessions"),
    ("rest", "http"), ("http", "http"), ("dashboard", "http"), ("sse", "http"),
    ("trace", "observability"), ("metric", "observability"), ("log", "observability"),
    ("audit", "observability"),
    ("upgrade", "state"), ("journal", "state"), ("state database", "state"),
    ("sdk", "worker"), ("worker", "worker"),
    ("task", "tasks"),
    ("test", "tests"), ("bench", "tests"), ("suite", "tests"),
    ("corral ", "cli"), ("cli ", "cli"),
    ("replica", "supervisor"), ("process", "supervisor"), ("restart", "supervisor"),
    ("agent", "supervisor"),
]

# `N\. ` as written (the backslash keeps Markdown from taking the entries for one ordered
# list, which it would number 1, 2, 3... whatever they say); `N. ` is read too
ENTRY = re.compile(r"^(\d+)\\?\. ")
PATH = re.compile(r"(?<![\w.])((?:corral/|tests/|bench/|scripts/)?[a-z_]+(?:/[a-z_]+)*"
                  r"(?:\.py|/))(?![\w])")
EXPLICIT = re.compile(r"\bsubsystem: ([a-z]+)\b")
STATUS = re.compile(r"^\s+Status: superseded by (\d+)( \(in part\))?\.$", re.M)
SUPERSEDES = [  # (pattern, whether the entry's own number is the one superseded)
    (re.compile(r"superseded by decision (\d+)"), True),
    (re.compile(r"decision (\d+) superseded( for)?"), False),
    (re.compile(r"supersed(?:es|ing) decision (\d+)"), False),
    (re.compile(r"(?:replaces|replacing) decision (\d+)"), False),
]


class Malformed(ValueError):
    """The file does not parse as entries under headings: the message says where."""


@dataclass
class Entry:
    number: int
    text: str  # its lines, without the trailing newline
    group: str | None  # its subsystem's key; None: appended, not grouped yet

    @property
    def title(self) -> str:
        m = re.match(r"\d+\\?\. \*\*(.*?)\*\*", self.text, re.S)
        return (m.group(1) if m else self.text.split("\n", 1)[0]).replace("\n", " ")


@dataclass
class Parsed:
    entries: list[Entry] = field(default_factory=list)
    index: str = ""  # the index as written (empty: none yet)


def parse(text: str) -> Parsed:
    """The entries with their groups; a heading that is no subsystem's is refused."""
    out = Parsed()
    group: str | None = None
    section = ""
    current: list[str] | None = None
    index_lines: list[str] = []

    def close() -> None:
        if current is not None:
            body = "\n".join(current).rstrip()
            m = ENTRY.match(body)
            assert m
            out.entries.append(Entry(int(m.group(1)), body, group))

    for lineno, line in enumerate(text.split("\n"), 1):
        if line.startswith("#"):
            close()
            current = None
            section = line
            if line.startswith("## ") and line not in (INDEX, APPENDED):
                if line[3:] not in HEADINGS:
                    raise Malformed(f"line {lineno}: {line!r} is no subsystem's heading "
                                    f"(scripts/decisions.py SUBSYSTEMS)")
                group = HEADINGS[line[3:]]
            elif line == APPENDED:
                group = None
            continue
        if section == INDEX:
            index_lines.append(line)
            continue
        if ENTRY.match(line):
            close()
            current = [line]
        elif current is not None:
            current.append(line)
        elif line.strip() and section.startswith("## "):
            raise Malformed(f"line {lineno}: text outside an entry: {line[:60]!r}")
    close()
    out.index = "\n".join(index_lines).strip()
    seen = Counter(e.number for e in out.entries)
    twice = sorted(n for n, c in seen.items() if c > 1)
    if twice:
        raise Malformed(f"numbers used twice: {', '.join(map(str, twice))}")
    return out


def subsystem_of(path: str) -> str | None:
    path = path.removeprefix("corral/")
    for prefix, key in PATH_RULES:
        if path.startswith(prefix):
            return key
    return None


def basenames() -> dict[str, str]:
    """A file's name -> its path under corral/, for the names only one file has."""
    found: dict[str, list[str]] = {}
    for p in (ROOT / "corral").rglob("*.py"):
        found.setdefault(p.name, []).append(str(p.relative_to(ROOT / "corral")))
    return {name: paths[0] for name, paths in found.items() if len(paths) == 1}


def guess(entry: Entry, names: dict[str, str]) -> str:
    m = EXPLICIT.search(entry.text)
    if m and m.group(1) in dict(SUBSYSTEMS):
        return m.group(1)
    votes: Counter[str] = Counter()
    first: dict[str, int] = {}
    for i, pm in enumerate(PATH.finditer(entry.text)):
        path = pm.group(1)
        if "/" not in path:
            path = names.get(path, path)
        key = subsystem_of(path)
        if key:
            votes[key] += 1
            first.setdefault(key, i)
    if votes:
        return max(votes, key=lambda k: (votes[k], -first[k]))
    title, body = entry.title.lower(), entry.text.lower()
    for word, key in WORD_RULES:
        hits = re.compile(rf"\b{re.escape(word)}")
        votes[key] += 3 * len(hits.findall(title)) + (
            0 if word in GENERIC else len(hits.findall(body)))
        first.setdefault(key, len(first))
    best = max(votes, key=lambda k: (votes[k], -first[k]))
    return best if votes[best] else "other"


def supersessions(entries: list[Entry]) -> dict[int, tuple[int, bool]]:
    """Superseded entry -> (the entry superseding it, whether in part only)."""
    numbers = {e.number for e in entries}
    found: dict[int, tuple[int, bool]] = {}
    for e in entries:
        flat = re.sub(r"\s+", " ", e.text)
        for pattern, own in SUPERSEDES:
            for m in pattern.finditer(flat):
                other = int(m.group(1))
                old, new = (e.number, other) if own else (other, e.number)
                partial = bool(m.lastindex and m.lastindex > 1 and m.group(2))
                if old in numbers and new in numbers and old != new:
                    found.setdefault(old, (new, partial))
    for e in entries:  # what an entry's own status line says wins
        for m in STATUS.finditer(e.text):
            found[e.number] = (int(m.group(1)), bool(m.group(2)))
    return found


def with_status(entry: Entry, by: tuple[int, bool] | None) -> str:
    if by is None or STATUS.search(entry.text):
        return entry.text
    indent = " " * len(ENTRY.match(entry.text).group(0))  # type: ignore[union-attr]
    part = " (in part)" if by[1] else ""
    return f"{entry.text}\n{indent}Status: superseded by {by[0]}{part}."


def escaped(text: str) -> str:
    """An entry as the file writes it: `N\\. ` at its start."""
    return ENTRY.sub(lambda m: f"{m.group(1)}\\. ", text, count=1)


def numbers_text(numbers: list[int]) -> str:
    """1, 2, 3, 5 -> "1-3, 5"."""
    runs: list[list[int]] = []
    for n in sorted(numbers):
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def index_of(groups: dict[str, list[Entry]], superseded: dict[int, tuple[int, bool]]) -> str:
    rows = ["| Subsystem | Decisions |", "|---|---|"]
    for key, heading in SUBSYSTEMS:
        if groups.get(key):
            rows.append(f"| [{heading}](#{anchor(heading)}) | "
                        f"{numbers_text([e.number for e in groups[key]])} |")
    numbers = [e.number for es in groups.values() for e in es]
    unused = sorted(set(range(1, max(numbers, default=0) + 1)) - set(numbers))
    told = ", ".join(f"{old} by {new}{' (in part)' if part else ''}"
                     for old, (new, part) in sorted(superseded.items()))
    return "\n".join([*rows, "", f"Superseded: {told or 'none'}.", "",
                      f"Unused numbers: {numbers_text(unused) or 'none'}."])


def render(parsed: Parsed) -> str:
    names = basenames()
    groups: dict[str, list[Entry]] = {}
    for e in parsed.entries:
        groups.setdefault(e.group or guess(e, names), []).append(e)
    for es in groups.values():
        es.sort(key=lambda e: e.number)
    superseded = supersessions(parsed.entries)
    parts = [TITLE, "", INTRO, "", INDEX, "", index_of(groups, superseded), ""]
    for key, heading in SUBSYSTEMS:
        if groups.get(key):
            parts += [f"## {heading}", ""]
            parts += [escaped(with_status(e, superseded.get(e.number))) + "\n"
                      for e in groups[key]]
    parts += [APPENDED, ""]
    return "\n".join(parts)


def main(argv: list[str]) -> int:
    text = DOC.read_text()
    try:
        new = render(parse(text))
    except Malformed as exc:
        print(f"docs/decisions.md: {exc}", file=sys.stderr)
        return 2
    if "--check" in argv:
        if new != text:
            print("docs/decisions.md: not as scripts/decisions.py writes it", file=sys.stderr)
            return 1
        return 0
    if new != text:
        DOC.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
