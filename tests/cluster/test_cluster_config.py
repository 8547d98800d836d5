"""[cluster] in the config: its keys validated, each bad value refused with the key named
and the reason; absent, the daemon is one node as before."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from corral.supervisor.config import ClusterSettings, ConfigError
from corral.supervisor.configload import load_config

from ..conftest import ROOT
from ..daemon_harness import corral_run


def load(tmp_path: Path, table: str) -> ClusterSettings | None:
    path = tmp_path / "corral.toml"
    path.write_text(table)
    return load_config(path).cluster


def test_absent_means_one_node(tmp_path: Path) -> None:
    assert load(tmp_path, "[supervisor]\n") is None


# a cluster needs a key, or to say it runs without one (the key's own checks are the
# daemon's at its start: tests/cluster/test_cluster_trust.py)
KEYED = 'key_file = "/etc/corral/cluster.key"\n'


def test_the_defaults_and_the_fixed_names(tmp_path: Path) -> None:
    got = load(tmp_path, "[cluster]\n" + KEYED)
    assert got == ClusterSettings(redis="redis://127.0.0.1:6379/0", name="default",
                                  node=None, node_ttl=3.0, beat=1.0,
                                  key_file="/etc/corral/cluster.key")
    got = load(tmp_path, '[cluster]\nredis = "unix:///run/redis.sock"\nname = "prod"\n'
                         'node = "host-1.example.com"\nnode_ttl = 6\nbeat = 2\n'
                         'insecure = true\n')
    assert got is not None and (got.node, got.node_ttl, got.beat) == (
        "host-1.example.com", 6.0, 2.0)


@pytest.mark.parametrize(("table", "message"), [
    ('redis = "http://x:6379"', "cluster.redis: 'http://x:6379' is not a redis://, "
                                "rediss:// or unix:// URL"),
    ('node = "a b"', "cluster.node: 'a b' is not 1-64 characters of letters, digits, "
                     "'_', '-' and '.' starting with a letter or digit"),
    ('name = ".x"', "cluster.name: '.x' is not 1-64 characters"),
    ("node_ttl = 0", "cluster.node_ttl: Expected `float` > 0.0"),
    ("beat = 2.0", "cluster.beat: 2 s is more than half of node_ttl (3 s)"),
    ("ttl = 3", "cluster: Object contains unknown field `ttl`"),
])
def test_bad_values_are_refused_naming_the_key(tmp_path: Path, table: str,
                                               message: str) -> None:
    with pytest.raises(ConfigError) as got:
        load(tmp_path, f"[cluster]\n{KEYED}{table}\n")
    assert str(got.value).startswith(f"{tmp_path / 'corral.toml'}: ")
    assert message in str(got.value)


def test_a_cluster_without_a_key_file_is_refused_unless_it_says_insecure(
        tmp_path: Path) -> None:
    """Secure by default (issue 52, 4d): without a key a writer of Redis is root on every
    node, so a cluster runs without one only where its table says so; the refusal names
    both ways, `check-config` says it too."""
    path = tmp_path / "corral.toml"
    for table in ("[cluster]\n", '[cluster]\nredis = "redis://10.0.0.5:6379/0"\n'
                                  "insecure = false\n"):
        with pytest.raises(ConfigError) as got:
            load(tmp_path, table)
        assert str(got.value) == (
            f"{path}: cluster.key_file: a cluster needs a key its nodes sign their records "
            "with, the same file on every node and never in Redis (umask 077; head -c 32 "
            "/dev/urandom | base64 > /etc/corral/cluster.key); without one whoever can "
            "write to Redis runs commands on every node: to run so anyway, say insecure = "
            "true in [cluster] (docs/cluster.md#securing-redis)")
    with pytest.raises(ConfigError) as got:
        load(tmp_path, f"[cluster]\n{KEYED}insecure = true\n")
    assert str(got.value) == (f"{path}: cluster.insecure: true, and a key_file is given: "
                              "remove one of them")
    got_settings = load(tmp_path, "[cluster]\ninsecure = true\n")
    assert got_settings is not None and got_settings.insecure
    checked = corral_run(["check-config", str(path)], timeout=60,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert checked.returncode == 0, checked.stderr
    path.write_text("[cluster]\n")
    checked = corral_run(["check-config", str(path)], timeout=60,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert checked.returncode == 1
    assert "cluster.key_file: a cluster needs a key" in checked.stderr
    assert "say insecure = true in [cluster]" in checked.stderr


AGENT = '[agents.keeper]\ncommand = "python3 keeper.py"\n'


def test_placement_cluster_needs_a_cluster_table(tmp_path: Path) -> None:
    path = tmp_path / "corral.toml"
    path.write_text(AGENT + 'placement = "cluster"\n')
    with pytest.raises(ConfigError) as got:
        load_config(path)
    assert str(got.value) == (f'{path}: agents.keeper.placement: "cluster" needs a '
                              "[cluster] table (this daemon is not a node of a cluster)")
    # in an included file, that file is named
    (tmp_path / "more.toml").write_text(AGENT.replace("keeper", "other")
                                        + 'placement = "cluster"\n')
    path.write_text('[supervisor]\ninclude = ["more.toml"]\n')
    with pytest.raises(ConfigError) as got:
        load_config(path)
    assert str(got.value).startswith(f"{tmp_path / 'more.toml'}: agents.other.placement: ")


@pytest.mark.parametrize(("table", "message"), [
    ('placement = "moon"', "agents.keeper.placement: Invalid enum value 'moon' (valid: "
                             "'cluster', 'local')"),
    ('placement = "cluster"\nhibernate_after = 60',
     "agents.keeper.placement: a cluster agent is not elastic yet (autoscale, "
     "hibernate_after)"),
])
def test_bad_placements_are_refused(tmp_path: Path, table: str, message: str) -> None:
    path = tmp_path / "corral.toml"
    path.write_text(f"[cluster]\n{KEYED}{AGENT}{table}\n")
    with pytest.raises(ConfigError) as got:
        load_config(path)
    assert message in str(got.value), got.value


def test_a_cluster_agents_paths_stay_as_written(tmp_path: Path) -> None:
    """Each node resolves them against its own config file's directory (fleet.fill_paths),
    so the cluster's table does not carry one node's absolute paths."""
    path = tmp_path / "corral.toml"
    path.write_text(f'[cluster]\n{KEYED}{AGENT}placement = "cluster"\n'
                    '[agents.mine]\ncommand = "python3 keeper.py"\ncwd = "sub"\n'
                    '[agents.theirs]\ncommand = "python3 keeper.py"\ncwd = "sub"\n'
                    'placement = "cluster"\n')
    agents = load_config(path).agents
    assert (agents["keeper"].cwd, agents["theirs"].cwd) == (None, "sub")
    assert agents["mine"].cwd == str((tmp_path / "sub").resolve())
    assert agents["keeper"].placement == "cluster" and agents["mine"].placement == "local"
