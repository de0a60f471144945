"""Shared fixtures: the official reference data (from ../shared) and small configs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from runner_helpers import DB_KINDS, open_db, url_for

from runner.db import Database

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FASTINST_SHARED", REPO.parent / "shared"))
REFERENCE = SHARED / "reference" / "fastinst_r50_d3_head_reference.pt"


@pytest.fixture(scope="session")
def reference() -> dict:
    if not REFERENCE.is_file():
        pytest.skip(f"official reference data not found at {REFERENCE} (set FASTINST_SHARED to the shared/ folder)")
    return torch.load(REFERENCE, map_location="cpu", weights_only=False)


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(params=DB_KINDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A results-database URL per backend (SQLite file; PostgreSQL where configured, else skipped)."""
    yield from url_for(request.param, tmp_path)


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    yield from open_db(db_url)
