"""The dashboard's match limit (results/match_check.json): read once, again when it changes.

``App._match_check`` runs on every 3D search; it keeps the limit it read while the file
is the same and picks up a rerun of the calibrate_match stage without a restart. An
App on an empty workspace is cheap to build (no models, no index), so it is used as is.
"""

from __future__ import annotations

import json
import os

import pytest

from foramlib.app import dashboard
from foramlib.matching import reliability
from foramlib.matching.reliability import MatchCheck


def _check(threshold: float) -> MatchCheck:
    return MatchCheck(threshold, 0.95, (0.5, 0.9, 0.95), (False, True, True))


@pytest.fixture
def app(tmp_path):
    (tmp_path / "results").mkdir()
    return dashboard.App(tmp_path)


@pytest.fixture
def limit(app):
    return app.workspace / "results" / "match_check.json"


@pytest.fixture
def reads(monkeypatch):
    """The paths the limit was read from (the dashboard imports the reader when called)."""
    calls = []
    real = reliability.load_match_check

    def counting(path):
        calls.append(path)
        return real(path)

    monkeypatch.setattr(reliability, "load_match_check", counting)
    return calls


def test_without_a_limit_file_there_is_no_limit(app, reads):
    assert app._match_check() is None
    assert reads == []  # nothing to read


def test_an_unchanged_limit_is_read_once(app, limit, reads):
    _check(0.6).save(limit)
    first = app._match_check()
    assert first.threshold == 0.6
    assert app._match_check() is first
    assert app._match_check() is first
    assert reads == [limit]


@pytest.mark.parametrize("how", ["replaced", "same size in place"])
def test_a_rewritten_limit_is_read_again(app, limit, reads, how):
    _check(0.6).save(limit)
    assert app._match_check().threshold == 0.6
    before = limit.stat()
    if how == "replaced":
        _check(0.7).save(limit)  # as the stage writes it: atomically, a new file
    else:
        limit.write_text(json.dumps(_check(0.7).to_dict(), indent=1) + "\n")
        # only the time tells the two apart; a coarse file-system clock could give the
        # rewrite the same one, so it is set a second later
        os.utime(limit, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
        after = limit.stat()
        assert (after.st_ino, after.st_size) == (before.st_ino, before.st_size)
    assert app._match_check().threshold == 0.7
    assert app._match_check().threshold == 0.7
    assert len(reads) == 2


def test_a_removed_limit_gives_none_and_a_new_one_is_read(app, limit, reads):
    _check(0.6).save(limit)
    assert app._match_check().threshold == 0.6
    limit.unlink()
    assert app._match_check() is None
    _check(0.8).save(limit)
    assert app._match_check().threshold == 0.8


@pytest.mark.parametrize(
    "text", ["{broken", "", json.dumps({"format": -1, "threshold": 0.5}), "[1, 2]"]
)
def test_an_unreadable_limit_gives_none_until_it_is_fixed(app, limit, reads, text):
    limit.write_text(text)
    assert app._match_check() is None
    assert app._match_check() is None
    assert len(reads) == 1  # a broken file is not reread on every search either
    _check(0.6).save(limit)
    assert app._match_check().threshold == 0.6


def test_a_limit_that_cannot_be_opened_gives_none(app, limit, monkeypatch):
    _check(0.6).save(limit)

    def denied(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(reliability, "load_match_check", denied)
    assert app._match_check() is None
