"""The authors' released result files, parsed, and the paper's Tables 4–8 rebuilt from them.

The authors of ForamDeepSlice released scikit-learn classification reports (text) for
their seven single models, their PatchEnsemble and their Top-2/3/4 voting ensembles,
plus a few comparison CSVs (``3_Results/`` of A-Halimi/3D_Fossil_Project; the copies
here have ``/`` replaced by ``_`` in their names). This module parses them into
:class:`foramlib.evaluation.reports.Report` objects, renders Tables 4–8 from them with the very
table builders that render this pipeline's own results (:mod:`foramlib.evaluation.reports`), and
lists every cell where the rebuilt tables and the tables printed in the paper
(:mod:`foramlib.evaluation.paper`) disagree.

Examples
--------
>>> text = '''
...               precision    recall  f1-score   support
...
...     Alveolina     0.9000    0.8000    0.8471        10
... Baculogypsina     0.5000    0.6000    0.5455         5
...
...      accuracy                         0.7333        15
...     macro avg     0.7000    0.7000    0.6963        15
...  weighted avg     0.7667    0.7333    0.7466        15
... '''
>>> r = parse_classification_report(text, name="m", source="m.txt")
>>> r.classes, r.metric("accuracy"), r.metric("n")
(['Alveolina', 'Baculogypsina'], 0.7333, 15)
>>> parse_classification_report(text.replace("  5\\n", "  6\\n"), name="m", source="m.txt")
Traceback (most recent call last):
...
foramlib.evaluation.reference.ReferenceFormatError: m.txt: class supports add up to 16 but the \
accuracy line counts 15
"""

from __future__ import annotations

import ast
import dataclasses
import math
import re
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from foramlib.evaluation import paper
from foramlib.evaluation import reports as rp
from foramlib.evaluation.reports import OVERALL_KEYS, Report

__all__ = [
    "ReferenceFormatError",
    "MODEL_KEYS",
    "WEAK_CLASSES",
    "parse_classification_report",
    "split_reports",
    "load_authors_results",
    "ensemble_members",
    "authors_tables",
    "printed_tables",
    "compare_tables",
    "support_differences",
    "comparison_notes",
]

# Paper name (Table 8) -> the authors' model key (file-name stem)
MODEL_KEYS: dict[str, str] = {
    "ConvNeXt-Large": "convnextl",
    "NASNet": "nasnet",
    "EfficientNetV2-L": "effv2l",
    "EfficientNetV2-S": "effv2s",
    "ConvNeXt": "convnext",  # ConvNeXt-Base
    "MobileNet": "mobilenet",
    "ResNet101V2": "resnet101v2",
}
WEAK_CLASSES = ("Baculogypsina", "Orbitoides")
TOPK = ("Top-2", "Top-3", "Top-4")

MODEL_FILE = "{key}_reports_classification_report_{key}.txt"
PATCHED_FILE = "fossil_classifier_final_Classification_report_Patched_Ensemble.txt"
FINAL_FILE = "fossil_classifier_final_reports_classification_report_fossil_classfier_final.txt"
TOPK_FILE = "Ensemble_Top_k_classification_report_ensemble_top-{k}.txt"
COMPARISON_CSV = "_comparison_fossil_model_comparison_report_v2.csv"
MACRO_CSV = "_comparison_macro_accuracy_table.csv"
FINAL_KEY = "fossil_classifier_final"  # the PatchEnsemble's row in MACRO_CSV

CROSS_CHECK_TOL = 1e-4

_HEADER = re.compile(r"^\s*precision\s+recall\s+f1-score\s+support\s*$")
_BANNER = re.compile(r"^\s*-{2,}\s*(?P<title>.*?)\s*-{2,}\s*$")
_UNDERLINE = re.compile(r"^\s*=+\s*$")
_KEY_VALUE = re.compile(r"^\s*(?P<key>[^:]+?)\s*:\s*(?P<value>.*?)\s*$")
_MEMBERS = re.compile(r"^\s*Top-(?P<k>\d+) models\s*:\s*(?P<members>\[.*\])\s*$", re.M)
# "Overall Test Metrics" header lines -> Report.overall keys
_HEADER_METRICS = {
    "test accuracy": "accuracy",
    "top-3 accuracy": "top3",
    "test auc": "auc",
    "macro-f1": "macro_f1",
}
_TABLE_LABELS = ("Species", "Ensemble Method", "Model")


