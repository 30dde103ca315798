"""The dashboard is safe by default: local requests only, and nothing leaves the machine.

A page load starts a kernel, so a page that any web site could make a browser load
(DNS rebinding: a foreign name resolving to 127.0.0.1) could start kernels and drive
widgets. `voila.json` switches on jupyter_server's Host check, which Voila turns off.
And the page itself asks no other host for anything (the app's Voila template drops
the Font Awesome stylesheets Voila's own template loads from a CDN).
"""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from urllib.parse import urlsplit

import pytest

REPO = Path(__file__).resolve().parents[2]


def _status(server, host: str, path: str = "/") -> int:
    port = urlsplit(server.url).port
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=180)
    try:
        conn.request("GET", path, headers={"Host": host})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def test_the_repositorys_voila_config_turns_the_host_check_on():
    settings = json.loads((REPO / "voila.json").read_text())["Voila"]["tornado_settings"]
    assert settings["allow_remote_access"] is False
    assert settings["local_hostnames"] == ["localhost"]


@pytest.mark.slow
def test_foreign_host_headers_are_refused_and_local_ones_served(empty_voila_server):
    server = empty_voila_server
    port = urlsplit(server.url).port
    for host in ("evil.example", f"evil.example:{port}", "192.168.1.20"):
        assert _status(server, host) == 403, host
    zero = "00000000-0000-0000-0000-000000000000"
    assert _status(server, "evil.example", f"/api/kernels/{zero}") == 403
    log = server.log.read_text(errors="replace")
    assert "Blocking request with non-local 'Host' evil.example" in log
    assert "Kernel started" not in log  # refused before any kernel was started
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"):
        assert _status(server, host) == 200, host


def test_a_host_name_the_lab_opts_in_is_served_and_others_are_still_refused(lab_voila_server):
    server = lab_voila_server
    port = urlsplit(server.url).port
    assert _status(server, "evil.example") == 403
    assert _status(server, "192.168.1.20") == 403  # by address: only with --allow-any-host
    assert _status(server, f"foram.lab.example:{port}") == 200
    log = server.log.read_text(errors="replace")
    assert "Blocking request with non-local 'Host' evil.example" in log
    assert "non-local 'Host' foram.lab.example" not in log


@pytest.mark.slow
def test_the_page_asks_no_other_host_and_its_icons_still_show(empty_voila_server, browser):
    server = empty_voila_server
    context = browser.new_context()
    requests: list[str] = []
    failed: list[str] = []
    page = context.new_page()
    page.on("request", lambda r: requests.append(r.url))
    page.on("requestfailed", lambda r: failed.append(r.url))
    try:
        page.goto(server.url, timeout=120_000)
        page.locator(".foram-app").wait_for(state="visible", timeout=120_000)
        page.wait_for_load_state("networkidle", timeout=60_000)
        local = (server.url.rstrip("/"), "data:", "blob:", "ws://127.0.0.1")
        outside = [u for u in requests if not u.startswith(local)]
        assert outside == [], outside
        assert failed == [], failed
        # the navigation buttons' icons come from the Font Awesome bundled with Voila
        glyph = page.evaluate(
            """() => {
                const i = document.querySelector('.foram-nav-home i');
                const style = getComputedStyle(i, '::before');
                return [style.content, style.fontFamily];
            }"""
        )
        assert glyph[0] not in ("", "none", "normal"), glyph
        assert "awesome" in glyph[1].lower(), glyph
    finally:
        context.close()
