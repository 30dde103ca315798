"""Tests for foramlib.dataset.split: the specimen-grouped, balance-optimised split."""

from __future__ import annotations

import itertools
import math
import statistics

import numpy as np
import pandas as pd
import pytest

from foramlib.dataset import split as sp
from foramlib.evaluation import paper

PAPER_FRACTIONS = (0.4, 0.13, 0.47)


def make_specimens(sizes: dict[str, list[int]], volumes: dict[str, int] | None = None):
    """A specimen table: genus -> list of per-specimen slice counts."""
    volumes = volumes or {}
    rows = []
    for species, slices in sizes.items():
        for i, n in enumerate(slices):
            sid = f"{species[:3]}{i}"
            rows.append((sid, species, volumes.get(sid, 1), n))
    return pd.DataFrame(rows, columns=["specimen_id", "species", "n_volumes", "n_slices"])


def random_specimens(seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    names = ["Alveolina", "Baculogypsina", "Chrysalidina", "Dictyoconus", "Elphidiella"]
    sizes = {
        name: rng.integers(1, 500, size=rng.integers(3, 8)).tolist()
        for name in names[: rng.integers(2, 6)]
    }
    df = make_specimens(sizes)
    df["n_volumes"] = rng.integers(1, 3, size=len(df))
    return df.sample(frac=1, random_state=seed).reset_index(drop=True)  # shuffled rows


def independent_objective(counts, fractions) -> float:
    """The documented objective, written again with the statistics module."""
    cvs, gaps = [], []
    grand = sum(sum(row) for row in counts)
    for j in range(3):
        col = [row[j] for row in counts]
        cvs.append(statistics.stdev(col) / statistics.mean(col) * 100)
        gaps.append(abs(sum(col) / grand - fractions[j]))
    return statistics.mean(cvs) + 100 * statistics.mean(gaps)


def genus_counts(assignment: pd.DataFrame) -> list[list[int]]:
    t = assignment.pivot_table(
        index="species", columns="split", values="n_slices", aggfunc="sum", fill_value=0
    )
    return t[list(sp.SPLITS)].to_numpy().tolist()


def check_valid(assignment: pd.DataFrame, specimens: pd.DataFrame, fractions) -> None:
    assert len(assignment) == len(specimens)
    assert set(assignment["specimen_id"]) == set(specimens["specimen_id"])
    assert assignment["specimen_id"].is_unique  # so no specimen is in two splits
    assert set(assignment["split"]) <= set(sp.SPLITS)
    for species, group in assignment.groupby("species"):
        assert set(group["split"]) == set(sp.SPLITS), species
        per_split = group["split"].value_counts().reindex(list(sp.SPLITS), fill_value=0)
        assert tuple(per_split) == sp.allocate_specimens(len(group), fractions, species)
    merged = assignment.merge(specimens, on="specimen_id", suffixes=("", "_in"))
    for col in ("species", "n_volumes", "n_slices"):
        assert (merged[col] == merged[f"{col}_in"]).all()
    assert list(assignment.index) == list(range(len(assignment)))
    key = list(zip(assignment["species"], assignment["specimen_id"], strict=True))
    assert key == sorted(key)


# --------------------------------------------------------------------------- metrics


def test_cv_reproduces_paper_table3_from_table2():
    t2 = paper.table2()
    t2 = t2[t2["Species"] != "TOTAL"]
    for split_name, (_, cv, _) in paper.TABLE3.items():
        assert round(sp.coefficient_of_variation(t2[split_name]), 2) == cv


def test_cv_is_sample_std_over_mean():
    assert sp.coefficient_of_variation([1, 3]) == pytest.approx(math.sqrt(2) / 2 * 100)


@pytest.mark.parametrize(
    "counts, match",
    [([5], "at least 2"), ([1, -2], "non-negative"), ([0, 0], "mean 0"), ([1, np.nan], "finite")],
)
def test_cv_rejects_bad_counts(counts, match):
    with pytest.raises(sp.SplitError, match=match):
        sp.coefficient_of_variation(counts)


@pytest.mark.parametrize("split_name, row", list(paper.TABLE3.items()))
def test_balance_quality_agrees_with_paper(split_name, row):
    _, cv, label = row
    assert sp.balance_quality(cv) == label


@pytest.mark.parametrize(
    "cv, label",
    [
        (0, "Excellent"),
        (14.99, "Excellent"),
        (15, "Good"),
        (21.99, "Good"),
        (22, "Acceptable"),
        (29.99, "Acceptable"),
        (30, "Poor"),
        (250, "Poor"),
    ],
)
def test_balance_quality_thresholds(cv, label):
    assert sp.balance_quality(cv) == label


@pytest.mark.parametrize("bad", [-1, float("nan"), "high"])
def test_balance_quality_rejects(bad):
    with pytest.raises(sp.SplitError, match="cv_percent"):
        sp.balance_quality(bad)


# --------------------------------------------------------------------------- fractions


def test_validate_fractions_accepts_and_returns_tuple():
    assert sp.validate_fractions([0.4, 0.13, 0.47]) == (0.4, 0.13, 0.47)
    assert sp.validate_fractions(np.array([0.2, 0.3, 0.5])) == (0.2, 0.3, 0.5)


@pytest.mark.parametrize(
    "fractions, match",
    [
        ([0.5, 0.5], r"split\.fractions = \[0\.5, 0\.5\] must have 3 values"),
        ([0.5, 0.2, 0.2, 0.1], "must have 3 values"),
        ([0.6, -0.1, 0.5], r"positive finite.*'val' is -0\.1"),
        ([0.5, 0.0, 0.5], "'val' is 0.0"),
        ([0.5, float("nan"), 0.5], "'val' is nan"),
        ([0.5, 0.5, float("inf")], "'test' is inf"),
        ([0.5, 0.5, 0.2], r"split\.fractions = \[0\.5, 0\.5, 0\.2\] must sum to 1 \(got 1\.2\)"),
        (["a", 0.5, 0.5], "must be three numbers"),
        (0.5, "must be three numbers"),
    ],
)
def test_validate_fractions_rejects(fractions, match):
    with pytest.raises(sp.SplitError, match=match):
        sp.validate_fractions(fractions)


def test_split_error_is_value_error():
    with pytest.raises(ValueError):
        sp.validate_fractions([1, 1, 1])


# --------------------------------------------------------------------------- allocation


@pytest.mark.parametrize(
    "n, fractions, expected",
    [
        (3, PAPER_FRACTIONS, (1, 1, 1)),
        (4, PAPER_FRACTIONS, (1, 1, 2)),  # (2, 0, 2) by rounding; val takes from train
        (4, (0.47, 0.13, 0.4), (2, 1, 1)),  # ... here from test, further above its share
        (5, PAPER_FRACTIONS, (2, 1, 2)),
        (6, PAPER_FRACTIONS, (2, 1, 3)),
        (7, PAPER_FRACTIONS, (3, 1, 3)),
        (16, PAPER_FRACTIONS, (6, 2, 8)),
        (10, (0.7, 0.15, 0.15), (7, 2, 1)),  # remainder tie: earlier split
        (3, (0.98, 0.01, 0.01), (1, 1, 1)),
    ],
)
def test_allocate_examples(n, fractions, expected):
    assert sp.allocate_specimens(n, fractions) == expected


@pytest.mark.parametrize(
    "fractions",
    [PAPER_FRACTIONS, (0.7, 0.15, 0.15), (0.34, 0.33, 0.33), (0.9, 0.05, 0.05), (0.01, 0.01, 0.98)],
)
@pytest.mark.parametrize("n", range(3, 41))
def test_allocate_sum_preserved_and_each_split_served(n, fractions):
    counts = sp.allocate_specimens(n, fractions)
    assert sum(counts) == n
    assert min(counts) >= 1
    exact = np.array(fractions) * n
    if np.all(exact >= 1):  # no minimum-one correction: plain largest remainder
        assert np.all(np.abs(np.array(counts) - exact) < 1)


@pytest.mark.parametrize("n", [0, 1, 2])
def test_allocate_too_few_specimens_names_genus(n):
    with pytest.raises(sp.SplitError, match=f"genus 'Alveolina' has {n} specimens; at least 3"):
        sp.allocate_specimens(n, PAPER_FRACTIONS, species="Alveolina")


@pytest.mark.parametrize("n", [3.0, "4", True])
def test_allocate_rejects_non_integer(n):
    with pytest.raises(sp.SplitError, match="must be an integer"):
        sp.allocate_specimens(n, PAPER_FRACTIONS, species="Alveolina")


# --------------------------------------------------------------------------- input checks


def test_genus_with_two_specimens_is_named():
    df = make_specimens({"Alveolina": [10, 20], "Beta": [5, 6, 7]})
    with pytest.raises(sp.SplitError, match="genus 'Alveolina' has 2 specimens"):
        sp.search_split(df)


def test_specimen_under_two_species_is_named():
    df = make_specimens({"Alpha": [1, 2, 3], "Beta": [4, 5, 6]})
    df.loc[len(df)] = ["Alp0", "Beta", 1, 9]
    with pytest.raises(sp.SplitError, match=r"specimen 'Alp0' is listed under 2 species"):
        sp.search_split(df)


def test_duplicate_specimen_rows_rejected():
    df = make_specimens({"Alpha": [1, 2, 3], "Beta": [4, 5, 6]})
    df.loc[len(df)] = ["Bet1", "Beta", 1, 9]
    with pytest.raises(sp.SplitError, match="specimen 'Bet1' appears in 2 rows"):
        sp.search_split(df)


@pytest.mark.parametrize(
    "value, match",
    [
        (0, "specimen 'Bet1' has n_slices = 0"),
        (-3, "specimen 'Bet1': n_slices = -3(.0)? must be a non-negative integer"),
        (2.5, "specimen 'Bet1': n_slices = 2.5"),
        (np.nan, "specimen 'Bet1': n_slices = nan"),
        ("5", "specimen 'Bet1': n_slices = '5'"),
    ],
)
def test_bad_slice_counts_name_the_specimen(value, match):
    df = make_specimens({"Alpha": [1, 2, 3], "Beta": [4, 5, 6]})
    df["n_slices"] = df["n_slices"].astype(object)
    df.loc[df["specimen_id"] == "Bet1", "n_slices"] = value
    with pytest.raises(sp.SplitError, match=match):
        sp.search_split(df)


def test_float_but_whole_slice_counts_accepted():
    df = make_specimens({"Alpha": [1, 2, 3], "Beta": [4, 5, 6]})
    df["n_slices"] = df["n_slices"].astype(float)
    assert sp.search_split(df).assignment["n_slices"].dtype == np.int64


@pytest.mark.parametrize("column", ["specimen_id", "species", "n_volumes", "n_slices"])
def test_missing_column(column):
    df = make_specimens({"Alpha": [1, 2, 3], "Beta": [4, 5, 6]}).drop(columns=column)
    with pytest.raises(sp.SplitError, match=f"lacks column.*'{column}'"):
        sp.search_split(df)


def test_single_genus_and_empty_table_rejected():
    with pytest.raises(sp.SplitError, match="only one genus \\('Alpha'\\)"):
        sp.search_split(make_specimens({"Alpha": [1, 2, 3]}))
    with pytest.raises(sp.SplitError, match="empty"):
        sp.search_split(make_specimens({}))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"restarts": 0}, "restarts = 0"),
        ({"seed": -1}, "seed = -1"),
        ({"max_exhaustive": 1.5}, "max_exhaustive = 1.5"),
        ({"fractions": (1, 1, 1)}, "sum to 1"),
    ],
)
def test_search_rejects_bad_settings(kwargs, match):
    df = make_specimens({"Alpha": [1, 2, 3], "Beta": [4, 5, 6]})
    with pytest.raises(sp.SplitError, match=match):
        sp.search_split(df, **kwargs)


