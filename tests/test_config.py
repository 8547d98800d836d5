"""Config errors that check-config's end-to-end test does not reach."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.supervisor.config import ConfigError, load_config


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_unknown_top_level_key(tmp_path: Path) -> None:
    c = write(tmp_path / "c.toml", "[agentz.a]\ncommand = 'x'\n")
    with pytest.raises(ConfigError) as err:
        load_config(c)
    assert str(err.value) == f"{c}: agentz: unknown top-level key"


def test_an_include_may_not_redefine_an_agent(tmp_path: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    inc = write(tmp_path / "conf.d" / "a.toml", "[agents.a]\ncommand = 'y'\n")
    c = write(tmp_path / "c.toml", '[supervisor]\ninclude = ["conf.d/*.toml"]\n'
                                   "[agents.a]\ncommand = 'x'\n")
    with pytest.raises(ConfigError) as err:
        load_config(c)
    assert str(err.value) == f"{inc}: agents.a: already defined"


def test_agents_must_be_a_table_and_cannot_be_read_missing(tmp_path: Path) -> None:
    c = write(tmp_path / "c.toml", "agents = 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(c)
    assert str(err.value) == f"{c}: agents: expected a table"
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "missing.toml")
    assert str(err.value) == f"{tmp_path}/missing.toml: cannot read: No such file or directory"


def test_cwd_defaults_to_the_declaring_file(tmp_path: Path) -> None:
    c = write(tmp_path / "c.toml", "[agents.a]\ncommand = 'x'\n[agents.b]\ncommand = 'x'\n"
                                   "cwd = 'sub'\n")
    cfg = load_config(c)
    assert cfg.agents["a"].cwd == str(tmp_path.resolve())
    assert cfg.agents["b"].cwd == str((tmp_path / "sub").resolve())
