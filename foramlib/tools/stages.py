"""Run one pipeline stage: execute its notebook with papermill, atomically.

Every notebook stage of ``dvc.yaml`` is ``python -m foramlib.tools.stages NOTEBOOK OUTPUT -p
NAME VALUE ...``. The runner is this small module on purpose: it is part of every
stage's code, so DVC reruns every stage when it changes; the command-line tool
(``foram``, :mod:`foramlib.tools.cli`) can change without invalidating a finished run.

papermill saves the output notebook after every cell, so a stage interrupted half-way
would leave a half-executed report that the book (and DVC) might trust. Here the
notebook runs into a temporary file that replaces the report only on success; a
failed run is kept beside it as ``<name>.failed.ipynb`` for debugging.

The stage notebooks are kept as Jupytext percent scripts (``notebooks/<stage>.py``:
``# %%`` starts a cell, ``# %% tags=["parameters"]`` marks papermill's cell), so that
their diffs and greps read as code; :func:`read_notebook` turns one into a notebook for
papermill, and the executed report is an ordinary ``.ipynb``.
"""

from __future__ import annotations

import argparse
import math
import numbers
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

import yaml

from foramlib.io.atomic import atomic_path

__all__ = [
    "add_run_arguments",
    "main",
    "parse_parameter",
    "progress_printer",
    "read_notebook",
    "run_from_arguments",
    "run_notebook",
]

#: how a stage notebook kept as text is read (Jupytext's percent format)
TEXT_NOTEBOOK_SUFFIXES = (".py",)
PYTHON_KERNEL = {"name": "python3", "display_name": "Python 3", "language": "python"}


def parse_parameter(text: str):
    """Turn a command-line value into a typed parameter the way YAML would.

    Examples
    --------
    >>> parse_parameter("4"), parse_parameter("0.5"), parse_parameter("data/raw")
    (4, 0.5, 'data/raw')
    >>> parse_parameter("true"), parse_parameter("null"), parse_parameter("[1, 2]")
    (True, None, [1, 2])

    DVC writes a YAML ``null`` into a command as ``None``, and small floats in exponent
    form without a dot, which YAML 1.1 would leave as strings; both come back typed.

    >>> parse_parameter("None") is None, parse_parameter("5e-05")
    (True, 5e-05)
    """
    if text == "None":
        return None
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        # YAML 1.1 reads "5e-05" (how DVC writes 0.00005) as a string
        try:
            return float(value)
        except ValueError:
            return value
    return value


