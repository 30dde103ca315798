"""The virtual micro-CT collection: counts, determinism, morphology, artefacts."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import zlib

import numpy as np
import pandas as pd
import pytest

from foramlib import workers
from foramlib.io.volumes import read_manifest, read_volume
from foramlib.virtual import collection as virtual

_ENV_BEFORE = os.environ.get("NPY_DISABLE_CPU_FEATURES")

PAPER_TABLE2 = {
    "Chrysalidina": 16,
    "Ataxophragmium": 7,
    "Baculogypsina": 7,
    "Minoxia": 6,
    "Elphidiella": 6,
    "Fallotia": 6,
    "Arumella": 5,
    "Lockhartia": 5,
    "Orbitoides": 5,
    "Rhapydionina": 5,
    "Alveolina": 4,
    "Coskinolina": 4,
}


def test_paper_preset_mirrors_the_paper_counts():
    taxa = virtual.paper_taxa()
    assert len(taxa) == 27
    assert sum(t.n_volumes for t in taxa) == 97
    kept = {t.species: t.n_volumes for t in taxa if t.n_specimens >= 4}
    assert kept == PAPER_TABLE2
    assert sum(kept.values()) == 76
    # every dropped taxon really has fewer than four distinct specimens
    assert all(t.n_specimens < 4 for t in taxa if t.species not in PAPER_TABLE2)


def test_plan_gives_repeat_scans_the_specimen_seed_but_a_new_scan_seed():
    plans = virtual.plan_collection(virtual.paper_taxa(), seed=3)
    assert len(plans) == 97
    assert len({p.file for p in plans}) == 97
    by_specimen = pd.DataFrame([vars(p) for p in plans]).groupby("specimen_id")
    repeats = by_specimen.filter(lambda g: len(g) > 1)
    assert len(repeats) > 0
    for _, g in repeats.groupby("specimen_id"):
        assert g["specimen_seed"].nunique() == 1
        assert g["scan_seed"].nunique() == len(g)
        assert g["species"].nunique() == 1


def test_plan_is_stable_when_another_taxon_changes():
    base = virtual.plan_collection(virtual.tiny_taxa(), seed=1)
    changed_taxa = list(virtual.tiny_taxa())
    changed_taxa[-1] = virtual.TaxonSpec("Dictyoconus", 3, 3, "coskinolina")
    changed = virtual.plan_collection(changed_taxa, seed=1)
    assert base[0] == changed[0]  # Chrysalidina untouched


@pytest.mark.parametrize("plan", sorted(virtual._PLANS))
def test_every_body_plan_renders_a_hollow_chambered_test(plan):
    spec = virtual.TaxonSpec("X", 1, 1, plan)
    scan = virtual.plan_collection([spec], seed=11)[0]
    vol, voxel_um = virtual.render_scan(scan, shape=48, supersample=1)
    assert vol.shape == (48, 48, 48) and vol.dtype == np.float32
    assert np.isfinite(vol).all()
    assert 0.5 < voxel_um < 200
    # the calcite test is there, and it is not a solid blob: inside the bright
    # outline there are darker chambers
    morph, _, _ = virtual._specimen(scan)
    step = max(morph["extent"]) / 64  # 128 samples across: the quick profile's resolution
    axis = ((np.arange(128) + 0.5 - 64) * step).astype(np.float32)
    g = virtual.Grid(*np.meshgrid(axis, axis, axis, indexing="ij"), vox=step)
    parts = virtual.build_specimen(scan, g)
    inside = parts.solid.sum()
    assert inside > 1000
    wall_fraction = parts.wall.sum() / inside
    assert 0.1 < wall_fraction < 0.9, wall_fraction


def test_same_seed_gives_byte_identical_files(tmp_path):
    taxa = virtual.tiny_taxa()[:2]
    a = virtual.synthesize_collection(
        tmp_path / "a", taxa, seed=5, shape=24, supersample=1, progress=None
    )
    b = virtual.synthesize_collection(
        tmp_path / "b", taxa, seed=5, shape=24, supersample=1, n_jobs=2, progress=None
    )
    c = virtual.synthesize_collection(
        tmp_path / "c", taxa, seed=6, shape=24, supersample=1, progress=None
    )
    pd.testing.assert_frame_equal(a, b)
    assert not a["voxel_size_um"].equals(c["voxel_size_um"])  # another seed, other specimens
    for f in a["file"]:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
        assert (tmp_path / "a" / f).read_bytes() != (tmp_path / "c" / f).read_bytes()
    assert (tmp_path / "a" / "manifest.csv").read_bytes() == (
        tmp_path / "b" / "manifest.csv"
    ).read_bytes()


def test_collection_is_a_valid_manifest_with_voxel_sizes(tiny_collection):
    manifest = read_manifest(tiny_collection / "manifest.csv")
    assert len(manifest) == 14
    assert set(manifest["source"]) == {"virtual"}
    repeat = manifest[manifest["notes"].str.contains("repeat scan")]
    assert len(repeat) == 1 and repeat["species"].iloc[0] == "Chrysalidina"
    vol = read_volume(manifest["path"].iloc[0])
    assert vol.data.shape == (32, 32, 32)
    assert vol.voxel_size_um == pytest.approx(manifest["voxel_size_um"].iloc[0], rel=1e-4)
    summary = json.loads((tiny_collection / "collection.json").read_text())
    assert summary["source"] == "virtual" and summary["n_volumes"] == 14


def test_repeat_scans_show_the_same_specimen_differently():
    plans = [
        p
        for p in virtual.plan_collection(virtual.tiny_taxa(), seed=2)
        if p.specimen_id == "V-CHRY-01"
    ]
    assert [p.repeat for p in plans] == [0, 1]
    first, _ = virtual.render_scan(plans[0], shape=32, supersample=1)
    second, _ = virtual.render_scan(plans[1], shape=32, supersample=1)
    assert not np.allclose(first, second)
    assert virtual._specimen(plans[0]) == virtual._specimen(plans[1])


def test_scan_artefacts_are_present_across_the_collection():
    plans = virtual.plan_collection(virtual.paper_taxa(), seed=0)
    conds = [virtual._scan_conditions(p) for p in plans]
    assert any(c["matrix"] for c in conds) and not all(c["matrix"] for c in conds)
    assert any(c["stem"] for c in conds)
    assert any(c["rings"] for c in conds)
    assert any(c["pyrite"] for c in conds)
    noise = [c["noise"] for c in conds]
    assert 0.02 <= min(noise) and max(noise) <= 0.08
    damaged = [p for p in plans if virtual._specimen(p)[1]]
    orbi = [p for p in plans if p.species == "Orbitoides"]
    assert damaged and sum(bool(virtual._specimen(p)[1]) for p in orbi) >= 2


def test_ring_artefacts_are_the_same_in_every_axial_slice():
    plan = virtual.plan_collection([virtual.TaxonSpec("X", 1, 1, "fallotia")], seed=0)[0]
    cond = virtual._scan_conditions(plan)
    cond.update(rings=5, noise=0.0, stem=False, cupping=0.0, blur=0.5)
    vol = np.zeros((32, 32, 32), np.float32)
    virtual._add_scan_artefacts(vol, cond, np.random.default_rng(0), np.full(3, 16.0), 10.0)
    assert np.ptp(vol) > 0.01
    np.testing.assert_allclose(vol[:, :, 3], vol[:, :, 20], atol=1e-6)


def test_partial_volume_gives_intermediate_edge_values():
    plan = virtual.plan_collection([virtual.TaxonSpec("X", 1, 1, "orbitoides")], seed=4)[0]
    vol, _ = virtual.render_scan(plan, shape=32, supersample=2)
    # a supersampled edge produces a spread of values, not two levels plus noise
    hist, _ = np.histogram(vol, bins=20, range=(0.1, 0.9))
    assert (hist > 0).sum() >= 15


def test_low_contrast_matrix_scan_has_bright_background():
    plans = virtual.plan_collection(virtual.paper_taxa(), seed=0)
    plan = next(p for p in plans if virtual._scan_conditions(p)["matrix"])
    vol, _ = virtual.render_scan(plan, shape=32, supersample=1)
    corner = vol[:4, :4, -4:].mean()
    assert 0.4 < corner < 0.9


def test_written_volume_compresses_like_a_scan_not_like_zeros(tiny_collection):
    raw = gzip.decompress((tiny_collection / "V-ORBI-01.nii.gz").read_bytes())
    assert len(zlib.compress(raw)) > 0.8 * len(raw)  # noisy data is incompressible


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(shape=8), "shape must be >= 16"),
        (dict(supersample=0), "supersample must be >= 1"),
    ],
)
def test_render_scan_rejects_bad_sizes(kwargs, match):
    plan = virtual.plan_collection(virtual.tiny_taxa(), seed=0)[0]
    with pytest.raises(ValueError, match=match):
        virtual.render_scan(plan, **kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(species="X", n_specimens=1, n_volumes=1, plan="nope"), "unknown plan 'nope'"),
        (dict(species="X", n_specimens=3, n_volumes=2, plan="fallotia"), "n_specimens=3"),
    ],
)
def test_taxon_spec_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        virtual.TaxonSpec(**kwargs)


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown virtual collection preset 'big'.*paper"):
        virtual.taxa_preset("big")


def test_workers_run_numpy_baseline_kernels():
    """numpy's optional (AVX2, AVX-512, ...) kernels round differently in the last bit,
    so the volumes are rendered where none is in use, whatever this process uses."""
    with workers.volume_pool(1, portable=True) as pool:
        targets, active = pool.submit(workers.numpy_optional_kernels).result()
    assert targets == workers.numpy_optional_kernels()[0]
    assert not any(active.values()), active
    assert os.environ.get("NPY_DISABLE_CPU_FEATURES") == _ENV_BEFORE  # nothing leaks


def test_files_do_not_depend_on_the_cpu_kernels_numpy_picks(tmp_path):
    """Another machine, simulated: a process whose numpy may use no optional CPU kernel
    (a CPU without AVX2) writes the same bytes as this one. On a CPU with none to begin
    with this passes trivially; with AVX2, V-CHRY-03 differs unless rendering avoids
    the CPU-specific float32 exp/log/sin/cos."""
    taxa = virtual.tiny_taxa()[:1]
    virtual.synthesize_collection(
        tmp_path / "here", taxa, seed=5, shape=24, supersample=1, progress=None
    )
    env = dict(os.environ, NPY_DISABLE_CPU_FEATURES=" ".join(workers.numpy_optional_kernels()[0]))
    code = (
        "import sys; from foramlib.virtual import collection as v; "
        "v.synthesize_collection(sys.argv[1], v.tiny_taxa()[:1], seed=5, shape=24, "
        "supersample=1, progress=None)"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "other")], env=env, check=True)
    names = sorted(p.name for p in (tmp_path / "here").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "other").iterdir())
    for name in names:
        assert (tmp_path / "here" / name).read_bytes() == (
            tmp_path / "other" / name
        ).read_bytes(), name


def test_interrupted_generation_keeps_the_previous_collection(tmp_path):
    out = tmp_path / "virtual"
    taxa = virtual.tiny_taxa()[:1]
    virtual.synthesize_collection(out, taxa, seed=1, shape=16, supersample=1, progress=None)
    before = sorted(p.name for p in out.iterdir())

    def boom(line):  # Ctrl-C after the first volume (rendering runs in worker processes)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        virtual.synthesize_collection(out, taxa, seed=2, shape=16, supersample=1, progress=boom)
    assert sorted(p.name for p in out.iterdir()) == before
    assert [p.name for p in tmp_path.iterdir()] == ["virtual"]  # no temp left behind


def test_unused_marker_replaces_the_folder(tmp_path):
    out = tmp_path / "virtual"
    out.mkdir()
    (out / "old.nii.gz").write_bytes(b"x")
    virtual.write_unused_marker(out, "manifest")
    assert [p.name for p in out.iterdir()] == ["NOT_USED.md"]
    assert "'manifest'" in (out / "NOT_USED.md").read_text()