class ReferenceFormatError(ValueError):
    """A released result file is not in the format this module expects.

    The message starts with the file (or source) name and says what was expected.
    """


def _fail(source: str, message: str) -> ReferenceFormatError:
    return ReferenceFormatError(f"{source}: {message}")


def _number(token: str, source: str, line: str) -> float:
    try:
        value = float(token)
    except ValueError:
        raise _fail(source, f"expected a number, got {token!r} in line {line.strip()!r}") from None
    if not math.isfinite(value):
        raise _fail(source, f"expected a finite number, got {token!r} in line {line.strip()!r}")
    return value


def _count(token: str, source: str, line: str) -> int:
    if not re.fullmatch(r"\d+", token):
        raise _fail(source, f"expected an integer support, got {token!r} in line {line.strip()!r}")
    return int(token)


def _parse_preamble(lines: list[str], source: str) -> dict[str, float]:
    """Metric lines of an "Overall Test Metrics" header (other lines are titles)."""
    found: dict[str, float] = {}
    for line in lines:
        m = _KEY_VALUE.match(line)
        if m and m["key"].lower() in _HEADER_METRICS:
            found[_HEADER_METRICS[m["key"].lower()]] = _number(m["value"], source, line)
    return found


def parse_classification_report(text: str, *, name: str, source: str) -> Report:
    """Parse one scikit-learn text classification report into a :class:`Report`.

    Parameters
    ----------
    text : str
        The report: optional title/"Overall Test Metrics" lines, the header line
        ``precision recall f1-score support``, one row per class (names may be
        right-aligned, and may contain spaces), then the ``accuracy``, ``macro avg`` and
        ``weighted avg`` lines.
    name : str
        Name of the resulting report (as shown in tables).
    source : str
        Where the text comes from; every error message starts with it.

    Returns
    -------
    Report
        ``per_class`` indexed by class (in file order); ``overall`` holds every key of
        ``OVERALL_KEYS`` (``top3`` and ``auc`` are None unless the text has an
        "Overall Test Metrics" header; ``n`` is the accuracy line's support).

    Raises
    ------
    ReferenceFormatError
        Empty text, no header line, a line that is not a class row or summary line, a
        non-numeric value, missing class rows or summary lines, supports that do not add
        up, or header metrics that disagree with the table (> 1e-4).
    """
    lines = text.splitlines()
    headers = [i for i, line in enumerate(lines) if _HEADER.match(line)]
    if not text.strip():
        raise _fail(source, "empty file; expected a scikit-learn classification report")
    if not headers:
        raise _fail(
            source,
            "no header line 'precision    recall  f1-score   support' "
            "(expected a scikit-learn classification report)",
        )
    if len(headers) > 1:
        raise _fail(source, f"{len(headers)} reports in one text; use split_reports() first")
    start = headers[0]
    header_metrics = _parse_preamble(lines[:start], source)

    rows: dict[str, tuple[float, float, float, int]] = {}
    summary: dict[str, tuple[float, ...]] = {}
    for line in lines[start + 1 :]:
        tokens = line.split()
        if not tokens:
            continue
        if "weighted avg" in summary:
            raise _fail(source, f"unexpected line after 'weighted avg': {line.strip()!r}")
        if tokens[0] == "accuracy":
            if len(tokens) != 3:
                raise _fail(source, f"expected 'accuracy <value> <support>', got {line.strip()!r}")
            summary["accuracy"] = (
                _number(tokens[1], source, line),
                _count(tokens[2], source, line),
            )
            continue
        label = " ".join(tokens[:2])
        if label in ("macro avg", "weighted avg"):
            if len(tokens) != 6:
                raise _fail(
                    source,
                    f"expected '{label} <precision> <recall> <f1-score> <support>', "
                    f"got {line.strip()!r}",
                )
            summary[label] = (
                *(_number(t, source, line) for t in tokens[2:5]),
                _count(tokens[5], source, line),
            )
            continue
        if summary:
            raise _fail(source, f"class row after the summary lines: {line.strip()!r}")
        if len(tokens) < 5:
            raise _fail(
                source,
                "expected '<class> <precision> <recall> <f1-score> <support>', "
                f"got {line.strip()!r}",
            )
        cls = " ".join(tokens[:-4])
        if cls in rows:
            raise _fail(source, f"class {cls!r} appears twice")
        p, r, f = (_number(t, source, line) for t in tokens[-4:-1])
        rows[cls] = (p, r, f, _count(tokens[-1], source, line))

    if not rows:
        raise _fail(source, "no class rows between the header and the 'accuracy' line")
    for label in ("accuracy", "macro avg", "weighted avg"):
        if label not in summary:
            raise _fail(source, f"missing the {label!r} line")
    accuracy, n = summary["accuracy"]
    total = sum(row[3] for row in rows.values())
    if total != n:
        raise _fail(source, f"class supports add up to {total} but the accuracy line counts {n}")
    for label in ("macro avg", "weighted avg"):
        if summary[label][3] != n:
            raise _fail(
                source, f"the {label!r} line counts {summary[label][3]}, the accuracy line {n}"
            )

    macro, weighted = summary["macro avg"], summary["weighted avg"]
    overall = dict.fromkeys(OVERALL_KEYS)
    overall.update(
        accuracy=accuracy,
        macro_precision=macro[0],
        macro_recall=macro[1],
        macro_f1=macro[2],
        weighted_precision=weighted[0],
        weighted_recall=weighted[1],
        weighted_f1=weighted[2],
        n=n,
    )
    for key, value in header_metrics.items():
        if overall[key] is not None and abs(overall[key] - value) > CROSS_CHECK_TOL:
            raise _fail(
                source, f"header says {key} = {value} but the report table says {overall[key]}"
            )
        overall[key] = value if overall[key] is None else overall[key]

    per_class = pd.DataFrame.from_dict(
        rows, orient="index", columns=["precision", "recall", "f1", "support"]
    )
    per_class.index.name = "class"
    try:
        return Report(name, per_class, overall, source=source)
    except ValueError as err:
        raise _fail(source, str(err)) from None


