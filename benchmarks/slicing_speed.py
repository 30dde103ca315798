"""Oblique slicing speed: direct plane sampling vs whole-volume rotation, in one run.

For one virtual volume, the same oblique sections are produced two ways:
(a) ``foramlib.dataset.slicing.extract_slices`` (trilinear sampling of each plane), and
(b) the approach of rotating the whole volume with ``scipy.ndimage.rotate`` (two
    rotations per orientation, order 1) and then taking axis slices at the offsets.
Both outputs are compared for agreement. Goal: (a) >= 5x faster than (b).
Optionally (--collection DIR) it also times building the slice store of a curated
collection (goal: the default virtual collection in <= 10 min on 2 cores).

Writes benchmarks/results/slicing_speed.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).parent))
from machine import machine, today  # noqa: E402

from foramlib.dataset import curation, slicing  # noqa: E402
from foramlib.dataset.preprocess import PreprocessConfig  # noqa: E402
from foramlib.dataset.slicing import Plane  # noqa: E402
from foramlib.io.atomic import write_text  # noqa: E402
from foramlib.virtual import collection as virtual  # noqa: E402


def rotation_baseline(vol, angles, offsets):
    """Sections by rotating the whole volume (about axes 0 then 1) and slicing axis 2."""
    out = []
    c = vol.shape[2] // 2
    for a, b in angles:
        rot = ndimage.rotate(vol, a, axes=(1, 2), reshape=False, order=1, mode="nearest")
        rot = ndimage.rotate(rot, b, axes=(0, 2), reshape=False, order=1, mode="nearest")
        out.extend(rot[:, :, int(round(c + off))] for off in offsets)
    return np.stack(out)


def planes_for(angles, offsets):
    """The same planes as rotation_baseline, as normals in the unrotated volume."""
    planes = []
    for a, b in angles:
        # normal of the axis-2 slice after the two rotations, mapped back
        n = np.array([0.0, 0.0, 1.0])
        rb, ra = np.deg2rad(b), np.deg2rad(a)
        n = np.array(
            [n[0] * np.cos(rb) + n[2] * np.sin(rb), n[1], -n[0] * np.sin(rb) + n[2] * np.cos(rb)]
        )
        n = np.array(
            [n[0], n[1] * np.cos(ra) + n[2] * np.sin(ra), -n[1] * np.sin(ra) + n[2] * np.cos(ra)]
        )
        planes.extend(Plane(tuple(n), float(off), 0.0) for off in offsets)
    return planes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, default=128)
    parser.add_argument("--orientations", type=int, default=12)
    parser.add_argument("--offsets", type=int, default=4)
    parser.add_argument("--collection", help="raw_dir of a curated collection to slice")
    parser.add_argument("--curated", default="data/curated/manifest.csv")
    parser.add_argument("--slices-per-taxon", type=int, default=600)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--n-jobs", type=int, default=2)
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "slicing_speed.json")
    )
    args = parser.parse_args()

    plan = virtual.plan_collection(virtual.paper_taxa(), seed=1)[0]
    vol, _ = virtual.render_scan(plan, shape=args.shape)
    rng = np.random.default_rng(0)
    angles = [tuple(rng.uniform(10, 80, 2)) for _ in range(args.orientations)]
    offsets = np.linspace(-args.shape / 6, args.shape / 6, args.offsets)
    n = len(angles) * len(offsets)

    t0 = time.perf_counter()
    base = rotation_baseline(vol, angles, offsets)
    t_rot = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours = slicing.extract_slices(vol, planes_for(angles, offsets), size=args.shape)
    t_ours = time.perf_counter() - t0
    # agreement on the central part (the two methods orient the in-plane axes differently,
    # so compare intensity statistics, not pixels)
    agree = float(np.corrcoef(np.sort(base.ravel()), np.sort(ours.ravel()))[0, 1])

    result = dict(
        benchmark="oblique slicing",
        volume_shape=args.shape,
        sections=n,
        ours_seconds=round(t_ours, 3),
        ours_slices_per_s=round(n / t_ours, 1),
        rotation_seconds=round(t_rot, 3),
        rotation_slices_per_s=round(n / t_rot, 1),
        speedup=round(t_rot / t_ours, 1),
        goal_speedup=5.0,
        meets_goal=t_rot / t_ours >= 5,
        intensity_distribution_correlation=round(agree, 4),
    )
    if args.collection:
        manifest = curation.read_curated(args.curated, args.collection)
        config = slicing.SlicingConfig(
            slices_per_taxon=args.slices_per_taxon, preprocess=PreprocessConfig(size=args.size)
        )
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            index = slicing.build_slice_store(
                manifest, Path(tmp) / "s", config, n_jobs=args.n_jobs, progress=None
            )
            secs = time.perf_counter() - t0
        result["collection"] = dict(
            volumes=len(manifest),
            slices=len(index),
            slices_per_taxon=args.slices_per_taxon,
            size=args.size,
            n_jobs=args.n_jobs,
            seconds=round(secs, 1),
            goal_seconds=600,
            meets_goal=secs <= 600,
        )
    result.update(machine=machine(), date=today())
    write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
