"""Per-volume work in this process, in local processes, or on a Dask cluster: same bytes."""

from __future__ import annotations

import os
import sys

import numpy as np
import pandas as pd
import pytest

from foramlib import workers
from foramlib.dataset import curation, slicing
from foramlib.dataset.preprocess import PreprocessConfig
from foramlib.io.volumes import read_manifest, write_nifti
from foramlib.matching import index as indexing
from foramlib.matching import search as matching
from foramlib.virtual import collection as virtual

distributed = pytest.importorskip("distributed")
import dask  # noqa: E402  (installed with distributed)

SLICING = slicing.SlicingConfig(
    slices_per_taxon=24, offsets_per_orientation=3, preprocess=PreprocessConfig(size=32)
)
INDEX = matching.IndexConfig(
    n_orientations=12, n_offsets=3, descriptor_size=16, preprocess=PreprocessConfig(size=32)
)


@pytest.fixture(autouse=True)
def _no_scheduler(monkeypatch):
    monkeypatch.delenv(workers.SCHEDULER_ENV, raising=False)


@pytest.fixture(scope="module")
def cluster():
    """A Dask cluster of two single-thread workers in this process (starts in ~1 s)."""
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0"
    ) as local:
        yield local


@pytest.fixture(scope="module")
def portable_cluster():
    """A Dask cluster of one worker process started as portable jobs need it: numpy's
    optional kernels switched off before numpy is imported (~3 s to start)."""
    key = "distributed.nanny.pre-spawn-environ"
    env = {workers.NUMPY_KERNELS_ENV: " ".join(workers.numpy_optional_kernels()[0])}
    # the nanny sets its pre-spawn environment in THIS process's os.environ and leaves
    # it there; a later test in this process (pytest-xdist keeps files together, in any
    # order) would then read it as if the test runner had been started with it
    before = os.environ.get(workers.NUMPY_KERNELS_ENV)
    try:
        with (
            dask.config.set({key: {**dask.config.get(key), **env}}),
            distributed.LocalCluster(
                n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0"
            ) as local,
        ):
            yield local
    finally:
        if before is None:
            os.environ.pop(workers.NUMPY_KERNELS_ENV, None)
        else:
            os.environ[workers.NUMPY_KERNELS_ENV] = before


@pytest.fixture
def on_dask(cluster, monkeypatch):
    monkeypatch.setenv(workers.SCHEDULER_ENV, cluster.scheduler_address)
    return cluster


