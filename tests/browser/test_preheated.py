"""A preheated kernel: the page comes from a kernel that ran the app before anyone asked.

``python -m foramlib.app.serve`` (``make dashboard``) keeps one such kernel ready
(``--preheat``): it has imported TensorFlow, built the app and loaded the models while
waiting, so the first visitor neither waits for a kernel nor for the models. Timings
live in ``benchmarks/dashboard_browser.py --preheat 1``; this checks the behaviour.
"""

from __future__ import annotations

import pytest

from foramlib.app.serve import voila_command

from .conftest import start_voila, stop_voila, wait_for

POOL_FILLED_S = 240  # the pooled kernel starts, imports TensorFlow and runs the app


@pytest.mark.slow
def test_the_first_visitor_gets_a_kernel_with_the_models_loaded(workspace, browser, tmp_path):
    pool_args = voila_command(1, preheat=1)[len(voila_command(1)) :]
    server = start_voila(workspace, tmp_path / "voila.log", extra_args=pool_args)
    try:
        log = lambda: server.log.read_text(errors="replace")  # noqa: E731
        assert wait_for(lambda: "is filled with 1 kernel" in log(), POOL_FILLED_S), (
            server.log_tail()
        )
        context = browser.new_context()
        try:
            page = context.new_page()
            page.goto(server.url, timeout=180_000)
            page.locator(".foram-app").wait_for(state="visible", timeout=180_000)
            assert "Using pre-heated kernel" in log(), server.log_tail()
            page.click(".foram-nav-classify")
            status = page.locator(".foram-models-status")
            status.filter(has_text="Models loaded and ready").wait_for(timeout=180_000)
            page.select_option(".foram-gallery select", index=1)
            page.wait_for_function(
                "() => { const i = document.querySelector('.foram-preview'); "
                "return i && i.complete && i.naturalWidth > 0; }",
                timeout=60_000,
            )
            page.click(".foram-classify-button")
            page.locator(".foram-top5 tr.foram-rank-1").wait_for(timeout=120_000)
            # the answer and its message are separate widget updates: wait for the message
            # rather than read it in the same instant (CI once read the previous one)
            message = page.locator(".foram-message")
            message.filter(has_text="Classified").wait_for(timeout=10_000)
            assert "loading the models" not in message.inner_text(), message.inner_text()
        finally:
            context.close()
    finally:
        stop_voila(server)