def _title(preamble: list[str]) -> str:
    """A report's title: its last ``--- Title ---`` banner or ``====``-underlined line."""
    title = ""
    for i, line in enumerate(preamble):
        banner = _BANNER.match(line)
        if banner:
            title = banner["title"]
        elif (
            line.strip()
            and i + 1 < len(preamble)
            and _UNDERLINE.match(preamble[i + 1])
            and not _UNDERLINE.match(line)
        ):
            title = line.strip()
    return title


def split_reports(text: str, source: str) -> list[tuple[str, str]]:
    """Split a file's text into its reports: ``[(title, report text), ...]``.

    Each report text runs from the end of the previous report (its ``weighted avg``
    line) through its own ``weighted avg`` line, so titles and an "Overall Test Metrics"
    header stay with the report they precede. The title is the last ``--- Title ---``
    banner or ``====``-underlined line before the report's header ("" if none).

    >>> one = "  precision recall f1-score support\\nA 1 1 1 2\\naccuracy 1 2\\n"
    >>> one += "macro avg 1 1 1 2\\nweighted avg 1 1 1 2\\n"
    >>> [t for t, _ in split_reports("--- X ---\\n" + one + "--- Y ---\\n" + one, "f.txt")]
    ['X', 'Y']
    """
    lines = text.splitlines()
    chunks: list[tuple[str, str]] = []
    begin = 0
    seen_header = False
    for i, line in enumerate(lines):
        if _HEADER.match(line):
            if seen_header:
                raise _fail(
                    source, f"a report header before the 'weighted avg' line (line {i + 1})"
                )
            seen_header = True
            header_at = i
        elif seen_header and line.split()[:2] == ["weighted", "avg"]:
            body = lines[begin : i + 1]
            chunks.append((_title(lines[begin:header_at]), "\n".join(body) + "\n"))
            begin, seen_header = i + 1, False
    if seen_header:
        raise _fail(source, "a report without a 'weighted avg' line")
    rest = [line for line in lines[begin:] if line.strip()]
    if not chunks:
        raise _fail(
            source,
            "empty file; expected a scikit-learn classification report"
            if not text.strip()
            else "no complete classification report (header line 'precision recall "
            "f1-score support' through 'weighted avg')",
        )
    if rest:
        raise _fail(source, f"unexpected text after the last report: {rest[0].strip()!r}")
    return chunks


def _read(path: Path) -> str:
    if not path.is_file():
        raise FileNotFoundError(f"authors' result file not found: {path}")
    return path.read_text(encoding="utf-8")


