"""Limits a server's operator sets in the environment (``FORAM_*`` variables).

The dashboard and the matcher read a few size limits from the environment, so that a
lab can raise them for its machine without editing code; each reads them through
:func:`positive_number`, which refuses anything but a positive finite number with a
message that names the variable.

Examples
--------
>>> positive_number("FORAM_EXAMPLE_MB", 64.0, "megabytes", env={"FORAM_EXAMPLE_MB": "128"})
128.0
>>> positive_number("FORAM_EXAMPLE_MB", 64.0, "megabytes", env={})
64.0
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

__all__ = ["positive_number"]


def positive_number(
    name: str, default: float, unit: str, *, env: Mapping[str, str] | None = None
) -> float:
    """The positive number the environment variable `name` holds, or `default` when it
    is unset or blank.

    Parameters
    ----------
    name : str
        The variable, e.g. ``"FORAM_MAX_IMAGE_MP"``.
    default : float
        The value when the variable is unset or holds only spaces.
    unit : str
        What the number counts, for the message (``"megapixels"``).
    env : mapping, optional
        Where to look (default :data:`os.environ`).

    Raises
    ------
    ValueError
        If the variable holds anything but a positive finite number.

    Examples
    --------
    >>> positive_number("FORAM_EXAMPLE_MB", 64.0, "megabytes", env={"FORAM_EXAMPLE_MB": "0"})
    Traceback (most recent call last):
    ...
    ValueError: FORAM_EXAMPLE_MB = '0' is invalid: expected a positive number of megabytes
    """
    text = (os.environ if env is None else env).get(name, "").strip()
    if not text:
        return float(default)
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise ValueError(f"{name} = {text!r} is invalid: expected a positive number of {unit}")
    return value
