"""Command line entry points: ``foramlib run``, ``foramlib profile`` and ``foramlib book``.

Run as ``python -m foramlib.cli ...`` (or ``foramlib ...`` once installed).
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def _profile(args: argparse.Namespace) -> int:
    from foramlib.config import available_profiles, use_profile

    if args.name is None:
        print("available profiles:", ", ".join(available_profiles(args.profiles_dir)))
        return 0
    path = use_profile(args.name, args.params, args.profiles_dir)
    print(f"{path} now holds the {args.name!r} profile; `dvc repro` will rerun what it changes.")
    return 0


def _run(args: argparse.Namespace) -> int:
    import logging

    from foramlib.stages import parse_parameter, run_notebook

    # papermill reports the notebook's own output (progress lines) through logging
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    params = {name: parse_parameter(value) for name, value in args.parameter}
    out = run_notebook(args.notebook, args.output, params)
    print(f"stage notebook executed: {out}")
    return 0


def _book(args: argparse.Namespace) -> int:
    from foramlib.book import build_book

    index = build_book(args.book_dir, strict=not args.no_strict)
    print(f"book built: {index}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse `argv` and run the chosen command; errors print one line and exit 2."""
    parser = argparse.ArgumentParser(prog="foramlib", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="execute a stage notebook with papermill, atomically")
    r.add_argument("notebook", help="the stage notebook, e.g. notebooks/curate.ipynb")
    r.add_argument("output", help="the executed copy, e.g. reports/curate.ipynb")
    r.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="a parameter (value parsed as YAML)",
    )
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

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"foramlib {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