def _single(path: Path, name: str, title_contains: str | None = None) -> tuple[Report, str]:
    """The one report of `path` (or the one whose title contains `title_contains`), and
    its title."""
    text = _read(path)
    chunks = split_reports(text, str(path))
    if title_contains is not None:
        chunks = [c for c in chunks if title_contains.lower() in c[0].lower()]
    if len(chunks) != 1:
        want = f" titled '...{title_contains}...'" if title_contains else ""
        raise _fail(str(path), f"expected exactly one report{want}, found {len(chunks)}")
    title, body = chunks[0]
    report = parse_classification_report(body, name=name, source=str(path))
    return dataclasses.replace(report, source=path.name), title


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"authors' result file not found: {path}")
    try:
        table = pd.read_csv(path, index_col="model")
    except (ValueError, pd.errors.ParserError) as err:
        raise _fail(str(path), f"expected a CSV with a 'model' column ({err})") from None
    return table


def _cross_check(report: Report, row: pd.Series, path: Path, model: str) -> dict:
    """Compare a CSV row with the report; return the CSV's values for keys the report lacks."""
    extra = {}
    for key, value in row.items():
        if key not in OVERALL_KEYS:
            raise _fail(str(path), f"unexpected column {key!r}; expected {OVERALL_KEYS}")
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise _fail(str(path), f"{model} {key}: expected a number, got {value!r}") from None
        if math.isnan(value):  # an empty cell: nothing to check or to take
            continue
        mine = report.metric(key)
        if mine is None:
            extra[key] = value
        elif not abs(float(mine) - value) <= CROSS_CHECK_TOL:
            raise _fail(
                str(path),
                f"{model} {key} = {value} disagrees with {report.source} ({mine})",
            )
    return extra


def ensemble_members(reference_dir: str | Path) -> dict[str, list[str]]:
    """Members of the Top-2/3/4 ensembles (the authors' model keys), read from the first
    line of their report files, e.g. ``{"Top-2": ["convnextl", "nasnet"], ...}``."""
    members = {}
    for name in TOPK:
        path = Path(reference_dir) / TOPK_FILE.format(k=name[-1])
        m = _MEMBERS.search(_read(path))
        if not m or f"Top-{m['k']}" != name:
            raise _fail(str(path), f"expected a first line '{name} models: [...]'")
        try:
            listed = ast.literal_eval(m["members"])
        except (ValueError, SyntaxError):
            raise _fail(str(path), f"cannot read the member list {m['members']!r}") from None
        if len(listed) != int(m["k"]) or not all(isinstance(x, str) for x in listed):
            raise _fail(str(path), f"expected {m['k']} model names, got {listed!r}")
        members[name] = listed
    return members


