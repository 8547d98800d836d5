"""check-config says that a model's key_env is not set where it runs: the daemon refuses to
start without it, and a config judged `ok` must not be news at the next start."""

from __future__ import annotations

import os
from pathlib import Path

from .daemon_harness import corral_run

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ("[models.m]\nurl = 'http://127.0.0.1:9/v1'\nformat = 'openai'\n"
          "key_env = 'CORRAL_TEST_KEY'\n")


def test_a_model_key_env_not_set_is_said_beside_ok(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text(CONFIG)
    env = {k: v for k, v in os.environ.items() if k != "CORRAL_TEST_KEY"}
    r = corral_run(["check-config", "--no-check", str(p)], env={**env, "PYTHONPATH": str(ROOT)})
    assert (r.returncode, r.stdout, r.stderr) == (
        0, f"{p}: ok (0 agents, 0 MCP servers)\n",
        "corral: models.m.key_env: CORRAL_TEST_KEY is not set here; the daemon refuses to "
        "start unless its own environment has it\n")
    r = corral_run(["check-config", "--no-check", str(p)],
                   env={**env, "CORRAL_TEST_KEY": "sk-x", "PYTHONPATH": str(ROOT)})
    assert (r.returncode, r.stdout, r.stderr) == (0, f"{p}: ok (0 agents, 0 MCP servers)\n", "")
