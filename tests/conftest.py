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


#: the longest test groups, run first so that ``--dist loadgroup --no-loadscope-reorder``
#: starts them on different workers: the pipeline runs (about 11 minutes on 2 cores) and,
#: when a plain ``pytest -n 2`` includes them, the browser tests (``make test`` runs
#: those in a pass of their own, after the others)
FIRST_GROUPS = ("browser", "test_pipeline.py")


@pytest.hookimpl(tryfirst=True)  # before xdist reads the marks to name the groups
def pytest_collection_modifyitems(config, items):
    """Keep each test file on one xdist worker, and every browser test on the same one.

    `make test` runs the tests that are not ``browser`` with ``-n 2 --dist loadgroup
    --no-loadscope-reorder``, then the browser tests in one process. Grouping by
    file means a module-scoped fixture (a trained model, a built index) is built once,
    not once per worker; the browser tests share session fixtures (a built workspace,
    Chromium), so they go together. The longest groups are moved to the front (a stable
    sort: the order within and between the other files stays), so that the two workers
    start on them.
    """
    groups = {}
    for item in items:
        path = Path(str(item.fspath)).resolve()
        group = "browser" if "browser" in path.relative_to(REPO).parts[:2] else path.name
        groups[item.nodeid] = group
        item.add_marker(pytest.mark.xdist_group(group))
    if getattr(config.option, "dist", "no") == "no":
        return  # one process: keep pytest's own order
    rank = {g: i for i, g in enumerate(FIRST_GROUPS)}
    items.sort(key=lambda item: rank.get(groups[item.nodeid], len(rank)))
