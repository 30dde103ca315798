"""Fixtures of the dashboard's real-browser tests.

* ``workspace``: a small but REAL workspace (models/, results/, data/, params.yaml) built
  once per run with foramlib's own pipeline functions, stage by stage as the notebooks
  call them, on the tiny virtual preset (about half a minute on 2 cores);
* ``voila_server``: ``python -m voila dashboard/app.ipynb`` on a free local port, with
  ``FORAM_WORKSPACE`` pointing at that workspace;
* ``browser`` / ``page``: headless Debian Chromium driven by Playwright; ``page`` opens
  a fresh dashboard session (Voila starts one kernel per page) and waits for it;
* ``screenshot``: saves a PNG under pytest's tmp dir and, when ``FORAM_SCREENSHOTS_DIR``
  is set, copies it there (``FORAM_SCREENSHOTS_DIR=book/_static/dashboard`` makes the
  book's images).

Chromium missing makes every browser test FAIL with the install command, unless
``FORAM_SKIP_BROWSER=1`` asks to skip them.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
APP = "dashboard/app.ipynb"
CHROMIUM_CANDIDATES = ("chromium", "chromium-browser")
INSTALL_HINT = (
    "the dashboard's browser tests need Debian's Chromium: run `apt-get install chromium` "
    "(or set FORAM_SKIP_BROWSER=1 to skip them)"
)
MAX_UPLOAD_MB = 1  # the server's FORAM_MAX_UPLOAD_MB: an oversized upload stays cheap
FIRST_RENDER_S = 180  # Voila renders after the kernel has run the notebook
SERVER_START_S = 60
VIEWPORT = {"width": 1280, "height": 860}

# ------------------------------------------------------------------ workspace settings
# Small enough for CI (2 cores), large enough that a tiny CNN separates the four genera.
SEED = 11
SHAPE = 48  # voxels along each edge of a virtual volume
SLICE_SIZE = 48
SLICES_PER_TAXON = 320
MIN_MODELS = 3  # tiny preset: four genera with three specimens pass, Dictyoconus does not
# An ensemble needs two members (build_ensembles refuses one): two tiny CNNs, own seeds
MEMBERS = {"tiny_cnn": 0, "tiny_cnn_b": 1}
EPOCHS = 16
MATCH = {"n_orientations": 60, "n_offsets": 5, "size": 48, "descriptor_size": 32}
MATCH_CHECK_QUERIES = 6  # held-out sections setting the match limit (calibrate_match)


# ------------------------------------------------------------------ browser availability
def chromium_executable() -> str | None:
    """Path of the system Chromium (Playwright cannot download browsers here)."""
    for name in CHROMIUM_CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def require_browser() -> str:
    """The Chromium path. FORAM_SKIP_BROWSER=1 skips the browser tests; otherwise a
    missing Chromium (or Playwright) FAILS them with the command that installs it."""
    exe = chromium_executable()
    problem = None
    if exe is None:
        problem = INSTALL_HINT
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            problem = (
                "the browser tests need the `playwright` package: "
                "pip install -e '.[dev]' (or set FORAM_SKIP_BROWSER=1 to skip them)"
            )
    if os.environ.get("FORAM_SKIP_BROWSER", "") == "1":
        pytest.skip("FORAM_SKIP_BROWSER=1" + (f" ({problem})" if problem else ""))
    if problem:
        pytest.fail(problem, pytrace=False)
    return exe


# ------------------------------------------------------------------ the workspace
def workspace_params() -> dict:
    """The repository's params.yaml with the workspace's tiny settings."""
    params = copy.deepcopy(yaml.safe_load((REPO / "params.yaml").read_text()))
    params["profile"] = "custom"
    params["seed"] = SEED
    params["data"].update(
        source="virtual", raw_dir="data/virtual", manifest="data/virtual/manifest.csv"
    )
    params["virtual"].update(preset="tiny", shape=SHAPE, supersample=1, n_jobs=1)
    params["curate"]["min_models"] = MIN_MODELS
    # no training reserve: the tiny models train on the ordinary slices, quickly
    params["slice"].update(
        slices_per_taxon=SLICES_PER_TAXON, size=SLICE_SIZE, n_jobs=1, train_factor=1
    )
    params["train"].update(
        backbones={name: {"input_size": SLICE_SIZE} for name in MEMBERS},
        phase1_epochs=0,
        phase2_epochs=EPOCHS,
        restart_epochs=EPOCHS,
        patience=EPOCHS,
        batch_size=16,
    )
    params["train"]["augment"]["enabled"] = False
    params["ensemble"].update(max_k=2, n_weak=1)
    params.setdefault("match", {}).update(MATCH)
    params["match_check"] = {"queries": MATCH_CHECK_QUERIES, "keep": 0.95}
    return params


def build_workspace(root: Path, *, log=print) -> dict:
    """Run synthesize -> curate -> slice -> split -> train x2 -> ensemble -> evaluate ->
    index -> calibrate_match into `root` through the stages' ``foramlib.pipeline`` modules, as their
    notebooks run them; return a summary."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    from foramlib import config
    from foramlib.io.atomic import write_text
    from foramlib.learn import training

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    write_text(root / "params.yaml", yaml.safe_dump(workspace_params(), sort_keys=False))
    params = config.load_params(root / "params.yaml")  # validated as the pipeline does
    timings: dict[str, float] = {}

    def done(stage: str, t0: float) -> None:
        timings[stage] = round(time.perf_counter() - t0, 1)
        log(f"workspace: {stage} {timings[stage]} s")

    # all paths relative to the workspace, as dvc runs the stages
    with contextlib.chdir(root):
        # every stage through its foramlib.pipeline module, as its notebook runs it
        from foramlib.pipeline import calibrate_match as calibrate_stage
        from foramlib.pipeline import curate as curate_stage
        from foramlib.pipeline import ensemble as ensemble_stage
        from foramlib.pipeline import evaluate as evaluate_stage
        from foramlib.pipeline import index as index_stage
        from foramlib.pipeline import slice as slice_stage
        from foramlib.pipeline import split as split_stage
        from foramlib.pipeline import synthesize as synthesize_stage
        from foramlib.pipeline import train as train_stage

        t0 = time.perf_counter()
        synthesize_stage.run(
            synthesize_stage.SynthesizeStageConfig.from_params(params), progress=None
        )
        done("synthesize", t0)

        t0 = time.perf_counter()
        curate_stage.run(curate_stage.CurateStageConfig.from_params(params))
        done("curate", t0)

        t0 = time.perf_counter()
        slice_stage.run(slice_stage.SliceStageConfig.from_params(params), progress=None)
        done("slice", t0)

        # split (notebooks/split.ipynb)
        t0 = time.perf_counter()
        split_stage.run(split_stage.SplitStageConfig.from_params(params))
        done("split", t0)

        # train@<member> (notebooks/train.ipynb): the stage module, with a small CNN per
        # member (fast; different seeds)
        tp = params["train"]
        for member, extra_seed in MEMBERS.items():
            t0 = time.perf_counter()
            trained = train_stage.run(
                train_stage.TrainStageConfig(
                    backbone="tiny_cnn",
                    train=training.TrainConfig.from_params(
                        params,
                        "tiny_cnn",
                        input_size=tp["backbones"][member]["input_size"],
                        seed=params["seed"] + extra_seed,
                    ),
                    out_dir=f"models/{member}",
                    history_figure=f"results/figures/history_{member}.png",
                    live_dir=f"results/training/{member}",
                ),
                progress=None,
            )
            names = trained.classes
            done(f"train@{member}", t0)

        # ensemble, evaluate, index, calibrate_match
        t0 = time.perf_counter()
        ensemble_stage.run(ensemble_stage.EnsembleStageConfig.from_params(params))
        done("ensemble", t0)
        t0 = time.perf_counter()
        evaluated = evaluate_stage.run(
            evaluate_stage.EvaluateStageConfig.from_params(
                params, reference_dir=str(REPO / "reference" / "authors-results")
            )
        )
        done("evaluate", t0)
        t0 = time.perf_counter()
        index_stage.run(index_stage.IndexStageConfig.from_params(params))
        done("index", t0)
        t0 = time.perf_counter()
        calibrate_stage.run(calibrate_stage.CalibrateMatchStageConfig.from_params(params))
        done("calibrate_match", t0)

    return {
        "names": names,
        "final": evaluated.final,
        "test_accuracy": {
            m: round(r["accuracy"], 3) for m, r in evaluated.summary["models"].items()
        },
        "timings": timings,
    }


