"""Command line: ``foram run|profile|book|index|match|classify|deps``.

Run as ``foram ...`` once installed (``foramlib ...`` is the same program), or
``python -m foramlib.tools.cli ...``. ``foram match IMAGE`` prints where a section image
sits in the indexed specimen volumes (build the index with ``dvc repro index``).
``foram classify SCAN`` names the genus of a whole scan (NIfTI, TIFF stack, folder of
slices) from many sections, or of one section image. ``foram deps`` checks that
every stage of ``dvc.yaml`` lists the code it runs and the params it reads.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

__all__ = ["main"]


# data.max_side's default: volumes wider than this are binned as they are read
DEFAULT_MAX_SIDE = 512


def _profile(args: argparse.Namespace) -> int:
    from foramlib.config import available_profiles, use_profile

    if args.name is None:
        print("available profiles:", ", ".join(available_profiles(args.profiles_dir)))
        return 0
    path = use_profile(args.name, args.params, args.profiles_dir)
    print(f"{path} now holds the {args.name!r} profile; `dvc repro` will rerun what it changes.")
    return 0


def _run(args: argparse.Namespace) -> int:
    from foramlib.tools.stages import run_from_arguments

    return run_from_arguments(args)


def _book(args: argparse.Namespace) -> int:
    from foramlib.tools.book import build_book

    index = build_book(args.book_dir, strict=not args.no_strict)
    print(f"book built: {index}")
    return 0


def _index_config(args: argparse.Namespace):
    """The index stage's settings from params.yaml (when there is one), then the flags."""
    import dataclasses

    from foramlib.config import load_params
    from foramlib.dataset.preprocess import PreprocessConfig
    from foramlib.matching.search import IndexConfig

    if args.params is None and Path("params.yaml").is_file():
        args.params = "params.yaml"
    if args.params is None:  # outside a project: the library's (paper profile's) defaults
        config, source = IndexConfig(), "IndexConfig defaults (no params.yaml here)"
        max_side = DEFAULT_MAX_SIDE
    else:
        params = load_params(args.params)
        config, source = IndexConfig.from_params(params), args.params
        max_side = params.get("data", {}).get("max_side", DEFAULT_MAX_SIDE)
    if args.max_side is not None:
        max_side = args.max_side
    flags = dict(n_orientations=args.orientations, n_offsets=args.offsets)
    config = dataclasses.replace(config, **{k: v for k, v in flags.items() if v is not None})
    if args.size is not None:
        config = dataclasses.replace(config, preprocess=PreprocessConfig(size=args.size))
    return config, source, max_side


def _index(args: argparse.Namespace) -> int:
    from foramlib.matching.index import META_FILE, build_collection_index

    config, source, max_side = _index_config(args)
    print(
        f"{config.n_orientations} orientations x {config.n_offsets} offsets per specimen, "
        f"{config.preprocess.size} px sections (settings: {source})",
        flush=True,
    )
    t0 = time.perf_counter()
    out = build_collection_index(
        args.manifest,
        args.raw_dir,
        args.out,
        config,
        max_side=max_side,
        progress=lambda fraction, message: print(f"[{fraction:4.0%}] {message}", flush=True),
    )
    meta = json.loads((out / META_FILE).read_text(encoding="utf-8"))
    print(
        f"index of {meta['candidates']} candidate sections of {meta['specimens']} specimens "
        f"written to {out} ({meta['index_bytes'] / 1e6:.1f} MB) in "
        f"{time.perf_counter() - t0:.1f} s"
    )
    return 0


SCORE_COLUMNS = ("dice", "ncc", "texture", "ssim", "combined")


def format_matches(matches) -> str:
    """A plain-text table of matches, best first.

    Examples
    --------
    >>> import numpy as np
    >>> from foramlib.matching.search import Match
    >>> s = dict(dice=0.91, ncc=0.8, texture=0.6, ssim=0.7, descriptor=0.95, combined=0.84)
    >>> m = Match("V-ORBI-01", "Orbitoides", (0.0, 0.6, 0.8), -3.25, 42.0, s, np.zeros((2, 2)))
    >>> print(format_matches([m]))  # doctest: +NORMALIZE_WHITESPACE
    rank  specimen   genus       normal                 offset  angle
        dice    ncc  texture   ssim  combined
       1  V-ORBI-01  Orbitoides  (0.000, 0.600, 0.800)    -3.2   42.0
        0.910  0.800    0.600  0.700     0.840
    """
    rows = [
        (
            str(rank),
            m.specimen_id,
            m.species,
            "(" + ", ".join(f"{v:.3f}" for v in m.normal) + ")",
            f"{m.offset:.1f}",
            f"{m.angle_deg:.1f}",
            *(f"{m.scores.get(k, float('nan')):.3f}" for k in SCORE_COLUMNS),
        )
        for rank, m in enumerate(matches, start=1)
    ]
    head = ("rank", "specimen", "genus", "normal", "offset", "angle")
    head += SCORE_COLUMNS
    left = {1, 2, 3}  # text columns
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def line(cells) -> str:
        return "  ".join(
            c.ljust(w) if i in left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(head), *(line(r) for r in rows)])