# --------------------------------------------------------------------------- search


@pytest.mark.parametrize("max_exhaustive", [200_000, 1])
@pytest.mark.parametrize("seed", range(6))
def test_random_inputs_give_valid_splits(seed, max_exhaustive):
    specimens = random_specimens(seed)
    result = sp.search_split(specimens, seed=seed, max_exhaustive=max_exhaustive, restarts=3)
    check_valid(result.assignment, specimens, PAPER_FRACTIONS)
    if result.method == "exhaustive":
        assert result.n_candidates <= max_exhaustive
    else:
        assert result.method == "coordinate-descent"
    counts = genus_counts(result.assignment)
    assert result.objective == pytest.approx(independent_objective(counts, PAPER_FRACTIONS))


def brute_force(specimens: pd.DataFrame, fractions) -> float:
    """Best objective over all joint assignments with the allocated counts per genus."""
    per_genus = []
    for species, group in specimens.groupby("species"):
        alloc = sp.allocate_specimens(len(group), fractions, species)
        base = [s for s, k in zip(sp.SPLITS, alloc, strict=True) for _ in range(k)]
        options = []
        for labels in set(itertools.permutations(base)):
            options.append(
                [
                    sum(n for n, lab in zip(group["n_slices"], labels, strict=True) if lab == s)
                    for s in sp.SPLITS
                ]
            )
        per_genus.append(options)
    return min(
        independent_objective(list(joint), fractions) for joint in itertools.product(*per_genus)
    )


