"""A large micro-CT scan, read at the working resolution: peak memory and time.

Writes a synthetic uint16 scan (a shell with walls and chambers in noise, ``--side``
voxels along each edge, 1024 by default; ``--side 2048`` for the 16 GB case) as an
uncompressed NIfTI file and as a TIFF stack, **streamed plane by plane** so that writing
it needs no more memory than reading it. Then, each in a fresh process (peak RSS is
per process):

* ``read``: :func:`foramlib.io.volumes.read_volume` with ``max_side`` (512 by default):
  the scan binned by blocks while it is read, slab by slab;
* ``read+slice``: the same, then 48 sections cut by the slice stage's slicer
  (:func:`foramlib.dataset.slicing.slice_array`) from the binned volume;
* ``read+index``: the same, then the volume indexed for 3D matching
  (:func:`foramlib.matching.search.build_index`, the quick profile's 200 orientations ×
  7 offsets of 64-px sections), as the ``index`` stage does for each specimen;
* ``upload``: the file's bytes decoded as the dashboard decodes an upload
  (:func:`foramlib.io.uploads.decode_upload`, binned to ``--max-side`` as it is read,
  a gzipped file included; the bytes themselves count in the peak);
  ``upload-whole`` (only if asked for in ``--tasks``) decodes it unbinned, as the
  dashboard did before, for comparison;
* ``whole`` (only with ``--whole``): the scan read whole, as every stage reads a volume
  today, for comparison.

The stages that read volumes (curate, slice, index) read them this way, with
``data.max_side``; this measures what they do with one volume (curate's checks are
the read), not the whole stages.

    python benchmarks/large_volume.py                 # 1024^3 (2 GB per file)
    python benchmarks/large_volume.py --side 2048     # 16 GB per file; needs ~35 GB of disk
    python benchmarks/large_volume.py --side 512 --whole --formats nii   # quick
    python benchmarks/large_volume.py --formats nii.gz tif --tasks read upload upload-whole \
        --out benchmarks/results/large_upload.json      # dashboard uploads of a 1024^3 scan

Writes ``benchmarks/results/large_volume.json`` naming the machine. The scan is
synthetic (virtual), not a real fossil.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from machine import machine, today  # noqa: E402

from foramlib.io.atomic import write_text  # noqa: E402

VOXEL_UM = 2.5


def plane(side: int, z: int, rng: np.random.Generator) -> np.ndarray:
    """Plane z (y, x) of the synthetic scan: an oblate shell with a wall, concentric
    chamber walls and a pore, in mounting medium with noise; uint16."""
    c = (side - 1) / 2
    y, x = np.ogrid[:side, :side]
    u, v, w = (x - c) / (0.36 * side), (y - c) / (0.30 * side), (z - c) / (0.22 * side)
    r = np.sqrt(u * u + v * v + w * w)
    img = 1200.0 + 250.0 * rng.standard_normal((side, side))
    inside = r < 1.0
    img[inside] += 9000.0
    img[inside & (r > 0.9)] += 22000.0  # the outer wall
    walls = inside & (np.abs(np.sin(9 * np.pi * r)) < 0.12)  # chamber walls
    img[walls] += 15000.0
    img[(np.hypot(u - 0.3, v) < 0.08) & inside] = 1200.0  # a pore
    return np.clip(img, 0, 65535).astype(np.uint16)


def write_scan(folder: Path, side: int, formats: list[str], seed: int = 0) -> dict:
    """The scan in each format, one plane at a time; their paths and seconds."""
    import nibabel as nib
    import tifffile

    out = {}
    for fmt in ("nii", "nii.gz"):
        if fmt not in formats:
            continue
        t0 = time.perf_counter()
        path = folder / f"scan.{fmt}"
        header = nib.Nifti1Header()
        header.set_data_shape((side, side, side))
        header.set_data_dtype(np.uint16)
        header.set_zooms((VOXEL_UM / 1000,) * 3)
        header.set_xyzt_units("mm")
        header.set_qform(np.diag([VOXEL_UM / 1000] * 3 + [1.0]), code=1)
        header.set_sform(np.diag([VOXEL_UM / 1000] * 3 + [1.0]), code=1)
        header["vox_offset"] = 352
        rng = np.random.default_rng(seed)
        opener = gzip.open(path, "wb", compresslevel=1) if fmt == "nii.gz" else open(path, "wb")
        with opener as fh:
            header.write_to(fh)
            fh.write(b"\0" * (352 - fh.tell()))
            for z in range(side):  # NIfTI: x fastest, z slowest, so plane by plane
                fh.write(plane(side, z, rng).tobytes())
        out[fmt] = {"path": str(path), "seconds": round(time.perf_counter() - t0, 1)}
    if "tif" in formats:
        t0 = time.perf_counter()
        path = folder / "scan.tif"
        rng = np.random.default_rng(seed)
        with tifffile.TiffWriter(path, bigtiff=True) as tif:
            for z in range(side):
                tif.write(plane(side, z, rng), contiguous=True)
        out["tif"] = {"path": str(path), "seconds": round(time.perf_counter() - t0, 1)}
    for item in out.values():
        item["gigabytes"] = round(Path(item["path"]).stat().st_size / 2**30, 2)
    return out


CHILD = r"""
import json, resource, sys, time
import numpy as np
from foramlib.io.volumes import read_volume
path, task, max_side = sys.argv[1], sys.argv[2], int(sys.argv[3])
voxel = None if path.endswith((".nii", ".nii.gz")) else float(sys.argv[4])
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
if task in ("upload", "upload-whole"):
    from pathlib import Path
    from foramlib.io.uploads import decode_upload
    data = Path(path).read_bytes()
    side = None if task == "upload-whole" else max_side
    vol = decode_upload(Path(path).name, data, max_bytes=None, volume_max_side=side)
    del data
