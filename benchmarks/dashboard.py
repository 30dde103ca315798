"""Dashboard latency: from uploaded bytes to the top-5, on this machine.

For the deployed ensemble (``results/metrics.json`` "final", loaded once with
:meth:`foramlib.inference.classify.Classifier.from_workspace` and warmed up), each of ~20 gallery
test slices is encoded as a PNG upload, then timed end to end: decode + preprocess
(:func:`foramlib.inference.classify.prepare`) + every member's prediction + the ensemble's
combination. The same slices are also timed as 1024×1024 16-bit TIFF scans (the
slice enlarged), where decoding and segmentation cost more. Grad-CAM is timed
separately (the page draws it after the top-5).

The paper profile's ensemble architecture (``profiles/paper.yaml``: its PatchEnsemble's
main and patch backbones at their input sizes) is built with ``weights=None`` — for
timing only: random weights, so its predictions mean nothing.

Resident memory (RSS) of the process is reported after the imports (TensorFlow) and
after loading each ensemble; the paper part runs in the same process after the deployed
part, so its own share is ``rss_mb_models``.

Writes benchmarks/results/dashboard.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).parent))
from machine import machine, today  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _rss_mb() -> float:
    return round(psutil.Process().memory_info().rss / 2**20, 1)


def _stats(seconds: list[float]) -> dict:
    a = np.asarray(seconds)
    return {
        "n": int(a.size),
        "p50_s": round(float(np.percentile(a, 50)), 4),
        "p95_s": round(float(np.percentile(a, 95)), 4),
        "max_s": round(float(a.max()), 4),
    }


def gallery_slices(workspace: Path, n: int) -> list[tuple[str, str, np.ndarray]]:
    """``n`` test slices spread over the genera: (slice_id, genus, uint8 image)."""
    import pandas as pd

    index = pd.read_csv(workspace / "data" / "split" / "index.csv", dtype={"slice_id": str})
    test = index[index["split"] == "test"].reset_index(drop=True)
    rows = test.iloc[np.linspace(0, len(test) - 1, n).round().astype(int)]
    out = []
    for r in rows.itertuples():
        arr = np.load(workspace / "data" / "slices" / r.array, mmap_mode="r")
        out.append((r.slice_id, r.species, np.array(arr[r.row])))
    return out


def time_uploads(clf, uploads: list[tuple[str, bytes]], cleaned: bool) -> tuple[list, list]:
    from foramlib.io.uploads import decode_upload

    seconds, genera = [], []
    for name, data in uploads:
        t0 = time.perf_counter()
        image = decode_upload(name, data)
        clean, info = clf.prepare(image, cleaned=cleaned, name=name)
        pred = clf.predict(clean, preprocessing=info)
        seconds.append(time.perf_counter() - t0)
        genera.append(pred.genus)
    return seconds, genera


def deployed(workspace: Path, n: int) -> dict:
    from foramlib.inference import classify

    rss0 = _rss_mb()
    t0 = time.perf_counter()
    clf = classify.Classifier.from_workspace(workspace)
    load_s = time.perf_counter() - t0
    rss_loaded = _rss_mb()
    t0 = time.perf_counter()
    clf.warm_up()
    warm_s = time.perf_counter() - t0
    slices = gallery_slices(workspace, n)
    pngs = [(f"{sid}.png", cv2.imencode(".png", img)[1].tobytes()) for sid, _, img in slices]
    # gallery slices are the stored test inputs: used as is with the training settings
    png_s, genera = time_uploads(clf, pngs, cleaned=True)
    scans = []
    for sid, _, img in slices:
        big = cv2.resize(img, (1024, 1024), interpolation=cv2.INTER_LINEAR).astype(np.uint16)
        scans.append((f"{sid}.tif", cv2.imencode(".tif", big * 257)[1].tobytes()))
    tif_s, _ = time_uploads(clf, scans, cleaned=False)
    cam = []
    for _, _, img in slices[:10]:
        t0 = time.perf_counter()
        clf.grad_cam(img)
        cam.append(time.perf_counter() - t0)
    correct = sum(g == truth for g, (_, truth, _) in zip(genera, slices, strict=True))
    return {
        "ensemble": clf.name,
        "members": list(clf.spec.members),
        "input_size": clf.input_sizes,
        "load_s": round(load_s, 2),
        "warm_up_s": round(warm_s, 2),
        "rss_mb_after_imports": rss0,
        "rss_mb_after_load": rss_loaded,
        "rss_mb_models": round(rss_loaded - rss0, 1),
        "rss_mb_after_runs": _rss_mb(),
        "upload_png_slice_to_top5": _stats(png_s),
        "upload_tiff_1024_16bit_to_top5": _stats(tif_s),
        "grad_cam": _stats(cam),
        "gallery_top1_correct": f"{correct}/{len(slices)}",
        "gallery_slices": [sid for sid, _, _ in slices],
    }


def paper_architecture(n: int) -> dict:
    """The paper profile's PatchEnsemble members, random weights, timed per slice."""
    import keras
    import yaml

    from foramlib.evaluation.ensemble import EnsembleSpec
    from foramlib.learn.models import build_model

    profile = yaml.safe_load((ROOT / "profiles" / "paper.yaml").read_text(encoding="utf-8"))
    backbones = profile["train"]["backbones"]
    main = profile["ensemble"].get("main") or next(iter(backbones))
    # the authors' patch model; the pipeline chooses its own on validation data
    patch = (
        "efficientnetv2_s"
        if "efficientnetv2_s" in backbones and main != "efficientnetv2_s"
        else (next(b for b in backbones if b != main))
    )
    n_classes = 12
    names = tuple(f"genus{i}" for i in range(n_classes))
    spec = EnsembleSpec("patch", (main, patch), names, main=main, patch=patch, weak=names[:2])
    size_pp = int(profile["slice"]["size"])
    rss0 = _rss_mb()
    t0 = time.perf_counter()
    models = {}
    for m in (main, patch):
        models[m] = build_model(
            m, input_size=int(backbones[m]["input_size"]), n_classes=n_classes, weights=None
        )
    build_s = time.perf_counter() - t0
    rss_loaded = _rss_mb()
    from foramlib.dataset.preprocess import PreprocessConfig
    from foramlib.inference import classify

    clf = classify.Classifier(spec, models, PreprocessConfig(size=size_pp), name="paper")
    rng = np.random.default_rng(0)
    uploads = []
    for i in range(n):
        img = np.zeros((size_pp, size_pp), np.uint8)
        cv2.ellipse(
            img,
            (size_pp // 2, size_pp // 2),
            (size_pp // 3, size_pp // 4),
            int(rng.integers(0, 180)),
            0,
            360,
            int(rng.integers(120, 250)),
            -1,
        )
        uploads.append((f"synthetic{i}.png", cv2.imencode(".png", img)[1].tobytes()))
    clf.warm_up()
    seconds, _ = time_uploads(clf, uploads, cleaned=False)
    out = {
        "note": "architecture only: weights=None (random), timing and memory only",
        "members": {m: int(backbones[m]["input_size"]) for m in (main, patch)},
        "build_s": round(build_s, 2),
        "rss_mb_before_build": rss0,
        "rss_mb_after_build": rss_loaded,
        "rss_mb_models": round(rss_loaded - rss0, 1),
        "upload_png_to_top5": _stats(seconds),
        "keras_backend": keras.backend.backend(),
    }
    del clf, models
    gc.collect()
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workspace", default=str(ROOT))
    ap.add_argument("--slices", type=int, default=20)
    ap.add_argument("--skip-paper", action="store_true", help="skip the paper-profile part")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "dashboard.json"))
    args = ap.parse_args(argv)

    import keras

    keras.utils.set_random_seed(0)
    result = {
        "benchmark": "dashboard",
        "date": today(),
        "machine": machine(),
        "settings": {"slices": args.slices, "workspace": "the local quick-profile run"},
        "goal": "upload to top-5 within 1 s (p95) for the deployed ensemble",
        "deployed": deployed(Path(args.workspace), args.slices),
    }
    if not args.skip_paper:
        result["paper_architecture"] = paper_architecture(args.slices)
    from foramlib.io.atomic import write_text

    write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