@pytest.mark.parametrize("fractions", [PAPER_FRACTIONS, (0.6, 0.2, 0.2)], ids=["paper", "60-20-20"])
def test_exhaustive_matches_independent_brute_force(fractions):
    specimens = make_specimens(
        {"Alpha": [120, 80, 300], "Beta": [50, 210, 90, 160], "Gamma": [400, 35, 75, 130, 60]}
    )
    result = sp.search_split(specimens, fractions)
    assert result.method == "exhaustive"
    check_valid(result.assignment, specimens, fractions)
    best = brute_force(specimens, fractions)
    assert result.objective == pytest.approx(best, abs=1e-9)
    counts = genus_counts(result.assignment)
    assert independent_objective(counts, fractions) == pytest.approx(best, abs=1e-9)


def test_duplicate_slice_counts_are_collapsed():
    # Alpha: 4 equal specimens -> 12 assignments but a single slice-count vector
    specimens = make_specimens({"Alpha": [10, 10, 10, 10], "Beta": [5, 6, 7, 8]})
    result = sp.search_split(specimens)
    assert result.n_candidates == 1 * 12  # Beta: 12 assignments, all distinct vectors


def test_deterministic_for_seed_and_row_order():
    specimens = random_specimens(11)
    runs = [
        sp.search_split(df, seed=3, max_exhaustive=1, restarts=5)
        for df in (specimens, specimens, specimens.iloc[::-1])
    ]
    for other in runs[1:]:
        pd.testing.assert_frame_equal(
            runs[0].assignment[["specimen_id", "split"]], other.assignment[["specimen_id", "split"]]
        )
        assert other.objective == runs[0].objective
        assert other.n_candidates == runs[0].n_candidates


