"""[cluster] in the config: its keys validated, each bad value refused with the key named
and the reason; absent, the daemon is one node as before."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.supervisor.config import ClusterSettings, ConfigError, load_config


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
