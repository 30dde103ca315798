"""Where per-volume work runs: in this process, in local worker processes, or on Dask.

The stages' per-volume jobs (rendering the virtual collection, checking volumes at
curation, cutting the slices, indexing specimens for 3D matching) are independent of
each other. :func:`volume_pool` gives a stage one :class:`concurrent.futures.Executor`
for them, chosen in this order:

1. the environment variable ``FORAM_DASK_SCHEDULER`` names a Dask scheduler
   (``tcp://10.0.0.5:8786``; the ``dask scheduler`` command prints it): the jobs run on
   that cluster's workers, through :meth:`distributed.Client.get_executor`;
2. `n_jobs` > 1: a local pool of that many worker processes;
3. otherwise the jobs run one after the other in this process.

Results are always collected in submission order, so a stage writes the same bytes
wherever its jobs ran. That is also why the scheduler is an environment variable and
not a pipeline parameter: where the work runs does not change what it computes, and
DVC must not rerun a stage because a cluster was switched on. A Dask cluster's workers
need foramlib installed (the same version) and the workspace at the same path (shared
storage), since jobs read and write files by path.

Examples
--------
>>> with volume_pool(1) as pool:
...     list(pool.map(abs, [-2, 3]))
[2, 3]
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor

__all__ = [
    "SCHEDULER_ENV",
    "NUMPY_KERNELS_ENV",
    "check_portable_kernels",
    "dask_scheduler",
    "numpy_optional_kernels",
    "opencv_baseline",
    "volume_pool",
]

SCHEDULER_ENV = "FORAM_DASK_SCHEDULER"
NUMPY_KERNELS_ENV = "NPY_DISABLE_CPU_FEATURES"
# how long to wait for the scheduler before saying it cannot be reached
_CONNECT_TIMEOUT = "20s"


class _Deferred(Future):
    """A job of :class:`_InlineExecutor`: it runs when its result is first asked for."""

    def __init__(self, fn, args, kwargs):
        super().__init__()
        self._job = (fn, args, kwargs)

    def _run(self) -> None:
        if self._job is None:
            return
        fn, args, kwargs = self._job
        self._job = None
        try:
            self.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller by .result()
            self.set_exception(exc)

    def result(self, timeout=None):
        self._run()
        return super().result(timeout)

    def exception(self, timeout=None):
        self._run()
        return super().exception(timeout)


class _InlineExecutor(Executor):
    """Runs the jobs in the calling process, each when its result is asked for (in
    order, as a local loop would: progress shows as each finishes; no pickling)."""

    def submit(self, fn, /, *args, **kwargs):
        return _Deferred(fn, args, kwargs)

    def map(self, fn, *iterables, timeout=None, chunksize=1):
        return (fn(*args) for args in zip(*iterables, strict=False))


def dask_scheduler() -> str | None:
    """The Dask scheduler address from ``FORAM_DASK_SCHEDULER``, or None when unset."""
    address = os.environ.get(SCHEDULER_ENV, "").strip()
    return address or None


def numpy_optional_kernels() -> tuple[list[str], dict[str, bool]]:
    """numpy's run-time dispatched CPU targets and which of them this process uses."""
    try:
        from numpy._core import _multiarray_umath as umath  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import _multiarray_umath as umath
    targets = list(getattr(umath, "__cpu_dispatch__", []))
    features = getattr(umath, "__cpu_features__", {})
    return targets, {t: bool(features.get(t, False)) for t in targets}


def check_portable_kernels() -> None:
    """Refuse to run where numpy uses CPU-specific kernels (bytes would vary by CPU).

    :func:`volume_pool` calls it before every job of a portable pool (the virtual
    collection, the pretraining corpus, the slice store, the 3D index), wherever the
    job runs.
    """
    targets, active = numpy_optional_kernels()
    used = [t for t, on in active.items() if on]
    if used:
        raise RuntimeError(
            f"numpy uses the CPU-specific kernels {used} in this process, so rendered "
            f"volumes would differ between machines. Local runs avoid this by themselves; "
            f'start Dask workers with {NUMPY_KERNELS_ENV}="{" ".join(targets)}" in '
            f"their environment before Python starts (workers that a nanny spawns: the "
            f"Dask setting distributed.nanny.pre-spawn-environ)"
        )


def opencv_baseline() -> None:
    """Make OpenCV run the code every x86-64 CPU runs alike, in this process.

    OpenCV picks SIMD variants (SSE4, AVX2, AVX-512) and Intel IPP at run time, and they
    round differently: the same float32 resize gives a few pixels one grey level apart
    on two CPUs. ``cv2.setUseOptimized(False)`` keeps it to the code compiled for the
    baseline (SSE3 in the opencv-python wheels) and switches IPP off. The setting is
    process-wide and stays: it is meant for worker processes (and Dask workers) that
    run portable jobs, not for an interactive process.
    """
    import cv2

    cv2.setUseOptimized(False)