# ------------------------------------------------------------------ chosen test inputs
@dataclass(frozen=True)
class ClearSlice:
    """A test-split slice the workspace's final ensemble gets right with confidence."""

    slice_id: str
    specimen_id: str
    genus: str
    row: int  # row in the slice store's array of its volume
    probability: float  # the saved ensemble's probability of the true genus
    image: np.ndarray  # the stored (preprocessed) uint8 slice


def choose_clear_slice(root: Path, final: str, min_prob: float = 0.7) -> ClearSlice:
    """The correct test slice with the highest saved probability of its true genus.

    Chosen from the workspace's own saved test predictions
    (``results/predictions/<final>_test.csv``), never from the dashboard's output.
    """
    from foramlib.dataset import slicing

    preds = pd.read_csv(root / "results/predictions" / f"{final}_test.csv")
    cols = [c for c in preds.columns if c.startswith("p_")]
    names = [c[2:] for c in cols]
    probs = preds[cols].to_numpy()
    truth = np.array([names.index(t) for t in preds["true"]])
    p_true = probs[np.arange(len(preds)), truth]
    ok = (probs.argmax(axis=1) == truth) & (p_true >= min_prob)
    if not ok.any():
        raise AssertionError(
            f"the workspace's {final} predicts no test slice correctly with p >= {min_prob} "
            f"(best p of a true genus: {p_true.max():.2f}); train the tiny models longer"
        )
    best = int(np.flatnonzero(ok)[np.argmax(p_true[ok])])
    index = pd.read_csv(root / "data/split/index.csv", dtype={"specimen_id": str})
    row = index.set_index("slice_id").loc[preds["slice_id"].iloc[best]]
    _, arrays = slicing.load_slices(root / "data/slices", index)
    return ClearSlice(
        slice_id=str(row.name),
        specimen_id=str(row["specimen_id"]),
        genus=str(row["species"]),
        row=int(row["row"]),
        probability=float(p_true[best]),
        image=np.array(arrays[row["array"]][int(row["row"])]),
    )