def load_authors_results(reference_dir: str | Path) -> dict[str, Report]:
    """All eleven released reports, keyed by the paper's names.

    Keys: the seven single models of Table 8 (``MODEL_KEYS``), ``"Patched"`` (the
    PatchEnsemble, Table 8's "Ensemble (Final)") and ``"Top-2"``, ``"Top-3"``,
    ``"Top-4"``. Each ``Report.source`` is the file's name (the Top-k ones add the
    report's title and their members, see :func:`ensemble_members`).

    Where the numbers come from:

    - single models: their report files; the "Overall Test Metrics" header gives
      ``top3`` and ``auc``, and every overall metric is cross-checked against
      ``_comparison_fossil_model_comparison_report_v2.csv``;
    - ``"Patched"``: the "Patched Ensemble Report" of
      ``fossil_classifier_final_Classification_report_Patched_Ensemble.txt``, which has
      no header.
      ``fossil_classifier_final_reports_classification_report_fossil_classfier_final.txt``
      holds exactly the same per-class and summary numbers (checked here) plus an
      "Overall Test Metrics" header (Top-3 0.9960, AUC 0.9980): it is the same
      PatchEnsemble evaluated by the single-model script, so ``auc`` comes from that
      header and ``top3`` from ``_comparison_macro_accuracy_table.csv`` (its
      ``fossil_classifier_final`` row), cross-checked against the header;
    - Top-k: their "Class-Aware Weighted Ensemble Report"s; no top-3 or AUC was
      released for them.

    Raises
    ------
    FileNotFoundError
        A released file is missing (the message names it).
    ReferenceFormatError
        A file is not in the expected format, or two files disagree by more than 1e-4.
    """
    root = Path(reference_dir)
    out: dict[str, Report] = {}
    comparison_path = root / COMPARISON_CSV
    comparison = _read_csv(comparison_path)
    for name, key in MODEL_KEYS.items():
        report, _ = _single(root / MODEL_FILE.format(key=key), name)
        if key not in comparison.index:
            raise _fail(str(comparison_path), f"no row for model {key!r}")
        extra = _cross_check(report, comparison.loc[key], comparison_path, key)
        out[name] = dataclasses.replace(report, overall={**report.overall, **extra})

    macro_path = root / MACRO_CSV
    macro = _read_csv(macro_path)
    for key in (*MODEL_KEYS.values(), FINAL_KEY):
        if key not in macro.index:
            raise _fail(str(macro_path), f"no row for model {key!r}")
    for name, key in MODEL_KEYS.items():
        _cross_check(out[name], macro.loc[key], macro_path, key)

    patched, _ = _single(root / PATCHED_FILE, "Patched", title_contains="Patched")
    final, _ = _single(root / FINAL_FILE, "Patched")
    if not patched.per_class.equals(final.per_class) or any(
        patched.metric(k) != final.metric(k) for k in OVERALL_KEYS if k not in ("top3", "auc")
    ):
        raise _fail(FINAL_FILE, f"expected the same numbers as {PATCHED_FILE} (the PatchEnsemble)")
    extra = _cross_check(patched, macro.loc[FINAL_KEY], macro_path, FINAL_KEY)
    _cross_check(final, macro.loc[FINAL_KEY], macro_path, FINAL_KEY)
    overall = {**patched.overall, **extra, "auc": final.metric("auc")}
    out["Patched"] = dataclasses.replace(
        patched, overall=overall, source=f"{PATCHED_FILE} (AUC: {FINAL_FILE})"
    )

    members = ensemble_members(root)
    for name in TOPK:
        report, title = _single(root / TOPK_FILE.format(k=name[-1]), name)
        out[name] = dataclasses.replace(
            report,
            source=f"{report.source}: {title} (members: {', '.join(members[name])})",
        )
    return out


def authors_tables(reports: Mapping[str, Report]) -> dict[str, pd.DataFrame]:
    """Tables 4–8 rendered from the authors' reports by :mod:`foramlib.evaluation.reports`.

    `reports` as returned by :func:`load_authors_results`.
    """
    renamed = {
        "Patched Ensemble" if name == "Patched" else name: reports[name]
        for name in ("Patched", *TOPK)
    }
    methods = {name: reports[name] for name in ("Patched", *TOPK)}
    final = {"Ensemble (Final)": reports["Patched"]}
    return {
        "table4": rp.table4(renamed, weak=list(WEAK_CLASSES)),
        "table5": rp.table5(methods),
        "table6": rp.table6(methods),
        "table7": rp.table7(methods),
        "table8": rp.table8({**final, **{name: reports[name] for name in MODEL_KEYS}}),
    }


def printed_tables() -> dict[str, pd.DataFrame]:
    """Tables 4–8 as printed in the paper (:mod:`foramlib.evaluation.paper`), keyed like
    :func:`authors_tables`."""
    return {
        "table4": paper.table4(),
        "table5": paper.table5(),
        "table6": paper.table6(),
        "table7": paper.table7(),
        "table8": paper.table8(),
    }


def _cells(table: pd.DataFrame) -> dict[tuple[str, str], float | None]:
    """``{(row label, column): value}``; row labels join the label columns with " / "."""
    labels = [c for c in _TABLE_LABELS if c in table.columns]
    if labels:
        keys = [" / ".join(str(v) for v in row) for row in table[labels].itertuples(index=False)]
        values = table.drop(columns=labels)
    else:
        keys = [str(i) for i in table.index]
        values = table
    cells: dict[tuple[str, str], float | None] = {}
    for key, (_, row) in zip(keys, values.iterrows(), strict=True):
        for column, value in row.items():
            missing = value is None or (isinstance(value, float) and math.isnan(value))
            cells[(key, str(column))] = None if missing else float(value)
    return cells


