"""A dashboard left running keeps bounded memory: closed tabs give their kernels back.

Voila starts one kernel per page load. Its page asks the server to shut that kernel
down when the tab closes, but the request can be refused (no ``_xsrf`` cookie to send)
or never sent (a crashed or killed browser), so ``voila.json`` also makes the server
cull kernels that no page is connected to and that have been idle for a while. A tab
that stays open keeps its kernel however long it is idle.

The tests shorten the repository's timeouts on the command line (which overrides
``voila.json``) so that culling happens within seconds.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import psutil
import pytest

from .conftest import start_voila, stop_voila, wait_for

REPO = Path(__file__).resolve().parents[2]
TABS = 10
CULL_ARGS = (
    "--MappingKernelManager.cull_idle_timeout=6",
    "--MappingKernelManager.cull_interval=2",
)
RECLAIM_S = 90  # after the last tab closed: the idle timeout, a few intervals, shutdowns


def _kernels(server) -> list[psutil.Process]:
    """The kernel processes started by the Voila server."""
    try:
        children = psutil.Process(server.process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    out = []
    for child in children:
        try:
            if "ipykernel_launcher" in " ".join(child.cmdline()):
                out.append(child)
        except psutil.NoSuchProcess:
            continue
    return out


def _rss_mb(processes) -> float:
    total = 0
    for p in processes:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total / 2**20


@pytest.fixture
def culling_server(tmp_path):
    (tmp_path / "workspace").mkdir()
    server = start_voila(tmp_path / "workspace", tmp_path / "voila.log", extra_args=CULL_ARGS)
    try:
        yield server
    finally:
        stop_voila(server)


def _open_app(browser, server):
    context = browser.new_context()
    page = context.new_page()
    page.goto(server.url, timeout=180_000)
    page.locator(".foram-app").wait_for(state="visible", timeout=180_000)
    return context, page


def test_the_repositorys_voila_config_culls_kernels_no_page_is_connected_to():
    kernels = json.loads((REPO / "voila.json").read_text())["MappingKernelManager"]
    assert kernels["cull_connected"] is False  # an open tab is never culled
    assert 0 < kernels["cull_interval"] <= kernels["cull_idle_timeout"] <= 600


@pytest.mark.slow
def test_closing_ten_tabs_gives_back_their_kernels_and_memory(culling_server, browser):
    server = culling_server
    contexts = []
    try:
        for _ in range(TABS):
            contexts.append(_open_app(browser, server)[0])
        kernels = _kernels(server)
        assert len(kernels) == TABS, server.log_tail()
        open_mb = _rss_mb(kernels)
        assert open_mb > 0
    finally:
        for context in contexts:
            context.close()
    assert wait_for(lambda: not _kernels(server), RECLAIM_S), (
        f"{len(_kernels(server))} of {TABS} kernels still running {RECLAIM_S} s after "
        f"their tabs closed (they held {open_mb:.0f} MB):\n{server.log_tail()}"
    )
    assert _rss_mb(_kernels(server)) == 0
    assert server.process.poll() is None  # the server itself keeps serving
    context, page = _open_app(browser, server)
    try:
        assert len(_kernels(server)) == 1
    finally:
        context.close()


@pytest.mark.slow
def test_an_open_idle_tab_keeps_its_kernel_and_keeps_working(culling_server, browser):
    server = culling_server
    context, page = _open_app(browser, server)
    try:
        (kernel,) = _kernels(server)
        time.sleep(6 + 3 * 2 + 2)  # past the idle timeout and a few cull intervals
        assert [k.pid for k in _kernels(server)] == [kernel.pid], server.log_tail()
        # the page still talks to its kernel: showing another page is a widget round
        # trip (the kernel's callback switches the pages' visibility)
        page.click(".foram-nav-match")
        page.locator(".foram-page-match").wait_for(state="visible", timeout=30_000)
        assert not page.locator(".foram-page-home").is_visible()
        # jupyter_server logs each cull as "Culling '<state>' kernel '<id>' ..."
        assert not re.search(r"Culling '\w+' kernel", server.log.read_text(errors="replace"))
    finally:
        context.close()
