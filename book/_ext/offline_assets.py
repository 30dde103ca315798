"""Sphinx extension that keeps the ForamDeepSlice book free of remote assets.

Two jobs:

* Jupyter Book 1 adds *every* ``.js``/``.css`` file found under ``_static/`` to every
  page. The local MathJax copy in ``_static/mathjax/`` holds hundreds of such files
  that must only be served, not loaded; they are dropped from the page asset lists
  (Sphinx still loads ``mathjax_path`` itself on pages with maths).
* Any script or stylesheet that an extension or theme still adds from an
  ``http(s)://`` or protocol-relative ``//`` URL raises a Sphinx warning, which fails
  the strict build (``-W``). ``foramlib.tools.book.find_external_assets`` checks the
  finished HTML as well.
"""

from __future__ import annotations

from sphinx.application import Sphinx
from sphinx.config import Config
from sphinx.util import logging

logger = logging.getLogger(__name__)

MATHJAX_PREFIX = "mathjax/"


def _asset_name(entry) -> str:
    """Return the file name of an ``html_js_files``/``html_css_files`` entry."""
    return entry[0] if isinstance(entry, tuple | list) else str(entry)


def _is_remote(url: str) -> bool:
    """Tell whether `url` points off the site (``http(s)://`` or ``//host``)."""
    url = url.strip().lower()
    return url.startswith(("http://", "https://", "//"))


def drop_mathjax_files(app: Sphinx, config: Config) -> None:
    """Remove the files of the local MathJax copy from the per-page asset lists."""
    for name in ("html_js_files", "html_css_files"):
        kept = [e for e in getattr(config, name) if not _asset_name(e).startswith(MATHJAX_PREFIX)]
        setattr(config, name, kept)


def warn_remote_assets(app: Sphinx, pagename: str, templatename: str, context, doctree) -> None:
    """Warn (an error under ``-W``) about any remote script or stylesheet of a page."""
    for key in ("script_files", "css_files"):
        for asset in context.get(key, []):
            url = getattr(asset, "filename", asset)
            if isinstance(url, str) and _is_remote(url):
                logger.warning("page %s loads a remote asset: %s", pagename, url)


def setup(app: Sphinx) -> dict:
    """Register the extension."""
    app.connect("config-inited", drop_mathjax_files)
    app.connect("html-page-context", warn_remote_assets)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
