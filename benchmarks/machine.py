"""The machine a benchmark ran on, for the JSON results."""

from __future__ import annotations

import os
import platform
import time


def machine() -> dict:
    """Node, processor, CPU count, Python and OS of this machine."""
    return dict(
        node=platform.node(),
        processor=platform.processor() or platform.machine(),
        cpu_count=os.cpu_count(),
        python=platform.python_version(),
        system=f"{platform.system()} {platform.release()}",
    )


def today() -> str:
    return time.strftime("%Y-%m-%d")