def _match_check(args: argparse.Namespace):
    """The workspace's match limit (``calibrate_match`` stage) and, without one, why."""
    from foramlib.matching.reliability import load_match_check

    if args.no_refine or args.time_budget == 0:  # a zero budget registers nothing either
        return None, "no reliability verdict: the limit is set on refined matches"
    path = Path(args.match_check or Path(args.workspace) / "results" / "match_check.json")
    check = load_match_check(path)
    if check is None:
        return None, f"no reliability verdict: {path} is missing (`dvc repro calibrate_match`)"
    if args.margin_keep is not None:
        from foramlib.matching.reliability import MatchCheckError

        try:
            check = check.with_margin_keep(args.margin_keep)
        except MatchCheckError as err:
            raise MatchCheckError(f"--margin-keep with {path}: {err}") from None
    return check, None


def _match(args: argparse.Namespace) -> int:
    from foramlib.dataset.preprocess import PreprocessError
    from foramlib.inference.classify import section_refusal
    from foramlib.matching.index import load_collection, read_image
    from foramlib.matching.search import READINGS, MatchError, match

    image = read_image(args.image)
    t0 = time.perf_counter()
    collection = load_collection(args.index, args.workspace)
    t_load = time.perf_counter() - t0
    try:
        found = match(
            collection.index,
            image,
            top_k=args.top_k,
            specimens=args.specimens,
            species=args.species,
            refine=not args.no_refine,
            volumes=collection.volumes,
            time_budget_s=args.time_budget,
        )
    except (MatchError, PreprocessError) as exc:
        raise type(exc)(f"{args.image}: {exc}") from None
    t_match = time.perf_counter() - t0 - t_load
    check, check_note = _match_check(args)
    verdict = other = None
    t1 = time.perf_counter()
    note = section_refusal(image, args.workspace)
    if check and found and note:  # a photo or noise may fit; it places nothing
        from foramlib.matching.reliability import not_a_section_verdict

        verdict = not_a_section_verdict(check.verdict(found[0].scores["combined"]), note)
    elif check and found and args.no_specimen_check:
        verdict = check.verdict(found[0].scores["combined"])
    elif check and found:  # a reliable match is compared with the other specimens too
        from foramlib.matching.reliability import specimen_verdict

        verdict, other = specimen_verdict(
            check,
            collection.index,
            image,
            found[0],
            volumes=collection.volumes,
            specimens=args.specimens,
            species=args.species,
            time_budget_s=args.time_budget,
        )
    t_other = time.perf_counter() - t1
    if note:  # on stderr: the JSON on stdout keeps its shape
        print(f"NOT A FORAMINIFER SECTION? {note}; these are the closest sections anyway",
              file=sys.stderr)  # fmt: skip
    if args.json:
        out = [
            dict(
                rank=rank,
                specimen_id=m.specimen_id,
                genus=m.species,
                normal=[round(v, 6) for v in m.normal],
                offset=round(m.offset, 4),
                angle_deg=round(m.angle_deg, 3),
                scores={k: round(v, 6) for k, v in m.scores.items()},
                reading=m.reading,
                # null: no calibrated limit (or an unrefined search, not comparable)
                reliable=None
                if check is None
                else not note and m.scores["combined"] >= check.threshold,
                # the section check's answer (null: the workspace has none, or the image
                # passes): why it does not look like a foraminifer section
                not_a_section=note,
                # the best match only: does its specimen fit clearly better than any other
                # (null: not checked); and the best match among the other specimens
                specimen_sure=verdict.specimen_sure if rank == 1 and verdict else None,
                runner_up=None
                if rank > 1 or other is None
                else dict(
                    specimen_id=other.specimen_id,
                    genus=other.species,
                    combined=round(other.scores["combined"], 6),
                    margin=round(verdict.margin, 6),
                ),
            )
            for rank, m in enumerate(found, start=1)
        ]
        print(json.dumps(out, indent=2))
    else:
        print(
            f"{args.image}: top {len(found)} of {len(collection.index)} candidate sections "
            f"({len(collection.specimens)} specimens); index loaded in {t_load:.1f} s, "
            f"matched in {t_match:.1f} s"
            + (f" (+ {t_other:.1f} s comparing the other specimens)" if other else "")
        )
        print(format_matches(found))
        if found and found[0].reading != READINGS[0].name:
            print(
                f"note: the image as given matched weakly; these matches are for another "
                f"reading of it: {found[0].reading}"
            )
        if verdict is not None:
            print(("reliable match: " if verdict.reliable else "NO RELIABLE MATCH: ")
                  + verdict.message.removeprefix("no reliable match: "))  # fmt: skip
            if verdict.specimen_sure is False:
                from foramlib.matching.reliability import genus_note

                print(f"note: {genus_note(found[0].species, other.species)}")
        elif check_note:
            print(f"note: {check_note}")
    if args.save_figure and found:
        from foramlib.dataset.slicing import Plane
        from foramlib.io.atomic import atomic_path
        from foramlib.viz.view3d import plane_figure

        best = found[0]
        fig = plane_figure(
            collection.volume(best.specimen_id),
            Plane(best.normal, best.offset, best.angle_deg),
            title=f"best match: {best.specimen_id} ({best.species})",
            section=[("query", image), ("matched section", best.image)],
        )
        path = Path(args.save_figure)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format=path.suffix.lstrip(".") or "png")
        print(f"3D view of the best match written to {path}", file=sys.stderr)
    return 0


