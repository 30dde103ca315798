"""foramlib.tools.stages.progress_printer: the stage notebooks' progress lines."""

from __future__ import annotations

import io
import re

import pytest

from foramlib.tools.stages import progress_printer


def _lines(fractions, every=0.1) -> list[str]:
    out = io.StringIO()
    progress = progress_printer(every=every, stream=out)
    for i, fraction in enumerate(fractions):
        progress(fraction, f"step {i}")
    return out.getvalue().splitlines()


@pytest.mark.parametrize(
    "fractions, every, expected",
    [
        # ten queries: a line for each tenth, the last one at 100 %
        (
            [i / 10 for i in range(1, 11)],
            0.1,
            [f"[{10 * i:3d}%] step {i - 1}" for i in range(1, 11)],
        ),
        # before each of 20 volumes (0, 0.05, ...) and at the end: one line per 10 %
        (
            [i / 20 for i in range(20)] + [1.0],
            0.1,
            [f"[{10 * i:3d}%] step {2 * i}" for i in range(1, 10)] + ["[100%] step 20"],
        ),
        # 0.3 / 0.1 falls just short of 3 in floating point and still counts as a step
        ([0.1, 0.2, 0.3], 0.1, ["[ 10%] step 0", "[ 20%] step 1", "[ 30%] step 2"]),
        # a jump gives one line, not one line per later call until the count catches up
        ([0.55, 0.6, 0.65, 0.7], 0.1, ["[ 55%] step 0", "[ 60%] step 1", "[ 70%] step 3"]),
        # nothing at the start, and only the last call when the steps are coarse
        ([0.0, 0.3, 0.6, 0.9, 1.0], 1.0, ["[100%] step 4"]),
        ([0.0, 0.2, 0.4, 0.6, 0.8], 0.5, ["[ 60%] step 3"]),
    ],
)
def test_progress_prints_a_line_about_every_step(fractions, every, expected):
    assert _lines(fractions, every) == expected


def test_progress_always_prints_the_end_even_after_a_line_for_the_same_step():
    # 0.95 already gave the line of the tenth step; the end is still said
    assert _lines([0.95, 1.0]) == ["[ 95%] step 0", "[100%] step 1"]


def test_progress_goes_to_stdout_by_default(capsys):
    progress = progress_printer()
    progress(0.05, "reading A-01")
    progress(0.4, "indexing B-02")
    progress(1.0, "300 candidate sections")
    assert capsys.readouterr().out == "[ 40%] indexing B-02\n[100%] 300 candidate sections\n"


@pytest.mark.parametrize("every", [0, -0.1, 1.5, float("nan"), "0.1", None])
def test_progress_refuses_a_step_outside_zero_to_one(every):
    said = f"every must be a share of the work in (0, 1], got {every!r}"
    with pytest.raises(ValueError, match=re.escape(said)):
        progress_printer(every=every)
