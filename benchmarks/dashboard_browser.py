"""Dashboard speed in a real browser: time to first render of each page, and memory.

Starts the Voila dashboard (``dashboard/app.ipynb``) on a free local port over a
workspace (default: this repository's own pipeline outputs), drives headless Debian
Chromium through Playwright and measures, per browser session (each page load is a
fresh Voila kernel):

* **landing**: from navigation start to ``.foram-app`` visible (the kernel starts,
  runs the notebook, and the widgets render) — read from the page's own clock
  (``performance.now()``, which starts at navigation), with the browser's own timing of
  its phases (``landing_phases``: HTML received, parsed, scripts loaded; the rest is
  the widgets connecting and drawing);
* **classify page** / **match page**: from the click on the navigation button to the
  page visible (in-page clock, both ends);
* in the first session also **classify** (button click to the top-5 table, on a
  gallery test slice) and **match** (button click to the best match's row), when the
  workspace has a matching index (``data/index``);
* **resident memory** (VmRSS from ``/proc``) of the Voila server process and of its
  kernel after that session's classification (and match), with the session still open;
* with ``--concurrent K``, then K sessions **at once**: all opened together, each
  classifies a different gallery slice, all clicks fired together; how many answered,
  each one's wait, and the total RSS of the server and every kernel with all K open.

``--preheat N`` serves with N preheated kernels (``foramlib.app.serve``): the first
session(s) then get a kernel that has already run the app and loaded the models.

``--screenshots DIR`` also saves what the first session showed: ``landing.png``,
``classify.png`` (its gallery test slice classified) and ``match.png`` (that slice
found in 3D), whole-app PNGs at the benchmark's window width. On a finished ``make
demo`` workspace these are the book's *Dashboard* pictures of a real run.

Writes benchmarks/results/dashboard_browser.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from machine import machine, today  # noqa: E402

from foramlib.io.atomic import write_text  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
APP = "dashboard/app.ipynb"
VIEWPORT = {"width": 1280, "height": 860}
TIMEOUT_MS = 300_000

VISIBLE_AT = """sel => {
    const e = document.querySelector(sel);
    return e && e.offsetParent !== null ? performance.now() : null;
}"""
CLICK = "sel => { window.__foram_t0 = performance.now(); document.querySelector(sel).click(); }"
VISIBLE_SINCE_CLICK = """([sel, bad]) => {
    const e = document.querySelector(sel);
    if (e && e.offsetParent !== null) return performance.now() - window.__foram_t0;
    const b = bad && document.querySelector(bad);
    return b && b.innerText.trim() ? b.innerText : null;
}"""


def rss_mb(pid: int) -> float:
    """Resident set size of one process, MB (VmRSS of /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def children(pid: int) -> list[int]:
    """Direct children of a process, from /proc/<pid>/task/*/children."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out.extend(int(t) for t in text)
    return out


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far, s (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_until_quiet(pids: list[int], quiet_s: float = 3.0, timeout_s: float = 300.0) -> float:
    """Wait until the processes `pids` have used no CPU (under 2 % of a core) for
    `quiet_s` seconds: the preheated kernels' background threads have loaded and warmed
    up the models. Returns the seconds waited; raises after `timeout_s`."""
    t0 = time.perf_counter()
    last, quiet_since = None, time.perf_counter()
    while True:
        used = sum(cpu_seconds(p) for p in pids if Path(f"/proc/{p}").exists())
        now = time.perf_counter()
        if last is None or used - last > 0.02 * 0.5:
            quiet_since = now
        last = used
        if now - quiet_since >= quiet_s:
            return now - t0
        if now - t0 > timeout_s:
            raise RuntimeError(f"the preheated kernels were still busy after {timeout_s:.0f} s")
        time.sleep(0.5)


def median(values) -> float:
    """The median (the mean of the two middle values for an even count).

    >>> median([4, 1, 3, 2]), median([5, 1, 3])
    (2.5, 3.0)
    """
    ordered = sorted(float(v) for v in values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(workspace: Path, log_path: Path, preheat: int = 0):
    port = free_port()
    from foramlib.app.serve import voila_command, voila_env

    env = {
        **voila_env(workspace),
        "KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "tensorflow"),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    cmd = voila_command(port, APP, preheat=preheat)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    t0 = time.perf_counter()
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"voila exited ({proc.returncode}):\n{log_path.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if time.perf_counter() - t0 > 120:
                proc.kill()
                raise RuntimeError(f"voila did not answer:\n{log_path.read_text()}") from None
            time.sleep(0.1)
    return proc, f"http://127.0.0.1:{port}/", time.perf_counter() - t0


def open_page(browser, url: str) -> tuple:
    """A new session; returns (context, page, ms from navigation start to visible app)."""
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url, wait_until="commit", timeout=TIMEOUT_MS)
    landing = page.wait_for_function(VISIBLE_AT, arg=".foram-app", polling="raf").json_value()
    return context, page, float(landing)


NAVIGATION_PHASES = """() => {
    const n = performance.getEntriesByType("navigation")[0];
    return {html_ms: n.responseEnd, dom_ready_ms: n.domContentLoadedEventEnd,
            scripts_loaded_ms: n.loadEventEnd};
}"""


def landing_phases(page) -> dict:
    """Where a landing's time went (ms from navigation start, the browser's own timing).

    ``html_ms``: the page's HTML received (Voila renders the notebook, or hands out a
    preheated one); ``dom_ready_ms``: that HTML parsed; ``scripts_loaded_ms``: the
    page's scripts and styles loaded. The rest, to the app visible, is the widget
    manager connecting to the kernel and drawing the widgets.
    """
    return {k: round(float(v), 1) for k, v in page.evaluate(NAVIGATION_PHASES).items()}


def click_until(page, button: str, target: str, error: str | None = None) -> float:
    """ms from clicking `button` (in-page) to `target` visible (RuntimeError if the app
    shows an error in `error` instead)."""
    page.evaluate(CLICK, button)
    value = page.wait_for_function(
        VISIBLE_SINCE_CLICK, arg=[target, error], polling="raf"
    ).json_value()
    if isinstance(value, str):
        raise RuntimeError(f"the dashboard reported: {value}")
    return float(value)


IMAGE_READY = """sel => { const i = document.querySelector(sel);
    return i && i.complete && i.naturalWidth > 0; }"""
SPECIMEN_CHECKED = """() => { const t = document.querySelector('.foram-match-message').innerText;
    return !/Reliable match/.test(t) || /(It is|But is it) this specimen/.test(t); }"""


def save_screenshot(page, folder: Path | None, name: str) -> None:
    """A PNG of the whole app (Voila scrolls inside the page: the window grows to it)."""
    if folder is None:
        return
    size = page.viewport_size
    bottom = page.evaluate(
        "() => document.querySelector('.foram-app').getBoundingClientRect().bottom"
    )
    page.set_viewport_size(
        {"width": size["width"], "height": int(min(max(size["height"], bottom + 24), 4000))}
    )
    try:
        folder.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(folder / f"{name}.png"))
    finally:
        page.set_viewport_size(size)


def session(
    browser, url: str, *, act: bool, has_index: bool, screenshots: Path | None = None
) -> dict:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    context, page, landing = open_page(browser, url)
    out = {"landing_ms": round(landing, 1), "landing_phases": landing_phases(page)}
    save_screenshot(page, screenshots if act else None, "landing")
    out["classify_page_ms"] = round(
        click_until(page, ".foram-nav-classify", ".foram-page-classify"), 1
    )
    out["match_page_ms"] = round(click_until(page, ".foram-nav-match", ".foram-page-match"), 1)
    if act:
        page.click(".foram-nav-classify")
        page.locator(".foram-page-classify").wait_for(state="visible")
        options = page.eval_on_selector_all(".foram-gallery select option", "os => os.length")
        if options < 2:
            raise RuntimeError("the gallery lists no test slice: is the workspace complete?")
        page.select_option(".foram-gallery select", index=1)
        page.wait_for_function(
            "() => { const i = document.querySelector('.foram-preview'); "
            "return i && i.complete && i.naturalWidth > 0; }"
        )
        out["classify_ms"] = round(
            click_until(
                page,
                ".foram-classify-button",
                ".foram-top5 tr.foram-rank-1",
                ".foram-message .foram-msg-error",
            ),
            1,
        )
        out["top1"] = page.inner_text(".foram-top5 tr.foram-rank-1").split("\t")
        if screenshots is not None:
            for image in (".foram-gradcam", ".foram-probabilities"):
                page.wait_for_function(IMAGE_READY, arg=image)
            save_screenshot(page, screenshots, "classify")
        if has_index:
            page.click(".foram-to-match")
            page.locator(".foram-page-match").wait_for(state="visible")
            out["match_ms"] = round(
                click_until(
                    page,
                    ".foram-match-button",
                    ".foram-match-results tr.foram-match-1",
                    ".foram-match-message .foram-msg-error",
                ),
                1,
            )
            if screenshots is not None:
                page.wait_for_function(IMAGE_READY, arg=".foram-match-view")
                # a reliable match is then compared with the other specimens: wait for it
                # (a workspace without a margin limit never says: the picture is taken anyway)
                with contextlib.suppress(PlaywrightTimeout):
                    page.wait_for_function(SPECIMEN_CHECKED, timeout=120_000)
                save_screenshot(page, screenshots, "match")
    return {"context": context, "page": page, **out}


def tree_rss_mb(pid: int) -> tuple[float, int]:
    """RSS of a process and all its descendants (MB), and how many kernels among them."""
    total, kernels, todo = 0.0, 0, [pid]
    while todo:
        p = todo.pop()
        try:
            total += rss_mb(p)
            kernels += "ipykernel" in cmdline(p)
            todo.extend(children(p))
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total, kernels


def pick_slice(page, index: int) -> None:
    page.click(".foram-nav-classify")
    page.locator(".foram-page-classify").wait_for(state="visible")
    page.select_option(".foram-gallery select", index=index)
    page.wait_for_function(
        "() => { const i = document.querySelector('.foram-preview'); "
        "return i && i.complete && i.naturalWidth > 0; }"
    )


def concurrent(browser, url: str, k: int, server_pid: int) -> dict:
    """K sessions at once: open together, classify together; who answered, and memory."""
    t0 = time.perf_counter()
    opened = []
    for _ in range(k):
        context = browser.new_context(viewport=VIEWPORT)
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(url, wait_until="commit", timeout=TIMEOUT_MS)
        opened.append((context, page))
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    landing, shown = [], []
    for _, p in opened:  # a page that does not appear in TIMEOUT_MS counts as not served
        try:
            found = p.wait_for_function(VISIBLE_AT, arg=".foram-app", polling="raf")
            landing.append(round(float(found.json_value()), 1))
            shown.append(p)
        except PlaywrightTimeout:
            landing.append(None)
    all_visible_s = time.perf_counter() - t0
    for i, page in enumerate(shown):
        pick_slice(page, 1 + i)
    for page in shown:
        page.evaluate(CLICK, ".foram-classify-button")
    waits, answered = [], 0
    for page in shown:
        value = page.wait_for_function(
            VISIBLE_SINCE_CLICK,
            arg=[".foram-top5 tr.foram-rank-1", ".foram-message .foram-msg-error"],
            polling="raf",
        ).json_value()
        if isinstance(value, str):
            waits.append(value)
        else:
            answered += 1
            waits.append(round(float(value), 1))
    total, kernels = tree_rss_mb(server_pid)
    for context, _ in opened:
        context.close()
    return {
        "sessions": k,
        "answered": answered,
        "landing_ms": landing,
        "timeout_ms": TIMEOUT_MS,
        "all_visible_s": round(all_visible_s, 1),
        "classify_ms": waits,
        "total_rss_mb": round(total, 1),
        "kernels": kernels,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workspace", default=str(REPO), help="folder with models/, results/, data/")
    ap.add_argument("--sessions", type=int, default=3, help="browser sessions (page loads)")
    ap.add_argument("--preheat", type=int, default=0, help="preheated kernels (0: none)")
    ap.add_argument("--concurrent", type=int, default=0, help="then K sessions at once")
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/dashboard_browser.json"))
    ap.add_argument("--screenshots", type=Path, help="save the first session's pages as PNGs here")
    args = ap.parse_args(argv)
    from playwright.sync_api import sync_playwright

    workspace = Path(args.workspace).resolve()
    try:  # the match timing needs a usable index (an outdated one is refused)
        from foramlib.matching.index import load_collection

        load_collection(workspace / "data/index", workspace)
        has_index, index_note = True, "data/index loaded"
    except Exception as exc:  # noqa: BLE001 - reported in the JSON
        has_index, index_note = False, f"no match timing: {exc}"
        print(index_note, flush=True)
    load_at_start = os.getloadavg()  # the machine may be shared: context for the timings
    log = Path(tempfile.mkdtemp()) / "voila.log"
    proc, url, start_s = start_server(workspace, log, args.preheat)
    if args.preheat:  # wait until the pool is filled: the app run, the models loaded
        t_fill = time.perf_counter()
        while "is filled with" not in log.read_text():
            if time.perf_counter() - t_fill > 300:
                raise RuntimeError(f"the kernel pool was not filled:\n{log.read_text()}")
            time.sleep(0.5)
        # the app's background thread loads and warms up the models: wait until the
        # pool's kernels go quiet rather than for a fixed time
        kernels = [p for p in children(proc.pid) if "ipykernel" in cmdline(p)]
        wait_until_quiet(kernels)
        start_s += time.perf_counter() - t_fill
    together = None
    sessions = []
    memory = {}
    try:
        server_idle = rss_mb(proc.pid)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=args.chromium, headless=True, args=["--no-sandbox"]
            )
            for i in range(args.sessions):
                s = session(
                    browser, url, act=i == 0, has_index=has_index, screenshots=args.screenshots
                )
                if i == 0:  # memory with this one session open, after its classification
                    # every kernel of the server: the session's and, with --preheat, the
                    # pool's (a preheated session's kernel is the one that was waiting)
                    kernels = [p for p in children(proc.pid) if "ipykernel" in cmdline(p)]
                    kernel_mb = sorted((round(rss_mb(p), 1) for p in kernels), reverse=True)
                    server = rss_mb(proc.pid)
                    memory = {
                        "server_idle_mb": round(server_idle, 1),
                        "server_mb": round(server, 1),
                        "kernels": len(kernels),
                        "kernel_mb": kernel_mb,
                        "total_mb": round(server + sum(kernel_mb), 1),
                        "after": "classification" + (" and match" if has_index else ""),
                    }
                s["context"].close()
                s.pop("page")
                s.pop("context")
                sessions.append(s)
                print(json.dumps(s), flush=True)
                time.sleep(2)  # let Voila shut the closed session's kernel down
            if args.concurrent:
                together = concurrent(browser, url, args.concurrent, proc.pid)
                print(json.dumps(together), flush=True)
            browser.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()

    def stats(key):
        values = [s[key] for s in sessions if key in s]
        if not values:
            return None
        return {
            "first": values[0],
            "median": round(median(values), 1),
            "max": max(values),
            "n": len(values),
        }

    metrics = json.loads((workspace / "results/metrics.json").read_text())
    result = {
        "benchmark": "dashboard_browser",
        "date": today(),
        "machine": machine(),
        "browser": "Debian chromium (headless) via playwright",
        "workspace": {
            "path": "this repository" if workspace == REPO else str(workspace),
            "data_source": metrics.get("data_source"),
            "final": metrics.get("final"),
            # trained backbones (models/pretrain holds the pretraining stage's weights)
            "trained_backbones": sorted(
                p.parent.name for p in (workspace / "models").glob("*/summary.json")
            ),
            "matching_index": index_note,
        },
        "load_average_at_start": [round(x, 2) for x in load_at_start],
        "server_start_s": round(start_s, 2),
        "preheated_kernels": args.preheat,
        "concurrent": together,
        "first_render_ms": {
            "landing (navigation start to app visible)": stats("landing_ms"),
            "classify page (click to visible)": stats("classify_page_ms"),
            "match page (click to visible)": stats("match_page_ms"),
        },
        "actions_ms": {
            "classify (click to top-5)": stats("classify_ms"),
            "match (click to best match)": stats("match_ms"),
        },
        "memory_rss": memory,
        "sessions": sessions,
        "notes": (
            (
                f"Voila keeps {args.preheat} preheated kernel(s) that have run the app and "
                "loaded the models before any visitor (the benchmark waits until they are "
                "quiet); a page load takes one and the pool starts a replacement."
                if args.preheat
                else "Each page load is a new Voila kernel that imports TensorFlow and builds "
                "the app; the models load in a background thread while the page renders, so "
                "the first classification may wait for them."
            )
            + " RSS from /proc VmRSS."
        ),
    }
    write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(
        json.dumps(
            {k: result[k] for k in ("first_render_ms", "actions_ms", "memory_rss")}, indent=2
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