def closest_to_target_objective(specimens: pd.DataFrame, fractions) -> float:
    """Objective of the naive start: per genus the split closest (Euclidean) to its targets."""
    counts = []
    for species, group in specimens.groupby("species"):
        alloc = sp.allocate_specimens(len(group), fractions, species)
        base = [s for s, k in zip(sp.SPLITS, alloc, strict=True) for _ in range(k)]
        target = np.array(fractions) * group["n_slices"].sum()
        options = {
            tuple(
                sum(n for n, lab in zip(group["n_slices"], labels, strict=True) if lab == s)
                for s in sp.SPLITS
            )
            for labels in set(itertools.permutations(base))
        }
        dist = {o: ((np.array(o) - target) ** 2).sum() for o in options}
        best = min(dist.values())
        closest = [o for o, d in dist.items() if d == best]
        assert len(closest) == 1, "test data must have a unique closest split per genus"
        counts.append(list(closest[0]))
    return independent_objective(counts, fractions)


def test_fallback_improves_on_closest_to_target_start():
    specimens = make_specimens(
        {
            "Alpha": [120, 80, 300, 57],
            "Beta": [50, 210, 90, 160, 31],
            "Gamma": [400, 35, 75, 130, 60, 99],
            "Delta": [17, 260, 144, 88],
        }
    )
    fallback = sp.search_split(specimens, max_exhaustive=1, restarts=1)
    assert fallback.method == "coordinate-descent"
    check_valid(fallback.assignment, specimens, PAPER_FRACTIONS)
    naive = closest_to_target_objective(specimens, PAPER_FRACTIONS)
    assert fallback.objective <= naive + 1e-9
    assert fallback.objective < naive - 1  # on this table the descent does move
    exhaustive = sp.search_split(specimens, max_exhaustive=300_000)
    assert exhaustive.method == "exhaustive"
    assert exhaustive.objective <= fallback.objective + 1e-9
    # more restarts never end worse than the closest-to-target start alone
    assert sp.search_split(specimens, max_exhaustive=1, restarts=8).objective <= (
        fallback.objective + 1e-9
    )


