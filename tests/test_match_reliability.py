"""The match limit: fitting, the verdict, its file, held-out queries, calibration."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from test_cli import _ellipsoid  # the same phantoms as the CLI's workspace

from foramlib.dataset.preprocess import PreprocessConfig
from foramlib.io.volumes import write_nifti
from foramlib.matching import index as indexing
from foramlib.matching import reliability
from foramlib.matching import search as matching
from foramlib.matching.reliability import MatchCheck, MatchCheckError, fit_match_check

SMALL = matching.IndexConfig(
    n_orientations=20, n_offsets=3, descriptor_size=16, preprocess=PreprocessConfig(size=32)
)


@pytest.mark.parametrize("keep", [0.5, 0.8, 0.95, 1.0])
def test_the_limit_is_the_highest_score_keeping_the_share(keep):
    scores = np.random.default_rng(3).uniform(0.3, 1.0, 37)
    check = fit_match_check(scores, keep)
    assert np.mean(scores >= check.threshold) >= keep
    higher = scores[scores > check.threshold]
    if higher.size:  # any higher limit keeps too few
        assert np.mean(scores >= higher.min()) < keep
    assert check.threshold in scores and check.n_queries == 37
    assert list(check.scores) == sorted(scores.tolist())


def test_recovered_follows_its_score_and_gives_the_precision():
    check = fit_match_check([0.9, 0.4, 0.8, 0.7], 0.75, recovered=[True, False, False, True])
    assert check.threshold == 0.7
    assert check.scores == (0.4, 0.7, 0.8, 0.9)
    assert check.recovered == (False, True, False, True)
    assert check.precision() == pytest.approx(2 / 3)
    assert fit_match_check([0.5], 1.0).precision() is None


@pytest.mark.parametrize(
    "scores, keep, extra, match",
    [
        ([0.5], 0.0, {}, r"keep must be a share in \(0, 1\], got 0.0"),
        ([0.5], 1.5, {}, "got 1.5"),
        ([0.5], "0.9", {}, "got '0.9'"),
        ([], 0.9, {}, "no calibration scores"),
        ([0.5, float("nan")], 0.9, {}, r"must be finite numbers, got \[0.5, nan\]"),
        ([0.5, 0.6], 0.9, {"recovered": [True]}, "recovered has 1 entries for 2 scores"),
    ],
)
def test_fit_refuses_bad_input(scores, keep, extra, match):
    with pytest.raises(MatchCheckError, match=match):
        fit_match_check(scores, keep, **extra)


def test_verdict_words_both_answers():
    check = MatchCheck(0.8, 0.95, (0.6, 0.85, 0.9, 0.95), seed=4)
    yes, no = check.verdict(0.81), check.verdict(0.79)
    assert yes.reliable and not no.reliable
    assert yes.message.startswith("best score 0.81; the limit 0.80 kept 75% of 4 held-out")
    assert no.message.startswith("no reliable match: the best score 0.79 is under the limit")
    assert "may not be in the collection" in no.message
    assert check.verdict(0.8).reliable  # at the limit: kept, as in the fit


def test_save_and_load_round_trip(tmp_path):
    check = fit_match_check([0.9, 0.7, 0.8], 0.9, recovered=[True, False, True], seed=7)
    path = check.save(tmp_path / "sub" / "match_check.json")
    assert json.loads(path.read_text())["format"] == reliability.FORMAT
    assert reliability.load_match_check(path) == check
    assert reliability.load_match_check(tmp_path / "absent.json") is None


@pytest.mark.parametrize(
    "text, match",
    [
        ("not json", "not a match check"),
        ('{"format": 1, "keep": 0.9, "scores": [0.5]}', r"not a match check \('threshold'\)"),
        ('{"format": 9, "threshold": 0.5}', "match check format 9, expected 1"),
        ("[1, 2]", "not a match check"),
        ('{"format": 1, "threshold": NaN, "keep": 0.9, "scores": [0.5]}', "no finite limit"),
        ('{"format": 1, "threshold": 0.5, "keep": 0.9, "scores": []}', "no scores"),
    ],
)
def test_load_names_the_file_of_a_broken_check(tmp_path, text, match):
    path = tmp_path / "match_check.json"
    path.write_text(text)
    with pytest.raises(MatchCheckError, match=match) as err:
        reliability.load_match_check(path)
    assert str(path) in str(err.value)


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    root = tmp_path_factory.mktemp("reliability")
    rows = []
    for i, (spec, species, axes) in enumerate(
        [("A-01", "Alpha", (11, 7, 5)), ("B-01", "Beta", (9, 9, 4))]
    ):
        write_nifti(root / "raw" / f"{spec}.nii.gz", _ellipsoid(axes, seed=i), (10.0,) * 3)
        rows.append(dict(file=f"{spec}.nii.gz", specimen_id=spec, species=species))
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    indexing.build_collection_index(root / "manifest.csv", root / "raw", root / "index", SMALL)
    return indexing.load_collection(root / "index")


def test_draw_query_is_seeded_and_cut_through_the_fossil(collection):
    vol, pv = collection.volume("A-01"), collection.prepared("A-01")
    a = reliability.draw_query(np.random.default_rng(5), vol, pv)
    b = reliability.draw_query(np.random.default_rng(5), vol, pv)
    assert a[0] == b[0] and np.array_equal(a[1], b[1])
    truth, image, (top, left, scale) = a
    proj = (pv.points - pv.centre) @ np.asarray(truth.normal)
    assert np.percentile(proj, 20) <= truth.offset <= np.percentile(proj, 80)
    assert 0.8 * pv.window <= image.shape[0] <= 1.1 * pv.window + 1
    assert image.dtype == np.float32 and 0 <= top and 0 <= left
    assert scale == pytest.approx(pv.window / (image.shape[0] + top), rel=0.1)


def test_calibrate_matches_held_out_queries_and_fits_the_limit(collection):
    seen = []
    check, rows = reliability.calibrate(
        collection, 3, seed=2, keep=0.6, progress=lambda f, m: seen.append(f), refine_k=2
    )
    assert len(rows) == 3 and seen[-1] == 1.0
    assert {r["specimen_id"] for r in rows} <= {"A-01", "B-01"}
    assert sorted(r["score"] for r in rows) == list(check.scores)
    assert check.threshold == sorted(r["score"] for r in rows)[1]  # keeps 2 of 3
    assert check.seed == 2 and len(check.recovered) == 3
    with pytest.raises(MatchCheckError, match="n_queries must be an integer >= 1, got 0"):
        reliability.calibrate(collection, 0)


def test_calibrate_leaves_refused_queries_out_and_counts_them(collection, monkeypatch, tmp_path):
    from foramlib.dataset.preprocess import PreprocessError

    real, calls = matching.match, []

    def every_other(*args, **kwargs):
        calls.append(1)
        if len(calls) % 2:
            raise PreprocessError("query: no fossil found")
        return real(*args, **kwargs)

    monkeypatch.setattr(matching, "match", every_other)
    check, rows = reliability.calibrate(collection, 4, seed=2, refine_k=2)
    assert [r["refused"] for r in rows[::2]] == ["query: no fossil found"] * 2
    assert all(r["refused"] is None for r in rows[1::2])
    assert check.refused == 2 and check.n_queries == 2
    assert reliability.load_match_check(check.save(tmp_path / "c.json")) == check
    monkeypatch.setattr(matching, "match", lambda *a, **k: (_ for _ in ()).throw(
        PreprocessError("query: blank")))  # fmt: skip
    with pytest.raises(MatchCheckError, match=r"refused all 3 calibration queries \(first: query"):
        reliability.calibrate(collection, 3)
