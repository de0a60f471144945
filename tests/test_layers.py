"""The one-way layers of docs/architecture.md, as import-linter contracts (pyproject.toml,
``[tool.importlinter]``): the tree keeps them, and an upward import (lazy ones count) breaks them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fastinst", "runner", "dashboard")
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` on the packages under ``root`` with ``root``'s pyproject.toml."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--no-logo"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)


def test_tree_keeps_the_layers() -> None:
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(("module", "upward", "layer"), [
    ("fastinst/modeling/layers.py", "fastinst.predict", "fastinst.modeling"),
    ("runner/stages.py", "runner.measure", "runner.stages"),
])
def test_upward_import_breaks_a_contract(tmp_path: Path, module: str, upward: str, layer: str) -> None:
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    path = tmp_path / module
    path.write_text(path.read_text() + f"\n\ndef _upward() -> None:\n    import {upward}  # noqa: F401\n")
    result = _lint(tmp_path)
    assert result.returncode != 0
    importer = module.removesuffix(".py").replace("/", ".")
    assert f"{layer} is not allowed to import {upward}" in result.stdout, result.stdout
    assert f"{importer} -> {upward}" in result.stdout, result.stdout
