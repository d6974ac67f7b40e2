"""Shared fixtures: tiny random-weight engines for every architecture, and the real default model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from promptdistill_rag.testing import TINY_ARCHITECTURES, default_engine, tiny_engine

ARCHITECTURES = sorted(TINY_ARCHITECTURES)


def shared_data_dir() -> Path | None:
    """Return the evaluation data folder (``PROMPTDISTILL_DATA``, else ``../shared/data`` next to the repo)."""
    configured = os.environ.get("PROMPTDISTILL_DATA")
    candidates = [Path(configured)] if configured else []
    candidates.append(Path(__file__).resolve().parents[2] / "shared" / "data")
    for candidate in candidates:
        if (candidate / "paul_graham_essays").is_dir():
            return candidate
    return None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = shared_data_dir()
    if path is None:
        pytest.skip("evaluation data not found: set PROMPTDISTILL_DATA to the folder holding paul_graham_essays/")
    return path


@pytest.fixture(scope="session", params=ARCHITECTURES)
def tiny(request):
    """A tiny random-weight engine for each supported architecture."""
    return tiny_engine(request.param)


@pytest.fixture(scope="session")
def llama_engine():
    return tiny_engine("llama")


@pytest.fixture(scope="session")
def real_engine():
    """The real SmolLM2-135M-Instruct engine, loaded once per session."""
    return default_engine()
