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

Safe by default: Voila binds ``127.0.0.1`` and, through ``voila.json``, refuses any
request whose ``Host`` header is not ``localhost`` or a loopback address (a web page
that makes a browser load the dashboard under another name, by DNS rebinding, gets a
403 before a kernel starts). A lab that serves it to its members opts in:
``--allow-host NAME`` accepts requests for that name (behind a reverse proxy, or with
``--ip`` on the network), and ``--allow-any-host`` switches the check off. Voila has no
login: anyone who can reach the address can use the app (though not run code).
>>> env = voila_env("/data/run", {"JUPYTER_PATH": "/opt/jupyter"})
>>> env["FORAM_WORKSPACE"], env["JUPYTER_PATH"].endswith("/opt/jupyter")
('/data/run', True)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from foramlib.io.atomic import write_text

__all__ = [
    "APP_NOTEBOOK",
    "TEMPLATE",
    "TEMPLATE_ROOT",
    "host_config",
    "voila_command",
    "voila_env",
    "main",
]

#: the Voila app, relative to the repository root
APP_NOTEBOOK = "dashboard/app.ipynb"
#: Voila's configuration (Host check, file deny list, kernel culling), at the root
CONFIG = "voila.json"
#: the Voila template (``voila/templates/<TEMPLATE>`` under :data:`TEMPLATE_ROOT`)
TEMPLATE = "foram"
TEMPLATE_ROOT = Path(__file__).parent / "share" / "jupyter"


#: seconds Voila waits before it heats a new kernel once one is taken. Short: a request
#: that finds only a kernel still waiting out this delay waits for it, so each visitor
#: of a burst paid the whole delay in turn (15 s: the 8th of 8 waited 115 s; 2 s: 33 s,
#: and the next visitor found a kernel ready). The refill competes with the taker's
#: first classification (0.60 s with 15 s, 1.15 s with 2 s on 2 cores; book: Dashboard).
REFILL_DELAY_S = 2


def host_config(
    base: Mapping, allow_hosts: Sequence[str] = (), *, allow_any_host: bool = False
) -> dict:
    """Voila's configuration `base` (``voila.json``) with the Host check opened as asked.

    Parameters
    ----------
    base : mapping
        The repository's ``voila.json``, read.
    allow_hosts : sequence of str
        Names to accept in the ``Host`` header besides ``localhost`` (e.g. the name a
        reverse proxy or the lab's DNS gives the machine).
    allow_any_host : bool
        Accept every ``Host`` (jupyter_server's ``allow_remote_access``): for access by
        IP address from the network, which the check otherwise refuses.

    Raises
    ------
    ValueError
        A name that is empty, holds a port or a space, or is a non-loopback IP address
        (jupyter_server never accepts those by name: the message says what to use).

    Examples
    --------
    >>> base = {"Voila": {"tornado_settings": {"local_hostnames": ["localhost"]}}}
    >>> host_config(base, ["foram.lab.example"])["Voila"]["tornado_settings"]
    {'local_hostnames': ['localhost', 'foram.lab.example']}
    >>> host_config(base, ["10.0.0.5"])
    Traceback (most recent call last):
    ...
    ValueError: --allow-host '10.0.0.5': an IP address is accepted only for loopback; give the machine's name, or --allow-any-host
    """  # noqa: E501
    import copy
    import ipaddress

    config = copy.deepcopy(dict(base))
    settings = config.setdefault("Voila", {}).setdefault("tornado_settings", {})
    names = list(settings.get("local_hostnames", ["localhost"]))
    for name in allow_hosts:
        text = str(name).strip()
        try:
            addr = ipaddress.ip_address(text.strip("[]"))
        except ValueError:
            addr = None
        if addr is None and (not text or any(c.isspace() or c in ":/@" for c in text)):
            raise ValueError(
                f"--allow-host {name!r}: expected a host name without port or spaces, "
                "e.g. foram.lab.example"
            )
        if addr is not None and not addr.is_loopback:
            raise ValueError(
                f"--allow-host {name!r}: an IP address is accepted only for loopback; give "
                "the machine's name, or --allow-any-host"
            )
        if addr is None and text not in names:
            names.append(text)
    settings["local_hostnames"] = names
    if allow_any_host:
        settings["allow_remote_access"] = True
    return config