@dataclass(frozen=True)
class MatchQuery:
    """An oblique section cut from one indexed specimen, encoded as a 16-bit PNG."""

    specimen_id: str
    genus: str
    png: bytes
    plane: tuple


def _png16(section: np.ndarray) -> bytes:
    import cv2

    lo, hi = float(section.min()), float(section.max())
    scaled = np.round((section - lo) / max(hi - lo, 1e-9) * 65535).astype(np.uint16)
    ok, buf = cv2.imencode(".png", scaled)
    assert ok
    return buf.tobytes()


def choose_match_query(
    root: Path, seed: int = 5, tries: int = 24, min_margin: float = 0.01
) -> MatchQuery:
    """An oblique section (random normal, offset and in-plane angle, as in
    notebooks/index.ipynb) that foramlib's matcher itself places in its source specimen,
    ahead of every other specimen by at least `min_margin` in combined score, and that
    the workspace's section check accepts (the test is of a genuine section; this tiny
    workspace's check, fitted on a few minutes' data, refuses about half of the raw
    oblique sections, where the real run's keeps 95-97 %).

    The dashboard test then checks that the app reproduces the library's answer; the
    matcher's own accuracy is measured by benchmarks/matching.py.
    """
    from foramlib.dataset.slicing import Plane, extract_slice
    from foramlib.inference.classify import section_refusal
    from foramlib.matching import index as indexing
    from foramlib.matching import search as matching

    collection = indexing.load_collection(root / "data/index", root)
    ids = collection.specimens["specimen_id"].tolist()
    rng = np.random.default_rng(seed)
    for _ in range(tries):
        specimen = ids[int(rng.integers(len(ids)))]
        prepared = collection.prepared(specimen)
        normal = rng.normal(size=3)
        normal /= np.linalg.norm(normal)
        offset = float(np.percentile((prepared.points - prepared.centre) @ normal, 50))
        plane = Plane(tuple(normal), offset, float(rng.uniform(0, 360)))
        png = _png16(extract_slice(collection.volume(specimen), plane))
        query = indexing.read_image(png, name="query.png")
        if section_refusal(query, root):
            continue
        found = matching.match(collection.index, query, volumes=collection.volumes)
        others = [m.scores["combined"] for m in found if m.specimen_id != specimen]
        margin = found[0].scores["combined"] - max(others, default=0.0)
        if found[0].specimen_id == specimen and margin >= min_margin:
            genus = collection.specimens.set_index("specimen_id").loc[specimen, "species"]
            return MatchQuery(specimen, str(genus), png, (plane.normal, offset, plane.angle))
    raise AssertionError(
        f"foramlib.matching.search placed none of {tries} oblique sections that the section "
        f"check accepts in their specimen with a score margin >= {min_margin}"
    )


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="session")
def chromium() -> str:
    return require_browser()


