"""Figures of the pipeline, drawn with matplotlib and written atomically.

Plots are rendered to PNG files (the book shows them offline; no JavaScript plots).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from foramlib.io.atomic import atomic_path
from foramlib.io.volumes import normalize_intensity

__all__ = [
    "data_label",
    "orthogonal_views",
    "collection_figure",
    "slice_gallery",
    "spread_orientations",
    "learning_curves_figure",
    "section_accuracy_figure",
    "save_figure",
]


def data_label(source: str) -> str:
    """How figures name their data: virtual data is always called virtual.

    >>> print(data_label("virtual"))
    Virtual micro-CT collection (synthetic, not the paper's scans)
    """
    if source == "virtual":
        return "Virtual micro-CT collection (synthetic, not the paper's scans)"
    if source == "manifest":
        return "Micro-CT collection from the manifest"
    raise ValueError(f"data.source must be 'virtual' or 'manifest', got {source!r}")


def orthogonal_views(volume: np.ndarray) -> list[np.ndarray]:
    """A pseudo-rendering and the three central sections of a volume, each in [0, 1].

    The "rendering" is a mean projection along axis 0, like a radiograph of the
    specimen; it survives noise and a low-contrast matrix better than a maximum
    projection.

    Examples
    --------
    >>> v = np.zeros((8, 8, 8)); v[2:6, 2:6, 2:6] = 1
    >>> [im.shape for im in orthogonal_views(v)]
    [(8, 8), (8, 8), (8, 8), (8, 8)]
    """
    v = np.asarray(volume, dtype=np.float32)
    if v.ndim != 3:
        raise ValueError(f"expected a 3-D volume, got shape {v.shape}")
    projection = normalize_intensity(v.mean(axis=0), 1.0, 99.5)
    v = normalize_intensity(v, 1.0, 99.5)
    cx, cy, cz = (s // 2 for s in v.shape)
    return [projection, v[cx, :, :], v[:, cy, :], v[:, :, cz]]


def collection_figure(
    volumes: Sequence[np.ndarray], labels: Sequence[str], *, title: str, ncols: int = 4
):
    """One panel per taxon: projection + three orthogonal sections (like paper Fig. 2).

    Parameters
    ----------
    volumes : sequence
        One example per taxon: its volume (3-D array), or its :func:`orthogonal_views`
        (four 2-D images), so that a caller need not hold every volume at once.
    labels : sequence of str
        Panel titles, same length as `volumes`.
    title : str
        Figure title; say there whether the data are virtual.
    """
    if len(volumes) != len(labels):
        raise ValueError(f"got {len(volumes)} volumes but {len(labels)} labels")
    if not volumes:
        raise ValueError("collection_figure needs at least one volume")
    ncols = max(1, min(ncols, len(volumes)))
    nrows = -(-len(volumes) // ncols)
    fig = plt.figure(figsize=(3.0 * ncols, 3.2 * nrows), layout="constrained")
    outer = fig.add_gridspec(nrows, ncols)
    names = ["projection", "section x", "section y", "section z"]
    for i, (vol, label) in enumerate(zip(volumes, labels, strict=True)):
        sub = outer[i // ncols, i % ncols].subgridspec(2, 2, wspace=0.02, hspace=0.02)
        views = orthogonal_views(vol) if isinstance(vol, np.ndarray) else list(vol)
        if len(views) != 4:
            raise ValueError(f"{label}: expected a volume or its 4 views, got {len(views)} images")
        for j, img in enumerate(views):
            ax = fig.add_subplot(sub[j // 2, j % 2])
            ax.imshow(img.T, cmap="gray", vmin=0, vmax=1, origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_title(label, fontsize=9, loc="left", fontstyle="italic")
            ax.text(0.02, 0.02, names[j], color="yellow", fontsize=5, transform=ax.transAxes)
    fig.suptitle(title, fontsize=11)
    return fig


def spread_orientations(normals: np.ndarray, k: int) -> np.ndarray:
    """Indices of `k` rows of `normals` spread over orientation space (farthest points).

    Normals n and -n are one orientation, so distance is ``1 - |n·m|``.

    >>> n = np.array([[0, 0, 1], [0, 0, -1.], [1, 0, 0], [0, 1, 0]])
    >>> sorted(spread_orientations(n, 3).tolist())
    [0, 2, 3]
    """
    normals = np.asarray(normals, dtype=np.float64)
    if len(normals) == 0:
        return np.zeros(0, dtype=int)
    chosen = [0]
    dist = 1.0 - np.abs(normals @ normals[0])
    for _ in range(min(k, len(normals)) - 1):
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        dist = np.minimum(dist, 1.0 - np.abs(normals @ normals[nxt]))
    return np.asarray(chosen)


def slice_gallery(index, arrays, *, per_taxon: int = 6, title: str, order=None):
    """Sample preprocessed slices: one row per taxon, columns spread over orientations.

    Parameters
    ----------
    index : DataFrame
        Slice index (``species``, ``array``, ``row``, ``normal_x/y/z``).
    arrays : dict of str -> array
        Slice arrays by name (see :func:`foramlib.dataset.slicing.load_slices`).
    per_taxon : int
        Slices per row, chosen by :func:`spread_orientations`.
    title : str
        Figure title; say whether the data are virtual.
    order : sequence of str, optional
        Taxa in display order; default: as first seen in `index`.
    """
    taxa = list(order) if order is not None else list(dict.fromkeys(index["species"]))
    if not taxa:
        raise ValueError("slice_gallery needs at least one taxon")
    fig, axes = plt.subplots(
        len(taxa),
        per_taxon,
        figsize=(1.4 * per_taxon, 1.5 * len(taxa)),
        squeeze=False,
        layout="constrained",
    )
    for r, taxon in enumerate(taxa):
        rows = index[index["species"] == taxon]
        normals = rows[["normal_x", "normal_y", "normal_z"]].to_numpy()
        picks = rows.iloc[spread_orientations(normals, per_taxon)]
        for c in range(per_taxon):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(picks):
                sl = picks.iloc[c]
                ax.imshow(arrays[sl["array"]][int(sl["row"])], cmap="gray", vmin=0, vmax=255)
                polar = np.degrees(np.arccos(abs(sl["normal_z"])))
                ax.text(
                    0.03, 0.04, f"{polar:.0f}°", color="yellow", fontsize=6, transform=ax.transAxes
                )
        axes[r, 0].set_ylabel(taxon, fontsize=8, fontstyle="italic")
    fig.suptitle(title, fontsize=10)
    return fig


def model_comparison_figure(table8, title: str):
    """Figure 3: accuracy, macro F1 and AUC of every model (a Table 8 frame)."""
    metrics = [m for m in ("Accuracy", "F1-Score", "AUC") if m in table8]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(table8) + 2), 3.6), layout="constrained")
    x = np.arange(len(table8))
    width = 0.8 / len(metrics)
    for i, metric in enumerate(metrics):
        values = table8[metric].astype(float).to_numpy()
        ax.bar(x + (i - (len(metrics) - 1) / 2) * width, np.nan_to_num(values), width, label=metric)
    ax.set_xticks(x, table8["Model"], rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score")
    ax.legend(fontsize=8, ncols=len(metrics), loc="lower right")
    ax.set_title(title, fontsize=10)
    return fig


def species_metrics_figure(reports, title: str):
    """Figure 4: F1, precision and recall per species (rows) and model (columns)."""
    import seaborn as sns

    names = list(reports)
    classes = sorted(next(iter(reports.values())).classes)
    fig, axes = plt.subplots(
        1,
        3,
        figsize=(4 + 1.6 * len(names), 0.35 * len(classes) + 2.2),
        layout="constrained",
        sharey=True,
    )
    for ax, metric in zip(axes, ["f1", "precision", "recall"], strict=True):
        grid = np.array(
            [[reports[n].per_class.loc[c, metric] for n in names] for c in classes], dtype=float
        )
        sns.heatmap(
            grid,
            ax=ax,
            vmin=0,
            vmax=1,
            cmap="viridis",
            annot=len(names) <= 8,
            fmt=".2f",
            annot_kws={"fontsize": 6},
            cbar=metric == "recall",
            xticklabels=names,
            yticklabels=classes,
        )
        ax.set_title(metric.upper() if metric == "f1" else metric, fontsize=9)
        ax.tick_params(axis="x", labelrotation=45, labelsize=7)
        ax.tick_params(axis="y", labelsize=7)
    fig.suptitle(title, fontsize=10)
    return fig


def weak_classes_figure(table4, title: str):
    """Figure 5: F1, precision and recall of the weak classes across ensemble methods."""
    classes = list(dict.fromkeys(table4["Species"]))
    methods = list(dict.fromkeys(table4["Ensemble Method"]))
    metrics = ["F1-score", "Precision", "Recall"]
    fig, axes = plt.subplots(
        1, len(classes), figsize=(4.2 * len(classes), 3.4), layout="constrained", squeeze=False
    )
    x = np.arange(len(metrics))
    width = 0.8 / len(methods)
    for ax, cls in zip(axes[0], classes, strict=True):
        rows = table4[table4["Species"] == cls].set_index("Ensemble Method")
        for i, method in enumerate(methods):
            ax.bar(
                x + (i - (len(methods) - 1) / 2) * width,
                rows.loc[method, metrics].astype(float).to_numpy(),
                width,
                label=method,
            )
        ax.set_xticks(x, metrics, fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_title(cls, fontsize=9, fontstyle="italic")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return fig


def section_accuracy_figure(table, title: str):
    """Accuracy of each model by kind of section (a :func:`foramlib.evaluation.sections.
    section_table` frame): one panel per ``by`` value, slice counts under the axis."""
    groups = list(dict.fromkeys(table["by"]))
    models = [c for c in table.columns if c not in ("by", "sections", "slices", "specimens")]
    fig, axes = plt.subplots(
        1, len(groups), figsize=(5.2 * len(groups), 3.6), layout="constrained", squeeze=False
    )
    for ax, group in zip(axes[0], groups, strict=True):
        part = table[table["by"] == group]
        x = np.arange(len(part))
        for model in models:
            ax.plot(x, part[model].astype(float), marker="o", label=model)
        labels = [f"{s}\n{n} slices" for s, n in zip(part["sections"], part["slices"], strict=True)]
        ax.set_xticks(x, labels, fontsize=7)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel(group, fontsize=9)
        ax.set_ylabel("test accuracy")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="upper left")
    fig.suptitle(title, fontsize=10)
    return fig


def confusion_figure(matrix: np.ndarray, names, title: str):
    """Row-normalised confusion matrix (rows: true class)."""
    import seaborn as sns

    n = len(names)
    fig, ax = plt.subplots(figsize=(0.45 * n + 3, 0.45 * n + 2.2), layout="constrained")
    sns.heatmap(
        matrix,
        ax=ax,
        vmin=0,
        vmax=1,
        cmap="Blues",
        annot=n <= 14,
        fmt=".2f",
        annot_kws={"fontsize": 6},
        xticklabels=names,
        yticklabels=names,
    )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.tick_params(labelsize=7)
    ax.set_title(title, fontsize=10)
    return fig


def roc_figure(curves, names, title: str):
    """One-vs-rest ROC curve per class (`curves`: class index -> (fpr, tpr, auc))."""
    fig, ax = plt.subplots(figsize=(5.2, 4.4), layout="constrained")
    for i, (fpr, tpr, area) in sorted(curves.items()):
        ax.plot(fpr, tpr, lw=1, label=f"{names[i]} ({area:.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend(fontsize=6, loc="lower right")
    ax.set_title(title, fontsize=10)
    return fig


CURVE_AXES = {
    "slices_fraction": "share of each training specimen's slices used",
    "specimens_per_genus": "training specimens per genus (at most)",
}


def learning_curves_figure(points, backbone: str, title: str):
    """Test accuracy against training data: one panel per kind of subset.

    Parameters
    ----------
    points : sequence of dict
        ``kind`` (a key of ``CURVE_AXES``), ``value``, ``accuracy``,
        ``specimen_accuracy`` and optionally ``baseline_accuracy`` and
        ``baseline_specimen_accuracy`` (the learning-curve points of
        ``benchmarks/classification.py``).
    backbone : str
        The retrained backbone (legend).
    title : str

    Examples
    --------
    >>> pts = [dict(kind="slices_fraction", value=v, accuracy=a, specimen_accuracy=a)
    ...        for v, a in [(0.5, 0.3), (1.0, 0.4)]]
    >>> fig = learning_curves_figure(pts, "tiny_cnn", "t")
    >>> len(fig.axes)
    1
    >>> plt.close(fig)
    """
    kinds = [k for k in CURVE_AXES if any(p["kind"] == k for p in points)]
    unknown = {p["kind"] for p in points} - set(CURVE_AXES)
    if unknown or not kinds:
        raise ValueError(
            f"learning-curve kinds must be among {sorted(CURVE_AXES)}, got {sorted(unknown)}"
        )
    fig, axes = plt.subplots(
        1, len(kinds), figsize=(4.6 * len(kinds), 3.6), layout="constrained", squeeze=False
    )
    series = [
        ("accuracy", backbone, "C0", "-"),
        ("specimen_accuracy", f"{backbone}, per specimen", "C0", "--"),
        ("baseline_accuracy", "HOG + logistic regression", "C1", "-"),
        ("baseline_specimen_accuracy", "HOG + LR, per specimen", "C1", "--"),
    ]
    for ax, kind in zip(axes[0], kinds, strict=True):
        pts = sorted((p for p in points if p["kind"] == kind), key=lambda p: p["value"])
        x = [p["value"] for p in pts]
        for key, label, colour, style in series:
            if all(key in p for p in pts):
                ax.plot(x, [p[key] for p in pts], style, color=colour, marker="o", label=label)
        ax.set_xlabel(CURVE_AXES[kind])
        ax.set_xticks(x)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("test accuracy")
    axes[0, -1].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return fig


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Write `fig` to `path` atomically (format from the suffix) and close it."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path