def _is_scan(path: Path) -> bool:
    """A volume (classified from many sections) rather than one section image."""
    if path.is_dir() or path.name.lower().endswith((".nii", ".nii.gz", ".nrrd", ".nhdr")):
        return True
    if path.name.lower().endswith((".tif", ".tiff")) and path.is_file():
        import tifffile

        try:  # the pages' layout from the headers, without decoding a pixel
            with tifffile.TiffFile(path) as tif:
                shape = tuple(s for s in tif.series[0].shape if s != 1)
        except Exception:  # unreadable here: the image reader says why
            return False
        return len(shape) == 3 and shape[-1] not in (3, 4)
    return False


def _classify(args: argparse.Namespace) -> int:
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter
    from foramlib.inference.classify import ArtefactError, Classifier
    from foramlib.inference.scan import (
        LoadedScan,
        calibrate_specimens,
        classify_scan,
        format_answer,
        load_scan,
        slicing_defaults,
    )
    from foramlib.io.atomic import write_csv

    path = Path(args.scan)
    if not path.exists():
        raise FileNotFoundError(f"{args.scan}: no such file or folder")
    loaded = None
    if _is_scan(path):  # read before any model loads: a bad scan fails at once, alone
        loaded = LoadedScan(*load_scan(path, voxel_size_um=args.voxel_size))
    classifier = Classifier.from_workspace(args.workspace, args.ensemble)
    if loaded is None:
        from foramlib.inference.classify import prepare_upload
        from foramlib.matching.index import read_image

        # an exported stored slice is classified as it is; anything else is preprocessed
        cleaned, info = prepare_upload(read_image(path), classifier.preprocess, name=str(path))
        pred = classifier.predict(cleaned, preprocessing=info)
        section = None if pred.section is None else pred.section.as_dict()
        if args.json:
            out = dict(
                image=str(path),
                preprocessing=info["source"],  # "stored slice": classified as it is
                genus=pred.genus,
                confidence=round(pred.confidence, 6),
                uncertain=pred.uncertain,
                section_check=section,  # null: the workspace has no section check
                genus_check=None if pred.novelty is None else pred.novelty.as_dict(),
                maybe_unknown_genus=pred.maybe_unknown_genus,
                top5=[[g, round(p, 6)] for g, p in pred.top5],
            )
            print(json.dumps(out, indent=2))
        else:
            flag = "  UNCERTAIN (under the threshold calibrated on validation)" * pred.uncertain
            how = "a stored slice, as it is" if info["source"] == "stored slice" else "preprocessed"
            print(f"{path}: one section ({how}); {classifier.name}{flag}")
            if pred.not_a_section:
                print(f"NOT A FORAMINIFER SECTION? {pred.section.message}")
                print("the genera below are what the models say anyway; do not trust them")
            elif pred.maybe_unknown_genus:
                print(f"NOT ONE OF THESE GENERA? {pred.novelty.message}")
            for rank, (genus, prob) in enumerate(pred.top5, start=1):
                print(f"{rank:>4}  {genus:<20} {prob:.3f}")
        return 0
    config, source = slicing_defaults(args.workspace)
    try:
        calibration = calibrate_specimens(classifier.spec, Path(args.workspace) / "models")
    except ArtefactError as exc:
        print(f"note: no specimen-level calibration ({exc})", file=sys.stderr)
        calibration = None
    answer = classify_scan(
        classifier,
        loaded,
        n_sections=args.sections,
        seed=args.seed,
        slicing=config,
        calibration=calibration,
        voxel_size_um=args.voxel_size,
    )
    answer.metadata["slicing_source"] = source
    if args.sections_csv:
        frame = answer.sections.copy()
        for i, name in enumerate(classifier.names):
            frame[f"p_{name}"] = answer.probabilities[:, i].round(6)
        write_csv(frame, args.sections_csv)
        print(f"per-section table written to {args.sections_csv}", file=sys.stderr)
    if args.json:
        print(json.dumps(answer.as_dict(top=args.top_k), indent=2))
    else:
        print(format_answer(answer, top=args.top_k))
        if answer.metadata.get("assumed_isotropic"):
            print("note: no --voxel-size given for a TIFF stack; voxels taken as isotropic")
        if answer.metadata.get("read_level"):
            print(
                f"note: read at level {answer.metadata['read_level']} of the OME-Zarr "
                "pyramid (the coarsest still wide enough for the sections)"
            )
        if answer.metadata.get("binned"):
            f = answer.metadata["binned"]
            print(
                f"note: a large scan, read averaged by blocks of {f}×{f}×{f} voxels (still "
                "wide enough for the sections)"
            )
    return 0