@pytest.fixture(scope="session")
def workspace(chromium, tmp_path_factory) -> Path:
    """The built workspace (after the browser check, so a missing Chromium fails fast)."""
    root = tmp_path_factory.mktemp("dashboard") / "workspace"
    t0 = time.perf_counter()
    summary = build_workspace(root)
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    (root.parent / "workspace.json").write_text(json.dumps(summary, indent=2))
    print(f"workspace built in {summary['seconds']} s: {summary}")
    return root


@pytest.fixture(scope="session")
def clear_slice(workspace) -> ClearSlice:
    final = json.loads((workspace / "results/metrics.json").read_text())["final"]
    return choose_clear_slice(workspace, final)


@pytest.fixture(scope="session")
def saved_predictions(workspace) -> pd.DataFrame:
    """The final ensemble's saved test predictions, one row per test slice."""
    final = json.loads((workspace / "results/metrics.json").read_text())["final"]
    preds = pd.read_csv(workspace / "results/predictions" / f"{final}_test.csv")
    cols = [c for c in preds.columns if c.startswith("p_")]
    names = [c[2:] for c in cols]
    probs = preds[cols].to_numpy()
    truth = np.array([names.index(t) for t in preds["true"]])
    return pd.DataFrame(
        {
            "slice_id": preds["slice_id"],
            "specimen_id": preds["specimen_id"].astype(str),
            "true": preds["true"],
            "p_true": probs[np.arange(len(preds)), truth],
            "predicted": np.asarray(names)[probs.argmax(axis=1)],
            "p_predicted": probs.max(axis=1),
            "correct": probs.argmax(axis=1) == truth,
        }
    )


@pytest.fixture(scope="session")
def match_query(workspace) -> MatchQuery:
    return choose_match_query(workspace)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class VoilaServer:
    url: str
    process: subprocess.Popen
    log: Path

    def log_tail(self, n: int = 120) -> str:
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError as exc:
            return f"(no server log: {exc})"
        return "\n".join(lines[-n:])


def start_voila(
    workspace: Path, log: Path, *, max_upload_mb=None, extra_env=None, extra_args=()
) -> VoilaServer:
    """Start the dashboard on a free local port and wait until the port answers.

    `extra_args` are appended to Voila's command line (they override ``voila.json``).
    """
    port = free_port()
    from foramlib.app.serve import voila_command, voila_env

    env = {
        **voila_env(workspace),
        "KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "tensorflow"),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONUNBUFFERED": "1",
        **({"FORAM_MAX_UPLOAD_MB": str(max_upload_mb)} if max_upload_mb else {}),
        **(extra_env or {}),
    }
    cmd = [*voila_command(port, APP), *extra_args]
    out = open(log, "w")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    out.close()
    server = VoilaServer(f"http://127.0.0.1:{port}/", proc, log)
    deadline = time.monotonic() + SERVER_START_S
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"voila exited with code {proc.returncode}:\n{server.log_tail()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return server
        except OSError:
            if time.monotonic() > deadline:
                stop_voila(server)
                raise RuntimeError(
                    f"voila did not answer on port {port} within {SERVER_START_S} s:\n"
                    f"{server.log_tail()}"
                ) from None
            time.sleep(0.2)


