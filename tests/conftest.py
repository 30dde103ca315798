"""Shared fixtures: tiny virtual collections made on the fly."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def tiny_collection(tmp_path_factory) -> Path:
    """The tiny virtual preset at 32^3 voxels (14 volumes, 5 taxa), made once per run."""
    from foramlib.virtual import collection as virtual

    out = tmp_path_factory.mktemp("tiny") / "virtual"
    virtual.synthesize_collection(
        out, virtual.tiny_taxa(), seed=7, shape=32, supersample=1, progress=None
    )
    return out
