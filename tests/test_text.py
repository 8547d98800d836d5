"""How corral words things (corral/text.py): counts, the nearest name, times, one-line
records."""

from __future__ import annotations

from corral.text import clip, closest, did_you_mean, iso_time, listing, one_line, plural


def test_plural_forms() -> None:
    assert [plural(n, "task") for n in (0, 1, 2)] == ["0 tasks", "1 task", "2 tasks"]
    assert plural(1, "process", "processes") == "1 process"
    assert plural(3, "process", "processes") == "3 processes"
    assert (plural(1.0, "task"), plural(2.5, "task")) == ("1 task", "2.5 tasks")
    assert plural(1_000_000, "line") == "1000000 lines"  # a count, never 1e+06


def test_the_nearest_name_or_none() -> None:
    keys = ["replicas", "restart", "max_restarts", "command"]
    assert closest("replica", keys) == "replicas"
    assert closest("comand", keys) == "command"
    assert closest("zzz", keys) is None
    assert did_you_mean("restarts", keys) == " (did you mean `restart`?)"
    assert did_you_mean("zzz", keys) == ""
    assert listing(["a", "b"]) == "a, b"
    assert listing([f"a{i}" for i in range(13)], most=3) == "a0, a1, a2 and 10 more"


def test_iso_time_is_utc_to_the_second_or_millisecond() -> None:
    assert iso_time(0) == "1970-01-01T00:00:00Z"
    assert iso_time(1_700_000_000.1239) == "2023-11-14T22:13:20Z"
    assert iso_time(1_700_000_000.1239, ms=True) == "2023-11-14T22:13:20.123Z"


def test_one_line_escapes_what_would_break_a_line() -> None:
    assert one_line("plain text, a URL https://x.example/a?b=c") == (
        "plain text, a URL https://x.example/a?b=c")
    assert one_line("a\nb\r\nc\td\x1b[2Je") == "a\\nb\\r\\nc\\td\\x1b[2Je"


def test_clip_cuts_between_words_and_says_how_long() -> None:
    text = "see https://errors.pydantic.dev/2.11/v/string_type for more"
    assert clip(text, 100) == text
    assert clip(text, 40) == f"see… ({len(text)} characters)"  # the URL is not cut
    assert clip("x" * 50, 10) == "xxxxxxxxxx… (50 characters)"  # one word: cut it is
