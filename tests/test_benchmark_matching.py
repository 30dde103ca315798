"""The matching benchmark's index cache (benchmarks/matching.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from foramlib.matching import search as matching
from foramlib.matching.search import IndexConfig

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("bench_matching", BENCH / "matching.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    return module


def _ellipsoid(a, b, c, n=32):
    z, y, x = np.mgrid[:n, :n, :n].astype(np.float32) - (n - 1) / 2
    inside = (x / a) ** 2 + (y / b) ** 2 + (z / c) ** 2 < 1
    shell = inside & ~((x / (a - 2)) ** 2 + (y / (b - 2)) ** 2 + (z / (c - 2)) ** 2 < 1)
    return np.where(shell, 1.0, 0.05).astype(np.float32)


VOLS = {"V-A": _ellipsoid(12, 8, 6), "V-B": _ellipsoid(10, 10, 5)}
SPECIES = {"V-A": "Alpha", "V-B": "Beta"}
CONFIG = IndexConfig(n_orientations=3, n_offsets=3)


def test_the_index_is_built_once_then_reused(bench, tmp_path, monkeypatch):
    cache = tmp_path / "index.npz"
    built, build_s, reused = bench.build_or_reuse_index(VOLS, SPECIES, CONFIG, cache)
    assert not reused and cache.is_file() and cache.with_suffix(".json").is_file()

    def no_build(*a, **k):
        raise AssertionError("the cached index should have been reused")

    monkeypatch.setattr(matching, "build_index", no_build)
    again, again_s, reused = bench.build_or_reuse_index(VOLS, SPECIES, CONFIG, cache)
    assert reused and again_s == pytest.approx(build_s)
    assert np.array_equal(again.normals, built.normals) and len(again) == len(built)


@pytest.mark.parametrize(
    "vols,config",
    [
        ({"V-A": VOLS["V-A"]}, CONFIG),  # other specimens
        (VOLS, IndexConfig(n_orientations=4, n_offsets=3)),  # other settings
    ],
)
def test_a_cache_of_other_specimens_or_settings_is_rebuilt(bench, tmp_path, vols, config):
    cache = tmp_path / "index.npz"
    bench.build_or_reuse_index(VOLS, SPECIES, CONFIG, cache)
    index, _, reused = bench.build_or_reuse_index(vols, SPECIES, config, cache)
    assert not reused
    assert set(np.unique(index.specimen).tolist()) == set(vols)
    assert index.config == config
    assert matching.MatchIndex.load(cache, config).config == config  # the cache is replaced


def test_without_a_cache_nothing_is_written(bench, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    index, build_s, reused = bench.build_or_reuse_index(VOLS, SPECIES, CONFIG)
    assert len(index) > 0 and build_s > 0 and not reused and not list(tmp_path.iterdir())