def compare_tables(
    rebuilt: Mapping[str, pd.DataFrame], printed: Mapping[str, pd.DataFrame], tol: float = 0.0015
) -> pd.DataFrame:
    """Every cell where two sets of tables differ by more than `tol`, or that one lacks.

    Columns: ``table``, ``row``, ``column``, ``printed``, ``rebuilt``, ``difference``
    (rebuilt − printed; NaN when a side is missing). Rows of Table 4 are labelled
    "Species / Ensemble Method", of Table 8 by model. The default tolerance lets the
    last printed digit differ by one; ``tol=0`` lists every difference.

    >>> t = {"table8": pd.DataFrame({"Model": ["a"], "AUC": [0.5]})}
    >>> compare_tables(t, {"table8": pd.DataFrame({"Model": ["a"], "AUC": [0.7]})})
        table row column  printed  rebuilt  difference
    0  table8   a    AUC      0.7      0.5        -0.2
    """
    rows = []
    for name in dict.fromkeys([*printed, *rebuilt]):
        mine = _cells(rebuilt[name]) if name in rebuilt else {}
        theirs = _cells(printed[name]) if name in printed else {}
        for row, column in dict.fromkeys([*theirs, *mine]):
            p, r = theirs.get((row, column)), mine.get((row, column))
            if p is None and r is None:
                continue
            if p is None or r is None:
                diff = math.nan
            else:
                diff = round(r - p, 6)
                if abs(diff) <= tol + 1e-9:
                    continue
            rows.append(
                {
                    "table": name,
                    "row": row,
                    "column": column,
                    "printed": p,
                    "rebuilt": r,
                    "difference": diff,
                }
            )
    columns = ["table", "row", "column", "printed", "rebuilt", "difference"]
    return pd.DataFrame(rows, columns=columns).astype(
        {"printed": float, "rebuilt": float, "difference": float}
    )


def support_differences(reports: Mapping[str, Report]) -> pd.DataFrame:
    """Supports (test-slice counts) where a report departs from the majority of reports.

    One row per (report, class) whose support differs from the most common support of
    that class, and one per report whose total (class ``"TOTAL"``) differs. Columns:
    ``report``, ``class``, ``support``, ``majority``, ``difference``.
    """
    supports = pd.DataFrame(
        {name: r.per_class["support"].astype(int) for name, r in reports.items()}
    ).T
    supports["TOTAL"] = supports.sum(axis=1)
    rows = []
    for cls in supports.columns:
        counts = Counter(supports[cls].dropna().astype(int))
        majority = counts.most_common(1)[0][0]
        for name, value in supports[cls].items():
            if pd.notna(value) and int(value) != majority:
                rows.append(
                    {
                        "report": name,
                        "class": cls,
                        "support": int(value),
                        "majority": majority,
                        "difference": int(value) - majority,
                    }
                )
    columns = ["report", "class", "support", "majority", "difference"]
    return pd.DataFrame(rows, columns=columns)