def _run_portable(fn, *args, **kwargs):
    """Run one job of a portable pool where it lands: check numpy, quieten OpenCV."""
    check_portable_kernels()
    opencv_baseline()
    return fn(*args, **kwargs)


class _PortableExecutor(Executor):
    """Wraps a pool so that each job runs through :func:`_run_portable` (picklable: the
    job travels as a partial of two module-level functions)."""

    def __init__(self, pool: Executor):
        self._pool = pool

    def submit(self, fn, /, *args, **kwargs):
        return self._pool.submit(_run_portable, fn, *args, **kwargs)

    def map(self, fn, *iterables, timeout=None, chunksize=1):
        return self._pool.map(
            functools.partial(_run_portable, fn), *iterables, timeout=timeout, chunksize=chunksize
        )

    def shutdown(self, wait=True, *, cancel_futures=False):
        self._pool.shutdown(wait=wait, cancel_futures=cancel_futures)


@contextlib.contextmanager
def _portable_processes(n_jobs: int) -> Iterator[Executor]:
    """A process pool whose numpy runs only its baseline kernels.

    numpy reads ``NPY_DISABLE_CPU_FEATURES`` once, when it is imported, so the workers
    are fresh ("spawn") processes that inherit it from this one's environment; it is
    set only while the pool starts and runs.
    """
    targets, _ = numpy_optional_kernels()
    old = os.environ.get(NUMPY_KERNELS_ENV)
    os.environ[NUMPY_KERNELS_ENV] = " ".join(targets)
    pool = ProcessPoolExecutor(
        max_workers=int(n_jobs), mp_context=multiprocessing.get_context("spawn")
    )
    try:
        with _closing(pool):
            yield pool
    finally:
        if old is None:
            os.environ.pop(NUMPY_KERNELS_ENV, None)
        else:
            os.environ[NUMPY_KERNELS_ENV] = old


@contextlib.contextmanager
def _dask_executor(address: str) -> Iterator[Executor]:
    try:
        from distributed import Client
    except ImportError:
        raise RuntimeError(
            f"{SCHEDULER_ENV}={address!r} asks for a Dask cluster, but the 'distributed' "
            "package is not installed: pip install 'foramlib[cluster]' (or unset "
            f"{SCHEDULER_ENV} to run here)"
        ) from None
    try:
        client = Client(address, timeout=_CONNECT_TIMEOUT, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise RuntimeError(
            f"{SCHEDULER_ENV}={address!r}: cannot reach the Dask scheduler ({exc}); "
            f"start it (dask scheduler) or unset {SCHEDULER_ENV} to run here"
        ) from None
    executor = client.get_executor()
    try:
        yield executor
    finally:
        executor.shutdown(wait=True)
        client.close()


@contextlib.contextmanager
def volume_pool(n_jobs: int = 1, *, portable: bool = False) -> Iterator[Executor]:
    """An executor for independent per-volume jobs (see the module notes).

    Parameters
    ----------
    n_jobs : int
        Local worker processes when no Dask scheduler is configured; 1 runs the jobs
        in this process.
    portable : bool
        The jobs must compute the same bytes on every x86-64 CPU: local jobs then run
        in fresh processes (even for ``n_jobs=1``) whose numpy keeps to its baseline
        kernels, and every job, local or on Dask, runs with :func:`opencv_baseline` and
        after :func:`check_portable_kernels` (Dask workers cannot be restarted from
        here: a worker whose numpy uses optional kernels refuses the job and names the
        setting it lacks).

    Yields
    ------
    concurrent.futures.Executor
        Use ``map`` or ``submit``; results come back in submission order.

    Raises
    ------
    ValueError
        If `n_jobs` is not an integer >= 1.
    RuntimeError
        If ``FORAM_DASK_SCHEDULER`` is set and the scheduler cannot be reached, or the
        ``distributed`` package is missing.
    """
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or n_jobs < 1:
        raise ValueError(f"n_jobs must be an integer >= 1, got {n_jobs!r}")
    address = dask_scheduler()
    if address:
        context = _dask_executor(address)
    elif portable:
        context = _portable_processes(n_jobs)
    elif n_jobs > 1:
        context = _closing(ProcessPoolExecutor(n_jobs))
    else:
        context = _closing(_InlineExecutor())
    with context as pool:
        yield _PortableExecutor(pool) if portable else pool


@contextlib.contextmanager
def _closing(pool: Executor) -> Iterator[Executor]:
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
