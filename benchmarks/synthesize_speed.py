"""Time the generation of the default virtual collection (issue bar: <= 10 min, 2 cores).

Runs the ``synthesize`` stage's own code (``foramlib.pipeline.synthesize.run``). Writes
benchmarks/results/synthesize.json naming the machine. Usage:
    python benchmarks/synthesize_speed.py [--preset paper] [--shape 128] [--n-jobs 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from machine import machine, today  # noqa: E402

from foramlib.io.atomic import write_text  # noqa: E402
from foramlib.pipeline import synthesize  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--shape", type=int, default=128)
    parser.add_argument("--supersample", type=int, default=2)
    parser.add_argument("--n-jobs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "synthesize.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = synthesize.SynthesizeStageConfig(
            seed=args.seed,
            preset=args.preset,
            shape=args.shape,
            supersample=args.supersample,
            n_jobs=args.n_jobs,
            out_dir=str(Path(tmp) / "virtual"),
        )
        t0 = time.perf_counter()
        stage = synthesize.run(config, progress=None)
        seconds = time.perf_counter() - t0
        n_volumes = int(stage.taxa["volumes"].sum())
        size = sum(f.stat().st_size for f in (Path(tmp) / "virtual").iterdir())
    result = dict(
        benchmark="synthesize_collection",
        preset=args.preset,
        shape=args.shape,
        supersample=args.supersample,
        n_jobs=args.n_jobs,
        n_volumes=n_volumes,
        seconds=round(seconds, 1),
        seconds_per_volume=round(seconds / n_volumes, 2),
        megabytes=round(size / 1e6, 1),
        goal_seconds=600,
        meets_goal=seconds <= 600,
        machine=machine(),
        date=today(),
    )
    write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
