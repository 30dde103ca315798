"""Big query images: shrunk before the search, refused over the pixel limit.

A micro-CT lab's section images are often 2000–8000 pixels a side, while the search
compares the fossil on grids of at most 128 pixels. ``match`` therefore shrinks a query
to ``SearchTuning.query_max_side`` (1024) before anything else, and
``decode_upload``/``read_image`` refuse images over ``FORAM_MAX_IMAGE_MP`` (100
megapixels) from their header, before decoding them.

For a few held-out sections of the workspace's indexed specimens
(:func:`foramlib.matching.reliability.draw_query`), each case runs in a fresh process
(peak RSS is per process):

* ``native``: the section at its own size (about the index's resolution);
* ``4096_shrunk``: the same section enlarged to 4096 × 4096 (uint16, as a scanner
  exports it), searched as ``match`` does now;
* ``4096_full``: the same enlarged image with the shrink switched off
  (``query_max_side=8192``): what every stage paid before.

It records the seconds, peak RSS, the best specimen and its plane error against the
true plane. Then a 20000 × 20000 PNG is read the way ``foram match`` reads its input:
the time and memory its refusal takes.

    python benchmarks/large_query.py              # after `dvc repro index`
    python benchmarks/large_query.py --queries 1  # quick

Writes ``benchmarks/results/large_query.json`` naming the machine. The collection is
VIRTUAL: the numbers test the method, not real fossils.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from machine import machine, today  # noqa: E402

CASES = {"native": None, "4096_shrunk": 1024, "4096_full": 8192}
BIG = 4096


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one_case(case: str, query: int, index_dir: str, workspace: str, seed: int) -> dict:
    """Search query number `query` as `case`; runs inside its own process."""
    import cv2
    import numpy as np

    from foramlib.matching.index import load_collection
    from foramlib.matching.reliability import draw_query
    from foramlib.matching.search import SearchTuning, match, plane_error

    col = load_collection(index_dir, workspace)
    rng = np.random.default_rng([seed, query])
    sid = col.specimens["specimen_id"].iloc[int(rng.integers(len(col.specimens)))]
    truth, image, _ = draw_query(rng, col.volume(sid), col.prepared(sid))
    col.preload()  # reading the volumes is not the query's cost
    image = np.clip(image, 0.0, 1.0)
    if case == "native":
        query_image, tuning = (image * 65535).astype(np.uint16), SearchTuning()
    else:
        big = cv2.resize(image, (BIG, BIG), interpolation=cv2.INTER_CUBIC)
        query_image = (np.clip(big, 0.0, 1.0) * 65535).astype(np.uint16)
        tuning = SearchTuning(query_max_side=CASES[case])
        del big
    rss_before = _peak_rss_mb()
    t0 = time.perf_counter()
    found = match(col.index, query_image, volumes=col.volumes, top_k=1, tuning=tuning)
    seconds = time.perf_counter() - t0
    best = found[0]
    angle, offset = plane_error(truth.normal, best.normal, truth.offset, best.offset)
    return dict(
        case=case,
        query=query,
        specimen=sid,
        query_shape=list(query_image.shape),
        seconds=round(seconds, 2),
        peak_rss_mb=round(_peak_rss_mb(), 1),
        peak_rss_before_search_mb=round(rss_before, 1),
        best_specimen=best.specimen_id,
        right_specimen=best.specimen_id == sid,
        angle_error_deg=round(angle, 2),
        offset_error_vox=round(offset, 2),
        combined=round(best.scores["combined"], 4),
    )


def refusal(side: int) -> dict:
    """Read a `side` × `side` PNG as ``foram match`` reads its input."""
    import cv2
    import numpy as np

    from foramlib.matching.index import ImageError, read_image

    ok, png = cv2.imencode(".png", np.zeros((side, side), np.uint8))
    data = png.tobytes()
    rss_before = _peak_rss_mb()
    t0 = time.perf_counter()
    try:
        read_image(data, name=f"photo_{side}.png")
        said = None
    except ImageError as exc:
        said = str(exc)
    return dict(
        side=side,
        png_mb=round(len(data) / 2**20, 2),
        seconds=round(time.perf_counter() - t0, 4),
        peak_rss_growth_mb=round(_peak_rss_mb() - rss_before, 1),
        message=said,
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", default="data/index")
    ap.add_argument("--workspace", default=".")
    ap.add_argument("--queries", type=int, default=3)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", default="benchmarks/results/large_query.json")
    ap.add_argument("--case", help=argparse.SUPPRESS)  # one case, in a child process
    ap.add_argument("--query", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.case:
        print(json.dumps(one_case(args.case, args.query, args.index, args.workspace, args.seed)))
        return 0
    runs = []
    for q in range(args.queries):
        for case in CASES:
            cmd = [sys.executable, __file__, "--case", case, "--query", str(q),
                   "--index", args.index, "--workspace", args.workspace,
                   "--seed", str(args.seed)]  # fmt: skip
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(runs[-1], flush=True)
    by_case = {
        case: dict(
            seconds_median=float(sorted(r["seconds"] for r in rows)[len(rows) // 2]),
            peak_rss_mb_max=max(r["peak_rss_mb"] for r in rows),
            right_specimen=sum(r["right_specimen"] for r in rows),
            n=len(rows),
        )
        for case in CASES
        if (rows := [r for r in runs if r["case"] == case])
    }
    result = dict(
        what="a query image enlarged to 4096 px, searched shrunk (as now) and in full",
        machine=machine(),
        date=today(),
        load_average_at_start=[round(v, 2) for v in os.getloadavg()],
        settings=dict(queries=args.queries, seed=args.seed, big_side=BIG),
        summary=by_case,
        speedup_4096=round(
            by_case["4096_full"]["seconds_median"] / by_case["4096_shrunk"]["seconds_median"], 2
        ),
        runs=runs,
        refusal_20000=refusal(20000),
        note="virtual collection; one process per case; seconds are the search alone "
        "(volumes preloaded)",
    )
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(path)
    print(json.dumps(result["summary"], indent=1), result["speedup_4096"], result["refusal_20000"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