def test_sampled_genus_still_gives_valid_split():
    specimens = make_specimens({"Alpha": [10, 20, 30, 40, 50, 60, 70], "Beta": [5, 9, 7, 3]})
    result = sp.search_split(specimens, max_genus_assignments=25, seed=1)
    assert result.method == "coordinate-descent"
    check_valid(result.assignment, specimens, PAPER_FRACTIONS)


def test_repeat_scan_specimen_stays_whole():
    specimens = make_specimens(
        {"Alpha": [100, 90, 210, 80], "Beta": [60, 70, 65]}, volumes={"Alp2": 2}
    )
    result = sp.search_split(specimens)
    rows = result.assignment[result.assignment["specimen_id"] == "Alp2"]
    assert len(rows) == 1 and rows["n_volumes"].item() == 2
    # its two scans' slices follow it
    index = pd.DataFrame({"specimen_id": ["Alp2"] * 4, "file": ["s1", "s1", "s2", "s2"]})
    assert split_set(sp.split_slices(index, result.assignment)) == {rows["split"].item()}
    assert sp.table2(result.assignment).set_index("Species").loc["Alpha", "3D Models"] == 5


def split_set(df: pd.DataFrame) -> set:
    return set(df["split"])


# --------------------------------------------------------------------------- tables


def paper_like_assignment() -> pd.DataFrame:
    """One pseudo-specimen per genus and split carrying the paper's Table 2 numbers."""
    rows = []
    for species, (models, *slices, _) in paper.TABLE2.items():
        vols = (models - 2, 1, 1)
        for s, n, v in zip(sp.SPLITS, slices, vols, strict=True):
            rows.append((f"{species}-{s}", species, v, n, s))
    return pd.DataFrame(rows, columns=["specimen_id", "species", "n_volumes", "n_slices", "split"])


def test_table3_reproduces_paper_table3():
    pd.testing.assert_frame_equal(sp.table3(paper_like_assignment()), paper.table3())


def test_table2_reproduces_paper_numbers_and_order():
    ours = sp.table2(paper_like_assignment())
    theirs = paper.table2()
    assert list(ours.columns) == list(theirs.columns)
    assert ours["Species"].iloc[-1] == "TOTAL"
    models = ours["3D Models"].iloc[:-1].tolist()
    assert models == sorted(models, reverse=True)
    for m in set(models):  # ties by name
        names = ours.loc[ours["3D Models"] == m, "Species"].tolist()
        assert names == sorted(names)
    pd.testing.assert_frame_equal(
        ours.set_index("Species").sort_index(), theirs.set_index("Species").sort_index()
    )


def test_table2_total_row_sums():
    specimens = random_specimens(5)
    t2 = sp.table2(sp.search_split(specimens).assignment)
    body, total = t2.iloc[:-1], t2.iloc[-1]
    for col in t2.columns[1:]:
        assert total[col] == body[col].sum()
    assert total["Total Slices"] == specimens["n_slices"].sum()
    assert total["3D Models"] == specimens["n_volumes"].sum()
    assert (body[["Training", "Validation", "Test"]].sum(axis=1) == body["Total Slices"]).all()