def _names(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _members(report: Report) -> list[str] | None:
    m = re.search(r"\(members: (?P<m>[^)]*)\)", report.source)
    return m["m"].split(", ") if m else None


def _label(row: pd.Series) -> str:
    table = f"Table {row['table'].removeprefix('table')}"
    return f"{table}, {row['row']}, {row['column']}"


def comparison_notes(reports: Mapping[str, Report], differences: pd.DataFrame) -> list[str]:
    """Plain-language notes on how the released files and the printed tables differ.

    Parameters
    ----------
    reports : mapping
        As returned by :func:`load_authors_results`.
    differences : DataFrame
        As returned by :func:`compare_tables` (rebuilt vs printed).
    """
    notes = []

    # 1. test-slice counts
    diffs = support_differences(reports)
    majority_total = Counter(int(r.per_class["support"].sum()) for r in reports.values())
    majority_total = majority_total.most_common(1)[0][0]
    for (support_total,), group in diffs[diffs["class"] == "TOTAL"].groupby(["support"]):
        names = list(group["report"])
        per_class = diffs[diffs["report"].isin(names) & (diffs["class"] != "TOTAL")]
        detail = "; ".join(
            f"{cls} {int(g['support'].iloc[0]):,} where the others count "
            f"{int(g['majority'].iloc[0]):,}"
            for cls, g in per_class.groupby("class")
        )
        table2_note = (
            f", as does the paper's Table 2 ({paper.TABLE2_TOTAL[3]:,} test slices)"
            if majority_total == paper.TABLE2_TOTAL[3]
            else ""
        )
        notes.append(
            f"The {_names(names)} reports count {support_total:,} test slices ({detail}); "
            f"every other report counts {majority_total:,}{table2_note}."
        )

    # 2. where the Ensemble (Final) row's top-3 and AUC come from
    final = reports.get("Patched")
    if final is not None and FINAL_FILE in final.source:
        shown = dict(zip(paper.TABLE8_COLUMNS, paper.TABLE8["Ensemble (Final)"], strict=True))
        agree = all(
            final.metric(key) is not None and round(final.metric(key), 3) == shown[column]
            for key, column in (("top3", "Top-3 Acc"), ("auc", "AUC"))
        )
        notes.append(
            f"The Patched Ensemble report ({PATCHED_FILE}) has no top-3 accuracy or AUC. "
            f"The header of {FINAL_FILE}, whose per-class numbers are identical to the "
            f"Patched Ensemble's, gives Top-3 {final.metric('top3'):.4f} and AUC "
            f"{final.metric('auc'):.4f}"
            + (", the values Table 8 prints for Ensemble (Final)" if agree else "")
            + f"; {MACRO_CSV} gives the same Top-3 and no AUC."
        )

    # 3. Top-k members
    members = {n: _members(reports[n]) for n in TOPK if n in reports}
    if members and all(members.values()) and all(n in reports for n in MODEL_KEYS):
        by_accuracy = sorted(MODEL_KEYS, key=lambda n: reports[n].metric("accuracy"), reverse=True)
        ranked = all(
            members[n] == [MODEL_KEYS[m] for m in by_accuracy[: int(n[-1])]] for n in members
        )
        notes.append(
            "The Top-k ensembles are "
            + "; ".join(f"{n}: {', '.join(m)}" for n, m in members.items())
            + (
                " — the k single models with the highest test accuracy (Table 8)."
                if ranked
                else "."
            )
        )

    titles = [n for n in TOPK if n in reports and "Weighted" in reports[n].source]
    if titles:
        notes.append(
            f"The released {_names(titles)} files are titled 'Class-Aware Weighted Ensemble "
            "Report', whereas the paper describes the Top-k ensembles as majority voting."
        )

    # 4. cells that differ
    for _, row in differences.iterrows():
        if pd.isna(row["rebuilt"]):
            notes.append(
                f"{_label(row)}: printed {row['printed']:.3f}, "
                "but no released file gives this value."
            )
        elif pd.isna(row["printed"]):
            notes.append(
                f"{_label(row)}: the released files give {row['rebuilt']:.3f}, "
                "the paper prints nothing."
            )
        else:
            kind = (
                "a last-digit (rounding) difference"
                if abs(row["difference"]) < 0.0011
                else "a value that does not match"
            )
            notes.append(
                f"{_label(row)}: printed {row['printed']:.3f}, released files "
                f"give {row['rebuilt']:.3f} ({kind})."
            )
    if differences.empty:
        rebuilt, printed = authors_tables(reports), printed_tables()
        exact = compare_tables(rebuilt, printed, tol=0.0)
        n_cells = sum(len(_cells(t)) for t in printed.values())
        notes.append(
            f"All {n_cells} printed cells of Tables 4–8 are reproduced from the released files"
            + (
                " exactly."
                if exact.empty
                else f" to within the last printed digit ({len(exact)} differ in that digit)."
            )
        )

    # 5. the paper against itself: Table 4 repeats cells of Tables 5–7
    printed = printed_tables()
    complete = all(n in reports for n in ("Patched", *TOPK))
    rebuilt = authors_tables(reports) if complete else None
    sources = {
        "F1-score": ("table5", "f1"),
        "Precision": ("table6", "precision"),
        "Recall": ("table7", "recall"),
    }
    for i, row in printed["table4"].iterrows():
        species, shown = row["Species"], row["Ensemble Method"]
        method = "Patched" if shown == "Patched Ensemble" else shown
        for column, (table, metric) in sources.items():
            other = float(printed[table].loc[species, method])
            if other == row[column]:
                continue
            note = (
                f"The paper disagrees with itself: Table 4 prints {species} {method} "
                f"{column} as {row[column]:.3f}, Table {table[-1]} as {other:.3f}"
            )
            if method in reports:
                raw = float(reports[method].per_class.loc[species, metric])
                note += f"; the released report says {raw:.4f}"
                if (
                    rebuilt is not None
                    and rebuilt["table4"].loc[i, column] == row[column]
                    and rebuilt[table].loc[species, method] == other
                ):
                    note += (
                        ", and the rebuilt tables reproduce both roundings (Python's "
                        "round() in Table 4, pandas' round() in Tables 5–7)"
                    )
            notes.append(note + ".")
    return notes