else:
    vol = read_volume(path, voxel_size_um=voxel, max_side=None if task == "whole" else max_side)
out = {"read_seconds": round(time.perf_counter() - t0, 2), "shape": list(vol.data.shape),
       "binned": vol.binned, "voxel_size_um": vol.voxel_size_um}
if task == "read+slice":
    from foramlib.dataset.slicing import SlicingConfig, slice_array
    t0 = time.perf_counter()
    images, rows, stats = slice_array(vol.data, 48, SlicingConfig(), 0, name="scan")
    out.update(slice_seconds=round(time.perf_counter() - t0, 2), sections=len(images),
               candidates=int(stats["candidates"]))
if task == "read+index":
    from foramlib.dataset.preprocess import PreprocessConfig
    from foramlib.matching.search import IndexConfig, build_index
    config = IndexConfig(n_orientations=200, n_offsets=7, descriptor_size=32,
                         preprocess=PreprocessConfig(size=64))
    t0 = time.perf_counter()
    index = build_index([("scan", "virtual", vol.data)], config)
    out.update(index_seconds=round(time.perf_counter() - t0, 2), indexed=len(index))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out.update(peak_rss_gb=round(peak / 2**20, 3), after_imports_rss_gb=round(base / 2**20, 3))
print(json.dumps(out))
"""


def measure(path: str, task: str, max_side: int) -> dict:
    """One task in a fresh Python process; its JSON line."""
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, path, task, str(max_side), str(VOXEL_UM)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=1024, help="voxels along each edge")
    parser.add_argument("--max-side", type=int, default=512, help="read_volume's max_side")
    parser.add_argument(
        "--formats", nargs="+", default=["nii", "tif"], choices=["nii", "nii.gz", "tif"]
    )
    parser.add_argument(
        "--tasks",
        nargs="+",
        default=["read", "read+slice", "read+index", "upload"],
        choices=["read", "read+slice", "read+index", "upload", "upload-whole", "whole"],
    )
    parser.add_argument("--whole", action="store_true", help="also read the scan whole")
    parser.add_argument("--dir", default=None, help="where to write the scan (default: a temp dir)")
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "large_volume.json")
    )
    args = parser.parse_args()
    if args.side < 64 or args.max_side < 16:
        raise SystemExit(
            f"--side must be >= 64 and --max-side >= 16, got {args.side}, {args.max_side}"
        )
    result = {
        "what": "a synthetic (virtual) uint16 micro-CT scan read at the working resolution",
        "machine": machine(),
        "date": today(),
        "side": args.side,
        "max_side": args.max_side,
        "goal": "peak RSS <= 4 GB for a 2048^3 scan",
        "note": "what the stages do with one volume (with data.max_side), not whole stages",
    }
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        files = write_scan(Path(tmp), args.side, args.formats)
        result["files"] = {
            k: {kk: v for kk, v in f.items() if kk != "path"} for k, f in files.items()
        }
        print("written", result["files"], flush=True)
        tasks = list(args.tasks) + (["whole"] if args.whole and "whole" not in args.tasks else [])
        for fmt, f in files.items():
            for task in tasks:
                row = measure(f["path"], task, args.max_side)
                result.setdefault("runs", {}).setdefault(fmt, {})[task] = row
                print(fmt, task, row, flush=True)
    write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