def test_table3_layout_and_labels():
    result = sp.search_split(random_specimens(2))
    t3 = sp.table3(result.assignment)
    assert list(t3.columns) == ["Split", "Total Images", "CV (%)", "Balance Quality"]
    assert t3["Split"].tolist() == ["Training", "Validation", "Test"]
    assert t3["Total Images"].sum() == result.assignment["n_slices"].sum()
    assert t3["CV (%)"].tolist() == [result.cv[s] for s in sp.SPLITS]
    assert t3["Balance Quality"].tolist() == [sp.balance_quality(c) for c in t3["CV (%)"]]


def test_table_rejects_unknown_split_name():
    a = paper_like_assignment()
    a.loc[0, "split"] = "holdout"
    with pytest.raises(sp.SplitError, match="holdout"):
        sp.table3(a)


# --------------------------------------------------------------------------- slices


def test_split_slices_maps_by_specimen_and_keeps_order():
    a = pd.DataFrame({"specimen_id": ["s1", "s2"], "species": ["A", "B"], "split": ["val", "test"]})
    index = pd.DataFrame(
        {"specimen_id": ["s2", "s1", "s2"], "species": ["B", "A", "B"], "slice": [3, 1, 4]},
        index=[10, 11, 12],
    )
    out = sp.split_slices(index, a)
    assert out["split"].tolist() == ["test", "val", "test"]
    assert list(out.index) == [10, 11, 12]
    assert "split" not in index.columns  # input untouched


def test_split_slices_unassigned_specimen_is_named():
    a = pd.DataFrame({"specimen_id": ["s1"], "split": ["train"]})
    index = pd.DataFrame({"specimen_id": ["s1", "ghost", "ghost"]})
    with pytest.raises(sp.SplitError, match="specimen\\(s\\) 'ghost' have no split"):
        sp.split_slices(index, a)


def test_split_slices_species_mismatch_is_named():
    a = pd.DataFrame({"specimen_id": ["s1"], "species": ["A"], "split": ["train"]})
    index = pd.DataFrame({"specimen_id": ["s1"], "species": ["B"]})
    with pytest.raises(sp.SplitError, match="specimen 's1': slice species 'B'"):
        sp.split_slices(index, a)


# ----------------------------------------------------------------------------- training reserve


def _split_index():
    return pd.DataFrame(
        {
            "slice_id": ["a:0", "a:1", "b:0", "c:0"],
            "specimen_id": ["A", "A", "B", "C"],
            "species": ["X", "X", "X", "Y"],
            "split": ["train", "train", "val", "test"],
        }
    )


def test_only_the_training_specimens_reserve_joins_as_training_slices():
    reserve = pd.DataFrame(
        {
            "slice_id": ["a.r:0", "b.r:0", "c.r:0", "a.r:1"],
            "specimen_id": ["A", "B", "C", "A"],
            "species": ["X", "X", "Y", "X"],
        }
    )
    out = sp.add_training_reserve(_split_index(), reserve)
    assert out["slice_id"].tolist() == ["a:0", "a:1", "b:0", "c:0", "a.r:0", "a.r:1"]
    assert out["split"].tolist() == ["train"] * 2 + ["val", "test"] + ["train"] * 2
    assert sp.add_training_reserve(_split_index(), None) is not None


@pytest.mark.parametrize(
    "reserve, match",
    [
        (pd.DataFrame({"slice_id": ["z:0"], "specimen_id": ["Z"]}), r"specimen\(s\) \['Z'\]"),
        (pd.DataFrame({"slice_id": ["a:0"], "specimen_id": ["A"]}), r"both ordinary and reserve"),
    ],
)
def test_a_reserve_that_does_not_fit_the_split_is_refused(reserve, match):
    with pytest.raises(sp.SplitError, match=match):
        sp.add_training_reserve(_split_index(), reserve)
