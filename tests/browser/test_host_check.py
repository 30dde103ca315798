"""The dashboard serves only requests addressed to this machine (issue 23: Host header).

A page load starts a kernel, so a page that any web site could make a browser load
(DNS rebinding: a foreign name resolving to 127.0.0.1) could start kernels and drive
widgets. `voila.json` switches on jupyter_server's Host check, which Voila turns off.
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