def _deps(args: argparse.Namespace) -> int:
    from foramlib.tools.stagedeps import check_dvc_yaml, fix_dvc_yaml

    if args.fix:
        fixed, problems = fix_dvc_yaml(args.root)
        for problem in fixed:
            print(f"fixed: {problem}")
    else:
        problems = check_dvc_yaml(args.root)
    for problem in problems:
        print(problem)
    if problems:
        print(f"{len(problems)} problem(s) in {Path(args.root) / 'dvc.yaml'}", file=sys.stderr)
        return 1
    print(f"{Path(args.root) / 'dvc.yaml'}: every stage lists the code and params it uses")
    return 0


def _params(args: argparse.Namespace) -> int:
    from foramlib import config, pipeline

    try:
        params = config.load_params(args.params)  # each value against the schema
    except config.ParamsError as err:
        for problem in err.problems:
            print(problem, file=sys.stderr)
        print(f"{len(err.problems)} problem(s) in {args.params}", file=sys.stderr)
        return 1
    problems = pipeline.check_params(params)  # each stage module configured from them
    for problem in problems:
        print(f"{args.params}: {problem}", file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s) in {args.params}", file=sys.stderr)
        return 1
    print(f"{args.params}: valid; stages configured: {', '.join(pipeline.STAGES)}")
    return 0


def _prog() -> str:
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    return "foramlib" if name == "foramlib" else "foram"