def wait_for(condition, seconds: float) -> bool:
    """Poll `condition` every half second for up to `seconds`; its last value."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.5)
    return condition()


def stop_voila(server: VoilaServer) -> None:
    """Terminate, then kill if it does not stop (its kernels go with it)."""
    proc = server.process
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


@pytest.fixture(scope="session")
def voila_server(workspace, tmp_path_factory):
    if not (REPO / APP).is_file():
        pytest.fail(f"{APP} is missing: the dashboard under test", pytrace=False)
    log = tmp_path_factory.mktemp("voila") / "voila.log"
    server = start_voila(workspace, log, max_upload_mb=MAX_UPLOAD_MB)
    yield server
    stop_voila(server)


@pytest.fixture
def empty_voila_server(tmp_path):
    """The dashboard over an empty workspace (no models): enough for checks over HTTP,
    without Chromium or a built workspace."""
    (tmp_path / "workspace").mkdir()
    server = start_voila(tmp_path / "workspace", tmp_path / "voila.log")
    try:
        yield server
    finally:
        stop_voila(server)


@pytest.fixture
def lab_voila_server(tmp_path):
    """The dashboard over an empty workspace, served as ``python -m foramlib.app.serve
    --allow-host foram.lab.example`` serves it: Voila reads the derived ``voila.json``."""
    from foramlib.app.serve import host_config

    config = host_config(json.loads((REPO / "voila.json").read_text()), ["foram.lab.example"])
    folder = tmp_path / "config"
    folder.mkdir()
    (folder / "voila.json").write_text(json.dumps(config))
    (tmp_path / "workspace").mkdir()
    server = start_voila(
        tmp_path / "workspace",
        tmp_path / "voila.log",
        extra_args=[f"--Voila.config_file_paths={folder}"],
    )
    try:
        yield server
    finally:
        stop_voila(server)


@pytest.fixture(scope="session")
def browser(chromium):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call":
        item.stash[_FAILED] = report.failed
    return report


_FAILED = pytest.StashKey[bool]()


@pytest.fixture(scope="session")
def screenshot_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="session")
def screenshot(screenshot_dir):
    """``screenshot(page, name)``: a PNG of the page, kept as a test artefact."""
    extra = os.environ.get("FORAM_SCREENSHOTS_DIR")

    def take(page, name: str, *, full_page: bool = True) -> Path:
        path = screenshot_dir / f"{name}.png"
        size = page.viewport_size
        if full_page:  # Voila scrolls inside the page: grow the window to the whole app
            bottom = page.evaluate(
                "() => document.querySelector('.foram-app').getBoundingClientRect().bottom"
            )
            height = int(min(max(size["height"], bottom + 24), 4000))
            page.set_viewport_size({"width": size["width"], "height": height})
        try:
            page.screenshot(path=str(path))
        finally:
            page.set_viewport_size(size)
        if extra:
            target = Path(extra)
            if not target.is_absolute():
                target = REPO / target
            target.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target / path.name)
        return path

    return take


@pytest.fixture
def page(request, browser, voila_server, screenshot_dir):
    """A fresh dashboard session: the page is open and ``.foram-app`` is visible."""
    context = browser.new_context(viewport=VIEWPORT)
    pg = context.new_page()
    console: list[str] = []
    pg.on("console", lambda m: console.append(f"{m.type}: {m.text}") if m.type == "error" else None)
    pg.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
    try:
        pg.goto(voila_server.url, timeout=FIRST_RENDER_S * 1000)
        pg.locator(".foram-app").wait_for(state="visible", timeout=FIRST_RENDER_S * 1000)
    except Exception:
        console_text = "\n".join(console[-20:])
        pytest.fail(
            f"the dashboard did not render within {FIRST_RENDER_S} s.\n"
            f"browser errors:\n{console_text}\nserver log:\n{voila_server.log_tail()}",
            pytrace=False,
        )
    yield pg
    if request.node.stash.get(_FAILED, False):
        with contextlib.suppress(Exception):
            pg.screenshot(path=str(screenshot_dir / f"FAILED-{request.node.name}.png"))
        print("---- browser errors ----\n" + "\n".join(console[-30:]))
        print("---- voila server log (tail) ----\n" + voila_server.log_tail())
    context.close()


#: fixtures that start Chromium or a Voila server: a test using one is a browser test
_BROWSER_FIXTURES = {
    "browser",
    "page",
    "voila_server",
    "empty_voila_server",
    "culling_server",
    "lab_voila_server",
}


def pytest_collection_modifyitems(config, items):
    """Mark every test here that drives a browser or a server ``browser`` and ``slow``,
    so that ``-m browser`` and ``-m "not slow"`` select what they say; the tests that
    read ``voila.json`` alone stay unmarked."""
    for item in items:
        if _BROWSER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.browser)
            item.add_marker(pytest.mark.slow)
