"""Figures of the pipeline, drawn with matplotlib and written atomically.

Plots are rendered to PNG files (the book shows them offline; no JavaScript plots).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from foramlib.atomic import atomic_path
from foramlib.volumes import normalize_intensity

__all__ = ["data_label", "orthogonal_views", "collection_figure", "save_figure"]


def data_label(source: str) -> str:
    """How figures name their data: virtual data is always called virtual.

    >>> data_label("virtual")
    'Virtual micro-CT collection (synthetic, not the paper\'s scans)'
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
    volumes : sequence of 3-D arrays
        One example volume per taxon.
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
        for j, img in enumerate(orthogonal_views(vol)):
            ax = fig.add_subplot(sub[j // 2, j % 2])
            ax.imshow(img.T, cmap="gray", vmin=0, vmax=1, origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_title(label, fontsize=9, loc="left", fontstyle="italic")
            ax.text(0.02, 0.02, names[j], color="yellow", fontsize=5, transform=ax.transAxes)
    fig.suptitle(title, fontsize=11)
    return fig


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Write `fig` to `path` atomically (format from the suffix) and close it."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path