def main(argv: list[str] | None = None) -> int:
    """Parse `argv` and run the chosen command; errors print one line and exit 2."""
    parser = argparse.ArgumentParser(prog=_prog(), description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    r = sub.add_parser(
        "run", help="execute a stage notebook with papermill, atomically (as the stages do)"
    )
    from foramlib.tools.stages import add_run_arguments

    add_run_arguments(r)
    r.set_defaults(func=_run)

    p = sub.add_parser("profile", help="make a kept profile the active params.yaml")
    p.add_argument("name", nargs="?", help="profile name (omit to list them)")
    p.add_argument("--params", default="params.yaml", help="active parameter file")
    p.add_argument("--profiles-dir", default="profiles", help="folder of kept profiles")
    p.set_defaults(func=_profile)

    b = sub.add_parser("book", help="build the Jupyter Book from the pipeline's products")
    b.add_argument("--book-dir", default="book")
    b.add_argument("--no-strict", action="store_true", help="do not turn warnings into errors")
    b.set_defaults(func=_book)

    i = sub.add_parser("index", help="build the 3D matching index of a curated collection")
    i.add_argument("--manifest", default="data/curated/manifest.csv", help="curated manifest")
    i.add_argument("--raw-dir", default="data/virtual", help="folder holding the volumes")
    i.add_argument("--out", default="data/index", help="index folder (replaced atomically)")
    i.add_argument(
        "--params",
        help="parameter file whose match and slice sections set the index "
        "(default: ./params.yaml when present, as `dvc repro index` uses)",
    )
    i.add_argument("--orientations", type=int, help="plane normals (match.n_orientations)")
    i.add_argument("--offsets", type=int, help="parallel planes per normal (match.n_offsets)")
    i.add_argument("--size", type=int, help="side of the stored sections in px (match.size)")
    i.add_argument(
        "--max-side",
        type=int,
        help="bin larger volumes as they are read, to the coarsest size still this wide "
        f"(data.max_side; default {DEFAULT_MAX_SIDE})",
    )
    i.set_defaults(func=_index)

    m = sub.add_parser("match", help="where does a section image sit in the specimen volumes?")
    m.add_argument("image", help="the section image (PNG, JPEG, TIFF incl. 16-bit, BMP, ...)")
    m.add_argument("--index", default="data/index", help="index folder (`dvc repro index`)")
    m.add_argument("--workspace", default=".", help="folder the index's volume paths start in")
    m.add_argument("--top-k", type=int, default=5, help="number of matches printed")
    m.add_argument("--species", nargs="+", metavar="GENUS", help="search only these genera")
    m.add_argument("--specimens", nargs="+", metavar="ID", help="search only these specimens")
    m.add_argument("--no-refine", action="store_true", help="skip the 3D refinement")
    m.add_argument("--time-budget", type=float, metavar="S", help="skip refinement after S s")
    m.add_argument("--json", action="store_true", help="print the matches as JSON")
    m.add_argument(
        "--match-check",
        metavar="PATH",
        help="the match limit (default: WORKSPACE/results/match_check.json)",
    )
    m.add_argument(
        "--margin-keep",
        type=float,
        metavar="SHARE",
        help="set the specimen margin's limit to keep this share of the calibration's "
        "margins (lower: 'maybe a specimen not in the collection' more often; default: "
        "the calibrated limit)",
    )
    m.add_argument(
        "--no-specimen-check",
        action="store_true",
        help="skip the second search, among the other specimens, that tells whether the best "
        "match's specimen is clear (about doubles the time)",
    )
    m.add_argument("--save-figure", metavar="PATH", help="write a 3D view of the best match")
    m.set_defaults(func=_match)

    c = sub.add_parser(
        "classify", help="name the genus of a whole scan (many sections) or of one section"
    )
    c.add_argument(
        "scan", help="NIfTI, NRRD, TIFF stack, folder of slices (TIFF/PNG/BMP), or an image"
    )
    c.add_argument("--workspace", default=".", help="the pipeline's folder (models/, results/)")
    c.add_argument("--ensemble", help="ensemble or backbone (default: the evaluated final one)")
    c.add_argument("--sections", type=int, default=96, help="sections to cut from a scan")
    c.add_argument("--seed", type=int, default=0, help="seed of the section orientations")
    c.add_argument("--voxel-size", type=float, metavar="UM", help="voxel size (µm) of the scan")
    c.add_argument("--top-k", type=int, default=5, help="genera shown")
    c.add_argument("--sections-csv", metavar="PATH", help="write every section's probabilities")
    c.add_argument("--json", action="store_true", help="print the answer as JSON")
    c.set_defaults(func=_classify)

    d = sub.add_parser(
        "deps", help="check that dvc.yaml's stages list the code they import and params they read"
    )
    d.add_argument("--root", default=".", help="project folder holding dvc.yaml")
    d.add_argument(
        "--fix",
        action="store_true",
        help="rewrite each stage's foramlib deps to the code it runs (other problems are listed)",
    )
    d.set_defaults(func=_deps)

    pc = sub.add_parser("params", help="check a parameter file before anything runs")
    pc.add_argument("action", choices=["check"], help="check: validate every value and stage")
    pc.add_argument("--params", default="params.yaml", help="parameter file")
    pc.set_defaults(func=_params)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"{parser.prog} {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except MemoryError:
        print(
            f"{parser.prog} {args.command}: error: out of memory: the input needs more than "
            "this machine has; shrink it (images: FORAM_MAX_IMAGE_MP; volumes: "
            "data.max_side) or free memory",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
