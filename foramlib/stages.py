"""Run one pipeline stage: execute its notebook with papermill, atomically.

papermill saves the output notebook after every cell, so a stage interrupted half-way
would leave a half-executed report that the book (and DVC) might trust. Here the
notebook runs into a temporary file that replaces the report only on success; a
failed run is kept beside it as ``<name>.failed.ipynb`` for debugging.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from foramlib.atomic import atomic_path

__all__ = ["parse_parameter", "run_notebook"]


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

    Raises
    ------
    FileNotFoundError
        If the notebook does not exist.
    papermill.PapermillExecutionError
        If a cell fails; the executed notebook is kept as ``<output>.failed.ipynb``.
    """
    import papermill

    notebook, output = Path(notebook), Path(output)
    if not notebook.is_file():
        raise FileNotFoundError(f"stage notebook {notebook} does not exist")
    failed = output.with_suffix(".failed.ipynb")
    with atomic_path(output, suffix=".ipynb") as tmp:
        try:
            papermill.execute_notebook(
                str(notebook),
                str(tmp),
                parameters=parameters or {},
                kernel_name=kernel,
                cwd=str(cwd),
                log_output=log_output,
                progress_bar=True,
            )
        except BaseException:
            if tmp.exists():
                os.replace(tmp, failed)
            raise
    if failed.exists():
        failed.unlink()
    return output
