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


def test_the_margin_limit_keeps_the_share_of_the_margins():
    check = fit_match_check([0.9, 0.8, 0.85, 0.95], 0.75, margins=[0.2, 0.01, 0.1, 0.05, 0.3])
    # the 4th best of 5 margins: 4 of 5 (80 %) >= 0.05 >= the 75 % asked
    assert check.margin_threshold == 0.05 and check.margins == (0.01, 0.05, 0.1, 0.2, 0.3)
    assert check.margin_kept_share() == 0.8
    assert fit_match_check([0.9], 0.9).margin_threshold is None  # none given: not calibrated
    assert fit_match_check([0.9], 0.9).margin_kept_share() is None
    with pytest.raises(MatchCheckError, match=r"specimen margins must be finite numbers"):
        fit_match_check([0.9], 0.9, margins=[0.1, float("nan")])


def test_verdict_names_the_specimen_only_when_it_is_clear():
    check = MatchCheck(
        0.8, 0.95, (0.85, 0.9, 0.95), margin_threshold=0.05, margins=(0.02, 0.08, 0.2)
    )
    sure = check.verdict(0.9, margin=0.1, runner_up="B-02")
    assert sure.reliable and sure.specimen_sure and sure.margin == 0.1
    assert "it fits 0.10 better than the next specimen (B-02) (the margin limit 0.05 kept 67%" in (
        sure.message
    )
    close = check.verdict(0.9, margin=0.01, runner_up="B-02")
    assert close.reliable and close.specimen_sure is False
    assert "but the next specimen (B-02) fits nearly as well (+0.01, under the margin" in (
        close.message
    )
    assert "may come from a specimen that is not in the collection" in close.message
    # no margin, no margin limit, or no reliable fit: nothing said about the specimen
    assert check.verdict(0.9).specimen_sure is None
    assert MatchCheck(0.8, 0.95, (0.9,)).verdict(0.9, margin=0.01).specimen_sure is None
    weak = check.verdict(0.7, margin=0.01)
    assert not weak.reliable and weak.specimen_sure is None


@pytest.mark.parametrize("keep, limit", [(1.0, 0.01), (0.8, 0.05), (0.4, 0.2), (0.2, 0.3)])
def test_the_margin_limit_can_be_set_again_from_the_stored_margins(keep, limit):
    check = fit_match_check([0.9, 0.8], 0.95, margins=[0.01, 0.05, 0.1, 0.2, 0.3])
    again = check.with_margin_keep(keep)
    assert again.margin_threshold == limit and again.threshold == check.threshold
    assert again.margin_kept_share() >= keep


@pytest.mark.parametrize(
    "check, keep, match",
    [
        (
            MatchCheck(0.5, 0.9, (0.6,), margin_threshold=0.1, margins=(0.1,)),
            0,
            "in \\(0, 1\\], got 0",
        ),
        (MatchCheck(0.5, 0.9, (0.6,), margin_threshold=0.1, margins=(0.1,)), 1.5, "got 1.5"),
        (MatchCheck(0.5, 0.9, (0.6,)), 0.9, "has no specimen margins"),
    ],
)
def test_a_bad_margin_keep_is_refused(check, keep, match):
    with pytest.raises(MatchCheckError, match=match):
        check.with_margin_keep(keep)


def test_a_format_1_check_still_reads_without_a_margin_limit(tmp_path):
    path = tmp_path / "match_check.json"
    path.write_text('{"format": 1, "threshold": 0.5, "keep": 0.9, "scores": [0.5, 0.7]}')
    check = reliability.load_match_check(path)
    assert check.threshold == 0.5 and check.margin_threshold is None
    assert check.verdict(0.6, margin=0.0).specimen_sure is None


def test_save_and_load_round_trip(tmp_path):
    check = fit_match_check(
        [0.9, 0.7, 0.8], 0.9, recovered=[True, False, True], seed=7, margins=[0.1, 0.2]
    )
    path = check.save(tmp_path / "sub" / "match_check.json")
    assert json.loads(path.read_text())["format"] == reliability.FORMAT
    assert reliability.load_match_check(path) == check
    assert reliability.load_match_check(tmp_path / "absent.json") is None


@pytest.mark.parametrize(
    "text, match",
    [
        ("not json", "not a match check"),
        ('{"format": 1, "keep": 0.9, "scores": [0.5]}', r"not a match check \('threshold'\)"),
        ('{"format": 9, "threshold": 0.5}', r"match check format 9, expected one of \[1, 2\]"),
        ("[1, 2]", "not a match check"),
        ('{"format": 1, "threshold": NaN, "keep": 0.9, "scores": [0.5]}', "no finite limit"),
        ('{"format": 1, "threshold": 0.5, "keep": 0.9, "scores": []}', "no scores"),
        (
            '{"format": 2, "threshold": 0.5, "keep": 0.9, "scores": [0.5], '
            '"margin_threshold": 0.1, "margins": []}',
            "specimen margin's limit is not finite or has no data",
        ),
        (
            '{"format": 2, "threshold": 0.5, "keep": 0.9, "scores": [0.5], '
            '"margin_threshold": "x", "margins": [0.2]}',
            "not a match check",
        ),
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
    # each query's best match among the other specimen, and how much better its best fits
    for r in rows:
        assert r["runner_up"] == ({"A-01", "B-01"} - {r["matched"]}).pop()
        assert r["margin"] is not None and np.isfinite(r["margin"])
    assert sorted(r["margin"] for r in rows) == list(check.margins)
    assert check.margin_threshold == sorted(r["margin"] for r in rows)[1]
    with pytest.raises(MatchCheckError, match="n_queries must be an integer >= 1, got 0"):
        reliability.calibrate(collection, 0)


def test_calibrate_leaves_refused_queries_out_and_counts_them(collection, monkeypatch, tmp_path):
    from foramlib.dataset.preprocess import PreprocessError

    real, calls = matching.match, []

    def every_other(*args, **kwargs):
        if kwargs.get("specimens") is None:  # a query's own search, not its runner-up's
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


def test_runner_up_is_the_best_of_the_other_specimens_in_reach(collection):
    vol, pv = collection.volume("A-01"), collection.prepared("A-01")
    _, image, _ = reliability.draw_query(np.random.default_rng(3), vol, pv)
    index, volumes = collection.index, collection.volumes
    best = matching.match(index, image, volumes=volumes, top_k=1, refine_k=2)[0]
    other = reliability.runner_up(index, image, best, volumes=volumes, refine_k=2)
    assert other.specimen_id == ({"A-01", "B-01"} - {best.specimen_id}).pop()
    margin = reliability.specimen_margin(best, other)
    assert margin == pytest.approx(best.scores["combined"] - other.scores["combined"], abs=1e-6)
    # within a restriction that holds no other specimen, there is none to compare with
    assert reliability.runner_up(index, image, best, volumes=volumes,
                                 specimens=[best.specimen_id]) is None  # fmt: skip
    assert reliability.runner_up(index, image, best, volumes=volumes,
                                 species=[best.species]) is None  # fmt: skip
