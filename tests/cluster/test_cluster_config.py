"""[cluster] in the config: its keys validated, each bad value refused with the key named
and the reason; absent, the daemon is one node as before."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.supervisor.config import ClusterSettings, ConfigError
from corral.supervisor.configload import load_config


def load(tmp_path: Path, table: str) -> ClusterSettings | None:
    path = tmp_path / "corral.toml"
    path.write_text(table)
    return load_config(path).cluster


def test_absent_means_one_node(tmp_path: Path) -> None:
    assert load(tmp_path, "[supervisor]\n") is None


def test_the_defaults_and_the_fixed_names(tmp_path: Path) -> None:
    got = load(tmp_path, "[cluster]\n")
    assert got == ClusterSettings(redis="redis://127.0.0.1:6379/0", name="default",
                                  node=None, node_ttl=3.0, beat=1.0)
    got = load(tmp_path, '[cluster]\nredis = "unix:///run/redis.sock"\nname = "prod"\n'
                         'node = "host-1.example.com"\nnode_ttl = 6\nbeat = 2\n')
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
        load(tmp_path, f"[cluster]\n{table}\n")
    assert str(got.value).startswith(f"{tmp_path / 'corral.toml'}: ")
    assert message in str(got.value)


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
    path.write_text(f"[cluster]\n{AGENT}{table}\n")
    with pytest.raises(ConfigError) as got:
        load_config(path)
    assert message in str(got.value), got.value


def test_a_cluster_agents_paths_stay_as_written(tmp_path: Path) -> None:
    """Each node resolves them against its own config file's directory (fleet.fill_paths),
    so the cluster's table does not carry one node's absolute paths."""
    path = tmp_path / "corral.toml"
    path.write_text(f'[cluster]\n{AGENT}placement = "cluster"\n'
                    '[agents.mine]\ncommand = "python3 keeper.py"\ncwd = "sub"\n'
                    '[agents.theirs]\ncommand = "python3 keeper.py"\ncwd = "sub"\n'
                    'placement = "cluster"\n')
    agents = load_config(path).agents
    assert (agents["keeper"].cwd, agents["theirs"].cwd) == (None, "sub")
    assert agents["mine"].cwd == str((tmp_path / "sub").resolve())
    assert agents["keeper"].placement == "cluster" and agents["mine"].placement == "local"
