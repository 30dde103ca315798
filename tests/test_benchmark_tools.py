"""Helpers of the benchmark scripts that decide what their JSON says."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    return module


@pytest.fixture(scope="module")
def browser_bench():
    return _load("dashboard_browser")


@pytest.fixture(scope="module")
def classification_bench():
    return _load("classification")


@pytest.mark.parametrize(
    ("values", "expected"),
    [([7], 7.0), ([4, 1, 3, 2], 2.5), ([5, 1, 3], 3.0), ([10, 20], 15.0)],
)
def test_median_of_odd_and_even_counts(browser_bench, values, expected):
    assert browser_bench.median(values) == expected


@contextlib.contextmanager
def _busy_for(seconds: float):
    """This process spends `seconds` of CPU in a thread, then goes quiet."""
    stop = time.perf_counter() + seconds

    def spin():
        while time.perf_counter() < stop:
            pass

    worker = threading.Thread(target=spin)
    worker.start()
    try:
        yield
    finally:
        worker.join()


def test_wait_until_quiet_waits_for_a_busy_process(browser_bench):
    with _busy_for(1.5):
        waited = browser_bench.wait_until_quiet([os.getpid()], quiet_s=1.0, timeout_s=30)
    assert waited >= 1.0 + 1.0  # busy for about 1.5 s, then quiet for 1 s


def test_wait_until_quiet_gives_up_with_a_message(browser_bench):
    with _busy_for(3.0), pytest.raises(RuntimeError, match="still busy after 1 s"):
        browser_bench.wait_until_quiet([os.getpid()], quiet_s=2.0, timeout_s=1.0)


def _result(settings, seeds):
    runs = [dict(seed=2024, train_seconds=None, final={"accuracy": 0.5})]
    runs += [dict(seed=s, train_seconds={"tiny_cnn": 10.0}, final={"accuracy": 0.4}) for s in seeds]
    return dict(benchmark="classification", params=settings, runs=runs)


def test_resume_keeps_only_the_retrained_seeds_asked_for(classification_bench, tmp_path):
    settings = {"profile": "quick", "phases": [4, 12]}
    path = tmp_path / "partial.json"
    path.write_text(json.dumps(_result(settings, [1, 3])))
    kept = classification_bench.resumed_runs(path, settings, [1, 2])
    assert [r["seed"] for r in kept] == [1]  # not 2024 (the pipeline's run), not 3


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, r"missing\.json does not exist; run without --resume"),
        ("{not json", r"bad\.json is not a readable result"),
        (json.dumps({"benchmark": "matching"}), r"bad\.json is not a classification benchmark"),
        (
            json.dumps(_result({"profile": "quick", "phases": [4, 8]}, [1])),
            r"bad\.json was made with other settings \(phases differ\)",
        ),
    ],
)
def test_resume_refuses_what_it_cannot_continue(classification_bench, tmp_path, content, match):
    path = tmp_path / ("missing.json" if content is None else "bad.json")
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError, match=match):
        classification_bench.resumed_runs(path, {"profile": "quick", "phases": [4, 12]}, [1])


@pytest.fixture(scope="module")
def match_bench():
    return _load("match_as_classifier")


def _split_index(per_specimen: int = 5):
    import pandas as pd

    rows = [
        dict(slice_id=f"{s}:{i:05d}", specimen_id=s, species=s[:1], split=split)
        for s, split in (("A1", "val"), ("B1", "val"), ("C1", "test"), ("D1", "train"))
        for i in range(per_specimen)
    ]
    return pd.DataFrame(rows)


def test_sections_of_a_new_seed_never_repeat_and_leave_the_first_sample_as_it_was(match_bench):
    index = _split_index()
    one = match_bench.sample_sections(index, "val", 2, [0])
    two = match_bench.sample_sections(index, "val", 2, [0, 1])
    assert list(two[0]["slice_id"]) == list(one[0]["slice_id"])
    assert not set(two[0]["slice_id"]) & set(two[1]["slice_id"])
    for sample in two.values():
        assert sample["specimen_id"].value_counts().to_dict() == {"A1": 2, "B1": 2}
    # a specimen with fewer sections left than asked gives what it has
    three = match_bench.sample_sections(index, "val", 2, [0, 1, 2])
    assert three[2]["specimen_id"].value_counts().to_dict() == {"A1": 1, "B1": 1}


def test_specimen_vote_takes_the_most_frequent_genus_then_the_higher_score(match_bench):
    import pandas as pd

    frame = pd.DataFrame(
        dict(
            specimen_id=["s1", "s1", "s1", "s2", "s2"],
            matched=["X", "Y", "X", "X", "Y"],
            score=[0.5, 0.9, 0.5, 0.6, 0.7],
        )
    )
    assert match_bench.specimen_vote(frame).to_dict() == {"s1": "X", "s2": "Y"}


def test_scores_count_sections_and_specimens_by_their_mean_probability(match_bench):
    import numpy as np

    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.45, 0.55], [0.3, 0.7]])
    y = np.array([0, 0, 1, 1])
    specimens = np.array(["a", "a", "b", "b"])
    # "a": mean (0.55, 0.45) -> right although one section is wrong; "b" right
    assert match_bench.scores(probs, y, specimens) == dict(
        section_accuracy=0.75, specimens_right="2/2"
    )
