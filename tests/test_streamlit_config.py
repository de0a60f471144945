"""The dashboard's Streamlit settings: no usage statistics, no Deploy button, however it is started."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from runner import cli

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {"browser.gatherUsageStats": "false", "client.toolbarMode": '"viewer"'}


def _shown(cwd: Path, flags: list[str]) -> dict[str, str]:
    """``streamlit config show``'s effective value of each of SETTINGS, as TOML text."""
    out = subprocess.run([sys.executable, "-m", "streamlit", "config", "show", *flags], cwd=cwd,
                         capture_output=True, text=True, check=True).stdout
    values = dict(line.split(" = ", 1) for line in out.splitlines() if " = " in line and not line.startswith("#"))
    return {key: values.get(key.split(".")[1], "(default)") for key in SETTINGS}


def _dashboard_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    calls: list[list[str]] = []
    monkeypatch.setattr(cli.subprocess, "call", lambda cmd, env: calls.append(cmd) or 0)
    args = cli.build_parser().parse_args(["--db", f"sqlite:///{tmp_path / 'r.db'}", "dashboard"])
    assert args.func(args) == 0
    return calls[0]


def test_streamlit_run_from_the_repo_root_reads_the_repo_config() -> None:
    assert _shown(REPO, []) == SETTINGS


def test_runner_dashboard_passes_the_same_settings_from_anywhere(monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    cmd = _dashboard_command(monkeypatch, tmp_path)
    flags = cmd[cmd.index("run") + 2: cmd.index("--")]
    assert "--browser.gatherUsageStats" in flags and "--client.toolbarMode" in flags
    assert _shown(tmp_path, flags) == SETTINGS  # Streamlit accepts the flags and they set both options
    assert _shown(tmp_path, []) != SETTINGS  # (without them, outside the repo, the defaults hold)