def voila_command(
    port: int,
    notebook: str = APP_NOTEBOOK,
    *,
    preheat: int = 0,
    ip: str = "127.0.0.1",
    config_dir: str | os.PathLike | None = None,
) -> list[str]:
    """The command that serves `notebook` on ``ip:port`` with the app's template.

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
    ip : str
        The address to listen on (default: this machine only).
    config_dir : path-like, optional
        Read ``voila.json`` from this folder only (:func:`host_config`'s output)
        instead of the current folder and Jupyter's configuration folders.

    Examples
    --------
    >>> voila_command(8870, preheat=1)[-3:]
    ['--preheat_kernel=True', '--pool_size=1', '--VoilaKernelManager.fill_delay=2']
    """
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise ValueError(f"port = {port!r} is invalid: expected an integer in 1..65535")
    if not isinstance(preheat, int) or isinstance(preheat, bool) or not 0 <= preheat <= 16:
        raise ValueError(f"preheat = {preheat!r} is invalid: expected an integer in 0..16")
    import ipaddress

    try:
        ipaddress.ip_address(ip)
    except ValueError:
        raise ValueError(f"ip = {ip!r} is invalid: expected an IP address, e.g. 0.0.0.0") from None
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
        f"--Voila.ip={ip}",
        f"--template={TEMPLATE}",
        *pool,
        *([f"--Voila.config_file_paths={config_dir}"] if config_dir is not None else []),
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
    parser.add_argument(
        "--ip",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: every "
        "network interface, with --allow-host for the names people use)",
    )
    parser.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also accept requests for this host name (repeatable); by default only "
        "localhost and loopback addresses are served",
    )
    parser.add_argument(
        "--allow-any-host",
        action="store_true",
        help="switch the Host check off (needed to be reached by IP address; a web page "
        "could then drive the app through a visitor's browser)",
    )
    args = parser.parse_args(argv)
    if not Path(APP_NOTEBOOK).is_file() or not Path(CONFIG).is_file():
        print(
            f"error: {APP_NOTEBOOK} or {CONFIG} not found: run this from the repository root",
            file=sys.stderr,
        )
        return 2
    opened = bool(args.allow_host or args.allow_any_host)
    try:
        config = host_config(
            json.loads(Path(CONFIG).read_text(encoding="utf-8")),
            args.allow_host,
            allow_any_host=args.allow_any_host,
        )
        voila_command(args.port, preheat=args.preheat, ip=args.ip)  # checks the arguments
    except (ValueError, json.JSONDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    workspace = Path(args.workspace).resolve()
    shown = "127.0.0.1" if args.ip in ("127.0.0.1", "0.0.0.0") else args.ip
    print(f"serving the dashboard on http://{shown}:{args.port} (Ctrl-C stops it)")
    if args.ip != "127.0.0.1" or opened:
        names = ", ".join(config["Voila"]["tornado_settings"]["local_hostnames"])
        print(
            f"note: listening on {args.ip}; requests accepted for "
            + ("any host name" if args.allow_any_host else f"{names} and loopback addresses")
            + ". Voila has no login: anyone who can reach it can use the app.",
            file=sys.stderr,
        )
    with tempfile.TemporaryDirectory(prefix="foram-voila-") as folder:
        if opened:  # a derived voila.json, read instead of the repository's
            write_text(Path(folder) / CONFIG, json.dumps(config, indent=2) + "\n")
        command = voila_command(
            args.port,
            preheat=args.preheat,
            ip=args.ip,
            config_dir=folder if opened else None,
        )
        try:
            return subprocess.call(command, env=voila_env(workspace))
        except KeyboardInterrupt:
            return 0


if __name__ == "__main__":
    sys.exit(main())