def _files(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_inline_pool_runs_each_job_when_its_result_is_asked_for():
    ran = []

    def job(x):
        ran.append(x)
        return x * 10

    with workers.volume_pool(1) as pool:
        futures = [pool.submit(job, x) for x in (1, 2, 3)]
        assert ran == []  # nothing runs ahead: a local loop, one volume in memory at a time
        assert futures[0].result() == 10 and ran == [1]
        assert [f.result() for f in futures] == [10, 20, 30] and ran == [1, 2, 3]
        assert list(pool.map(job, [4, 5])) == [40, 50]


def test_inline_pool_hands_a_job_error_to_the_caller():
    with workers.volume_pool(1) as pool:
        bad = pool.submit(int, "x")
        good = pool.submit(int, "7")
        assert isinstance(bad.exception(), ValueError)
        with pytest.raises(ValueError, match="invalid literal"):
            bad.result()
        assert good.result() == 7


@pytest.mark.parametrize("n_jobs", [0, -1, 1.5, "2", True])
def test_bad_n_jobs_is_refused_with_its_value(n_jobs):
    with pytest.raises(ValueError, match=f"n_jobs must be an integer >= 1, got {n_jobs!r}"):
        with workers.volume_pool(n_jobs):
            pass


def test_local_processes_keep_the_order():
    with workers.volume_pool(2) as pool:
        assert list(pool.map(abs, range(-5, 0))) == [5, 4, 3, 2, 1]


def _kernels_in_use(_job=None) -> tuple[list[str], bool]:
    """numpy's optional kernels in use, and whether OpenCV may pick SIMD or IPP code."""
    import cv2

    numpy_kernels = [t for t, on in workers.numpy_optional_kernels()[1].items() if on]
    return numpy_kernels, cv2.useOptimized() or cv2.ipp.useIPP()


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_portable_jobs_run_on_baseline_numpy_and_opencv(n_jobs):
    import cv2

    with workers.volume_pool(n_jobs, portable=True) as pool:
        seen = [pool.submit(_kernels_in_use).result(), *pool.map(_kernels_in_use, [1, 2])]
        assert list(pool.map(abs, [-1, 2])) == [1, 2]
    assert seen == [([], False)] * 3
    assert cv2.useOptimized()  # this process keeps its fast paths


def test_unreachable_scheduler_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(workers, "_CONNECT_TIMEOUT", "1s")
    monkeypatch.setenv(workers.SCHEDULER_ENV, "tcp://127.0.0.1:9")
    with pytest.raises(RuntimeError, match=r"FORAM_DASK_SCHEDULER='tcp://127.0.0.1:9'.*reach"):
        with workers.volume_pool(1):
            pass


def test_missing_distributed_package_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import fails
    monkeypatch.setenv(workers.SCHEDULER_ENV, "tcp://127.0.0.1:8786")
    with pytest.raises(RuntimeError, match=r"pip install 'foramlib\[cluster\]'"):
        with workers.volume_pool(1):
            pass


def test_blank_scheduler_variable_means_local(monkeypatch):
    monkeypatch.setenv(workers.SCHEDULER_ENV, "  ")
    assert workers.dask_scheduler() is None


def test_jobs_run_on_the_cluster(on_dask):
    with workers.volume_pool(1) as pool:
        assert type(pool).__module__.startswith("distributed")
        assert list(pool.map(abs, [-3, 2, -1])) == [3, 2, 1]


def test_slice_store_on_dask_is_byte_identical(
    tiny_collection, tmp_path, monkeypatch, portable_cluster
):
    manifest = read_manifest(tiny_collection / "manifest.csv")
    local = slicing.build_slice_store(
        manifest, tmp_path / "local", SLICING, seed=3, train_factor=2, progress=None
    )
    monkeypatch.setenv(workers.SCHEDULER_ENV, portable_cluster.scheduler_address)
    remote = slicing.build_slice_store(
        manifest, tmp_path / "dask", SLICING, seed=3, train_factor=2, progress=None
    )
    pd.testing.assert_frame_equal(local, remote)
    assert _files(tmp_path / "local") == _files(tmp_path / "dask")


def test_slicing_on_workers_with_cpu_specific_numpy_is_refused(tiny_collection, tmp_path, on_dask):
    """The store's plane normals and pixels would depend on the CPU (as the rendering
    would): threads of this process are no place for it, and nothing is written."""
    if not any(workers.numpy_optional_kernels()[1].values()):
        pytest.skip("this CPU gives numpy no optional kernel to use")
    manifest = read_manifest(tiny_collection / "manifest.csv")
    with pytest.raises(RuntimeError, match="start Dask workers with NPY_DISABLE_CPU_FEATURES="):
        slicing.build_slice_store(manifest, tmp_path / "s", SLICING, progress=None)
    assert not (tmp_path / "s").exists()


def test_a_volume_that_fails_on_a_worker_is_reported_as_here(
    tmp_path, monkeypatch, portable_cluster
):
    rng = np.random.default_rng(0)
    good = np.zeros((24, 24, 24), np.float32)
    good[6:18, 6:18, 8:16] = 1.0
    write_nifti(tmp_path / "good.nii.gz", good + rng.normal(0, 0.01, good.shape), 5.0)
    write_nifti(tmp_path / "blank.nii.gz", rng.normal(0, 0.01, good.shape), 5.0)
    manifest = pd.DataFrame(
        {"file": ["good.nii.gz", "blank.nii.gz"], "specimen_id": ["G1", "B1"], "species": "A"}
    )
    manifest["path"] = [str(tmp_path / f) for f in manifest["file"]]
    with pytest.raises(slicing.SliceError) as here:
        slicing.build_slice_store(manifest, tmp_path / "a", SLICING, progress=None)
    monkeypatch.setenv(workers.SCHEDULER_ENV, portable_cluster.scheduler_address)
    with pytest.raises(slicing.SliceError) as there:
        slicing.build_slice_store(manifest, tmp_path / "b", SLICING, progress=None)
    assert str(there.value) == str(here.value) and "blank.nii.gz" in str(there.value)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_curation_checks_on_dask_match_and_report_every_problem(tmp_path, monkeypatch, cluster):
    raw = tmp_path / "raw"
    rng = np.random.default_rng(0)
    rows = []
    for i in range(4):
        write_nifti(raw / f"v{i}.nii.gz", rng.normal(100, 10, (12, 12, 12)), (5.0, 5.0, 5.0))
        rows.append(dict(file=f"v{i}.nii.gz", specimen_id=f"S{i}", species="A"))
    (raw / "v1.nii.gz").write_bytes(b"not a volume")
    write_nifti(raw / "v3.nii.gz", rng.normal(100, 10, (12, 12, 4)), (5.0, 5.0, 5.0))
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)

    with pytest.raises(curation.CollectionError) as here:
        curation.check_collection(manifest, raw)
    listed = read_manifest(manifest, raw)
    local = curation.volume_checks(listed)
    monkeypatch.setenv(workers.SCHEDULER_ENV, cluster.scheduler_address)
    remote = curation.volume_checks(listed)
    pd.testing.assert_frame_equal(local[0], remote[0])
    assert local[1] == remote[1] and len(remote[1]) == 2  # both bad volumes, in order
    assert remote[1][0].startswith("v1.nii.gz") and "v3.nii.gz" in remote[1][1]
    with pytest.raises(curation.CollectionError) as there:
        curation.check_collection(manifest, raw)
    assert str(there.value) == str(here.value)