def read_notebook(path: str | os.PathLike):
    """A stage notebook as an ``nbformat`` notebook: a percent script or an ``.ipynb``.

    Raises
    ------
    FileNotFoundError
        If there is no such file.
    ValueError
        If it cannot be read as a notebook (the message names the file).

    Examples
    --------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "stage.py"
    >>> _ = path.write_text('# %% tags=["parameters"]\\nx = 1\\n\\n# %%\\nprint(x)\\n')
    >>> nb = read_notebook(path)
    >>> [c.cell_type for c in nb.cells], nb.cells[0].metadata["tags"]
    (['code', 'code'], ['parameters'])
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"stage notebook {path} does not exist")
    try:
        if path.suffix in TEXT_NOTEBOOK_SUFFIXES:
            import jupytext

            nb = jupytext.read(path, fmt="py:percent")
            nb.metadata.pop("jupytext", None)  # how the script was read, not the report's
            # a script says nothing of its kernel; papermill and the book need one
            nb.metadata.setdefault("kernelspec", dict(PYTHON_KERNEL))
            nb.metadata.setdefault("language_info", {"name": "python"})
            return nb
        import nbformat

        return nbformat.read(path, as_version=4)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a readable notebook ({err})") from err


def run_notebook(
    notebook: str | os.PathLike,
    output: str | os.PathLike,
    parameters: dict | None = None,
    *,
    cwd: str | os.PathLike = ".",
    kernel: str = "python3",
    log_output: bool = True,
) -> Path:
    """Execute `notebook` with `parameters` injected and write it to `output` atomically.

    `notebook` is a percent script or an ``.ipynb`` (see :func:`read_notebook`).

    Raises
    ------
    FileNotFoundError
        If the notebook does not exist.
    papermill.PapermillExecutionError
        If a cell fails; the executed notebook is kept as ``<output>.failed.ipynb``.
    """
    import nbformat
    import papermill

    output = Path(output)
    nb = read_notebook(notebook)
    failed = output.with_suffix(".failed.ipynb")
    with atomic_path(output, suffix=".ipynb") as tmp:
        try:
            executed = papermill.execute_notebook(
                nb,
                str(tmp),
                parameters=parameters or {},
                kernel_name=kernel,
                cwd=str(cwd),
                log_output=log_output,
                progress_bar=True,
            )
            # given a notebook object, papermill records the whole object as the input
            executed.metadata["papermill"]["input_path"] = str(notebook)
            nbformat.write(executed, tmp)
        except BaseException:
            if tmp.exists():
                os.replace(tmp, failed)
            raise
    if failed.exists():
        failed.unlink()
    return output


def progress_printer(
    every: float = 0.1, stream: TextIO | None = None
) -> Callable[[float, str], None]:
    """A ``progress(fraction, message)`` callback that prints a line about every `every`.

    The stage notebooks hand it to their stage's ``run(cfg, progress=...)``: papermill
    logs what a cell prints, so a long stage (the index, the match calibration) shows
    ``[ 40%] message`` lines while it runs, one each time a further `every` of the work
    is done (not one per specimen or query) and always one at the end
    (``fraction >= 1``).

    Parameters
    ----------
    every : float
        The share of the work between two lines, in (0, 1].
    stream : file-like, optional
        Where the lines go; by default ``sys.stdout`` as it is when a line is printed
        (papermill and pytest replace it).

    Returns
    -------
    callable
        ``progress(fraction, message)``, `fraction` being the share of the work done.

    Raises
    ------
    ValueError
        If `every` is not in (0, 1].

    Examples
    --------
    >>> progress = progress_printer(every=0.25)
    >>> for done in range(1, 9):
    ...     progress(done / 8, f"specimen {done} of 8")
    [ 25%] specimen 2 of 8
    [ 50%] specimen 4 of 8
    [ 75%] specimen 6 of 8
    [100%] specimen 8 of 8
    """
    if not (isinstance(every, numbers.Real) and 0 < every <= 1):  # NaN fails the test too
        raise ValueError(f"every must be a share of the work in (0, 1], got {every!r}")
    printed = 0  # the last step of `every` that got a line

    def progress(fraction: float, message: str) -> None:
        nonlocal printed
        # the tolerance counts 0.3 as three steps of 0.1 (0.3 / 0.1 is 2.9999999999999996)
        step = math.floor(fraction / every + 1e-9)
        if step > printed or fraction >= 1:
            printed = max(printed, step)
            out = sys.stdout if stream is None else stream
            print(f"[{fraction:4.0%}] {message}", file=out, flush=True)

    return progress


def add_run_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The runner's arguments (``NOTEBOOK OUTPUT -p NAME VALUE ...``) on `parser`."""
    parser.add_argument("notebook", help="the stage notebook, e.g. notebooks/curate.py")
    parser.add_argument("output", help="the executed copy, e.g. reports/curate.ipynb")
    parser.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="a parameter (value parsed as YAML)",
    )
    return parser


def run_from_arguments(args: argparse.Namespace) -> int:
    """Run the stage notebook that :func:`add_run_arguments` describes; exit status.

    A failing cell ends the run with one message, the error the stage raised (stage
    errors name the file and the fix); its traceback stays in the failed report.
    """
    import logging

    from nbclient.exceptions import DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    # papermill reports the notebook's own output (progress lines) through logging
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    params = {name: parse_parameter(value) for name, value in args.parameter}
    try:
        out = run_notebook(args.notebook, args.output, params)
    except PapermillExecutionError as exc:
        failed = Path(args.output).with_suffix(".failed.ipynb")
        print(
            f"\nstage notebook {args.notebook} failed: {exc.ename}: {exc.evalue}\n"
            f"(the traceback is in {failed})",
            file=sys.stderr,
        )
        return 1
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except DeadKernelError as exc:
        print(
            f"\nstage notebook {args.notebook} failed: its kernel died ({exc}); a kernel "
            "killed for lack of memory dies this way (see `dmesg`): lower data.max_side "
            "or the stage's n_jobs, or free memory, and run it again",
            file=sys.stderr,
        )
        return 1
    print(f"stage notebook executed: {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m foramlib.tools.stages NOTEBOOK OUTPUT -p NAME VALUE ...``."""
    parser = add_run_arguments(
        argparse.ArgumentParser(
            prog="python -m foramlib.tools.stages",
            description="execute a stage notebook with papermill, atomically",
        )
    )
    return run_from_arguments(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
