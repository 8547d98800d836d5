"""A reload lists the config file's workflows, teams and schedules it added, removed and
changed, as it lists agents and MCP servers (`corral reload`, its --json, the API's
ReloadResult); what it lists is what it applied."""

from __future__ import annotations

import json
from pathlib import Path

from .daemon_harness import hello, running_daemon

DEFS = """
[workflows.w1]
[[workflows.w1.steps]]
name = "s"
agent = "hello"

[workflows.w2]
[[workflows.w2.steps]]
name = "s"
agent = "hello"

[teams.t1]
mode = "broadcast"
members = ["hello"]

[schedules.s1]
agent = "hello"
every = "6h"

[schedules.s2]
agent = "hello"
every = "6h"
"""

NONE = {"added": [], "removed": [], "changed": [], "unchanged": []}


def test_a_reload_lists_the_definitions_it_changed(tmp_path: Path) -> None:
    with running_daemon(tmp_path, hello("hello") + DEFS) as d:
        r = d.cli("reload")  # nothing changed: the definitions counted
        assert (r.returncode, r.stdout, r.stderr) == (0, (
            "nothing changed\n"
            "unchanged: 1 agent, 0 MCP servers, 2 workflows, 1 team, 2 schedules\n"), "")
        d.config.write_text(
            d.config.read_text()
            .replace("[workflows.w2]", "[workflows.w3]")
            .replace("[[workflows.w2.steps]]", "[[workflows.w3.steps]]")
            .replace('[teams.t1]\nmode = "broadcast"',
                     '[teams.t1]\ndescription = "now"\nmode = "broadcast"')
            .replace('[schedules.s2]\nagent = "hello"\nevery = "6h"',
                     '[schedules.s2]\nagent = "hello"\nevery = "2h"')
            + '\n[teams.t2]\nmode = "broadcast"\nmembers = ["hello"]\n')
        r = d.cli("reload")
        assert (r.returncode, r.stderr) == (0, "")
        assert r.stdout == ("KIND      NAME  CHANGE\n"
                            "workflow  w3    added\n"
                            "workflow  w2    removed\n"
                            "team      t2    added\n"
                            "team      t1    changed\n"
                            "schedule  s2    changed\n"
                            "unchanged: 1 agent, 0 MCP servers, 1 workflow, 1 schedule\n")
        # what it lists is what it applied
        assert [w["name"] for w in d.json("workflows", "list")["workflows"]] == ["w1", "w3"]
        described = d.json("teams", "describe", "t1")
        assert (described["source"], described["definition"]["description"]) == (
            "config", "now")
        listed = {s["name"]: s for s in d.json("schedules")["schedules"]}
        assert sorted(listed) == ["s1", "s2"]
        assert listed["s2"]["every"] == "2h", listed["s2"]
        # the API's result: the same four keys a kind, as for MCP servers
        d.config.write_text(d.config.read_text().split("[workflows.w1]")[0])
        got = json.loads(d.cli("reload", "--json").stdout)
        assert (got["workflows"], got["teams"], got["schedules"]) == (
            {**NONE, "removed": ["w1", "w3"]}, {**NONE, "removed": ["t1", "t2"]},
            {**NONE, "removed": ["s1", "s2"]})
        assert (got["added"], got["removed"], got["changed"], got["unchanged"]) == (
            [], [], [], ["hello"])
        r = d.cli("reload", "--json")
        assert {k: json.loads(r.stdout)[k] for k in ("workflows", "teams", "schedules")} == {
            "workflows": NONE, "teams": NONE, "schedules": NONE}
        assert d.cli("reload").stdout == "nothing changed\nunchanged: 1 agent, 0 MCP servers\n"


def test_a_rejected_reload_lists_nothing_and_the_next_compares_with_what_was_applied(
        tmp_path: Path) -> None:
    """A file the reload refuses changes no definition: the next good reload is compared
    with the definitions the daemon holds, not with the refused file."""
    with running_daemon(tmp_path, hello("hello") + DEFS) as d:
        good = d.config.read_text()
        d.config.write_text(good.replace('agent = "hello"\n\n[workflows.w2]',
                                         'agent = "nope"\n\n[workflows.w2]'))
        r = d.cli("reload")
        assert (r.returncode, r.stdout) == (1, "")
        assert r.stderr == (f"corral: reload rejected, nothing changed: {d.config}: "
                            "workflow w1, step s: no such agent: nope\n")
        d.config.write_text(good.replace('every = "6h"\n\n[schedules.s2]',
                                         'every = "3h"\n\n[schedules.s2]'))
        r = d.cli("reload")
        assert r.stdout == ("KIND      NAME  CHANGE\n"
                            "schedule  s1    changed\n"
                            "unchanged: 1 agent, 0 MCP servers, 2 workflows, 1 team, "
                            "1 schedule\n"), r.stderr
