"""Serve the dashboard: one way to start Voila, for ``make dashboard``, tests and benchmarks.

``python -m foramlib.app.serve [--port 8866] [--workspace .]`` runs, from the repository
root (where Voila reads ``voila.json``)::

    python -m voila dashboard/app.ipynb --no-browser --port=PORT --Voila.ip=127.0.0.1
        --template=foram

with ``FORAM_WORKSPACE`` set and this package's template folder on ``JUPYTER_PATH``.
The ``foram`` template is Voila's ``lab`` template without its links to a CDN, so a page
makes no request outside the machine.

Examples
--------
>>> voila_command(8870)[-2:]
['--Voila.ip=127.0.0.1', '--template=foram']

``make dashboard`` keeps one preheated kernel ready (``--preheat``, see
:func:`voila_command`).
>>> env = voila_env("/data/run", {"JUPYTER_PATH": "/opt/jupyter"})
>>> env["FORAM_WORKSPACE"], env["JUPYTER_PATH"].endswith("/opt/jupyter")
('/data/run', True)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

__all__ = ["APP_NOTEBOOK", "TEMPLATE", "TEMPLATE_ROOT", "voila_command", "voila_env", "main"]

#: the Voila app, relative to the repository root
APP_NOTEBOOK = "dashboard/app.ipynb"
#: the Voila template (``voila/templates/<TEMPLATE>`` under :data:`TEMPLATE_ROOT`)
TEMPLATE = "foram"
TEMPLATE_ROOT = Path(__file__).parent / "share" / "jupyter"


#: seconds Voila waits before it heats a new kernel once one is taken. Short: a request
#: that finds only a kernel still waiting out this delay waits for it, so each visitor
#: of a burst paid the whole delay in turn (15 s: the 8th of 8 waited 115 s; 2 s: 33 s,
#: and the next visitor found a kernel ready). The refill competes with the taker's
#: first classification (0.60 s with 15 s, 1.15 s with 2 s on 2 cores; book: Dashboard).
REFILL_DELAY_S = 2


def voila_command(port: int, notebook: str = APP_NOTEBOOK, *, preheat: int = 0) -> list[str]:
    """The command that serves `notebook` on ``127.0.0.1:port`` with the app's template.

    Parameters
    ----------
    port : int
    notebook : str
    preheat : int
        Kernels Voila keeps ready (``--preheat_kernel``, ``--pool_size``): each has run
        the app notebook, and so loaded and warmed up the models, before anyone asks, so
        the page appears and answers at once. Each costs a kernel's memory (about 1 GB
        with the quick models) while it waits; 0 (the default here) starts a kernel per
        page load.

    Examples
    --------
    >>> voila_command(8870, preheat=1)[-3:]
    ['--preheat_kernel=True', '--pool_size=1', '--VoilaKernelManager.fill_delay=2']
    """
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise ValueError(f"port = {port!r} is invalid: expected an integer in 1..65535")
    if not isinstance(preheat, int) or isinstance(preheat, bool) or not 0 <= preheat <= 16:
        raise ValueError(f"preheat = {preheat!r} is invalid: expected an integer in 0..16")
    pool = []
    if preheat:
        pool = [
            "--preheat_kernel=True",
            f"--pool_size={preheat}",
            f"--VoilaKernelManager.fill_delay={REFILL_DELAY_S}",
        ]
    return [
        sys.executable,
        "-m",
        "voila",
        str(notebook),
        "--no-browser",
        f"--port={port}",
        "--Voila.ip=127.0.0.1",
        f"--template={TEMPLATE}",
        *pool,
    ]


def voila_env(workspace, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """`base` (default: ``os.environ``) with the workspace and the template folder set."""
    env = dict(os.environ if base is None else base)
    env["FORAM_WORKSPACE"] = str(workspace)
    paths = [str(TEMPLATE_ROOT)] + [p for p in env.get("JUPYTER_PATH", "").split(os.pathsep) if p]
    env["JUPYTER_PATH"] = os.pathsep.join(paths)
    return env


def main(argv: list[str] | None = None) -> int:
    """``python -m foramlib.app.serve``: serve the dashboard until interrupted."""
    parser = argparse.ArgumentParser(
        prog="python -m foramlib.app.serve", description="serve the dashboard (Voila)"
    )
    parser.add_argument("--port", type=int, default=8866, help="local port (default 8866)")
    parser.add_argument(
        "--workspace", default=".", help="folder holding models/, results/, data/ (default .)"
    )
    parser.add_argument(
        "--preheat",
        type=int,
        default=1,
        help="kernels kept ready with the models loaded, so a new page appears and "
        "answers at once (default 1; 0: start a kernel per page load; each waiting "
        "kernel holds about 1 GB)",
    )
    args = parser.parse_args(argv)
    if not Path(APP_NOTEBOOK).is_file():
        print(
            f"error: {APP_NOTEBOOK} not found: run this from the repository root "
            "(Voila also reads voila.json there)",
            file=sys.stderr,
        )
        return 2
    try:
        command = voila_command(args.port, preheat=args.preheat)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    workspace = Path(args.workspace).resolve()
    print(f"serving the dashboard on http://127.0.0.1:{args.port} (Ctrl-C stops it)")
    try:
        return subprocess.call(command, env=voila_env(workspace))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