def _ellipsoid(axes, seed) -> np.ndarray:
    g = np.indices((28,) * 3, dtype=np.float32) - 13.5
    inside = sum((g[i] / a) ** 2 for i, a in enumerate(axes)) <= 1.0
    vol = 0.1 + 0.8 * inside
    return (vol + np.random.default_rng(seed).normal(0, 0.02, vol.shape)).astype(np.float32)


def test_collection_index_on_dask_is_byte_identical(tmp_path, monkeypatch, portable_cluster):
    raw = tmp_path / "raw"
    rows = []
    for i, (axes, species) in enumerate([((10, 6, 5), "Alpha"), ((9, 9, 4), "Beta")]):
        write_nifti(raw / f"s{i}.nii.gz", _ellipsoid(axes, i) * 1000, (10.0, 10.0, 10.0))
        rows.append(dict(file=f"s{i}.nii.gz", specimen_id=f"S{i}", species=species))
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    indexing.build_collection_index(manifest, raw, tmp_path / "local", INDEX)
    monkeypatch.setenv(workers.SCHEDULER_ENV, portable_cluster.scheduler_address)
    messages = []
    indexing.build_collection_index(
        manifest, raw, tmp_path / "dask", INDEX, progress=lambda f, m: messages.append(m)
    )
    assert _files(tmp_path / "local") == _files(tmp_path / "dask")
    assert messages[0] == "indexing S0 (1/2)" and messages[1] == "indexing S1 (2/2)"


def test_rendering_on_workers_with_cpu_specific_numpy_is_refused(tmp_path, on_dask):
    """The cluster's workers are this process's threads, whose numpy uses its optional
    kernels: the virtual collection would then depend on the CPU, so it is refused
    with the setting the workers need, and nothing is written."""
    if not any(workers.numpy_optional_kernels()[1].values()):
        pytest.skip("this CPU gives numpy no optional kernel to use")
    with pytest.raises(RuntimeError, match="start Dask workers with NPY_DISABLE_CPU_FEATURES="):
        virtual.synthesize_collection(
            tmp_path / "v", virtual.tiny_taxa()[:1], seed=5, shape=24, supersample=1, progress=None
        )
    assert not (tmp_path / "v").exists()


@pytest.mark.slow
def test_rendering_on_portable_dask_workers_is_byte_identical(
    tmp_path, monkeypatch, portable_cluster
):
    taxa = virtual.tiny_taxa()[:1]
    kw = dict(seed=5, shape=24, supersample=1, progress=None)
    virtual.synthesize_collection(tmp_path / "local", taxa, **kw)
    monkeypatch.setenv(workers.SCHEDULER_ENV, portable_cluster.scheduler_address)
    virtual.synthesize_collection(tmp_path / "dask", taxa, **kw)
    assert _files(tmp_path / "local") == _files(tmp_path / "dask")
