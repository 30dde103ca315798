"""The virtual micro-CT collection: seeded procedural 3D foraminifera.

The paper's scans are not public, so the pipeline's embedded default input is a
collection generated here. Each genus has a consistent 3D signature (test shape,
coiling, chambers, pillars, chamberlets, lateral chambers, spines) that survives random
2D sectioning, with the confusions the paper reports built in (lenses with lateral
chamberlets, small agglutinated cones). Scans carry the usual micro-CT artefacts:
partial volume, blur, noise, ring artefacts, cupping, a metal mounting stem with
streaks, infilled chambers, a low-contrast carbonate matrix, and damage.

Everything is deterministic for a seed: specimen morphology comes from a per-specimen
seed (so repeat scans of one specimen share it) and scan conditions from a per-file
seed. Units inside the generator are millimetres in the specimen's own frame, whose
z axis is the coiling or growth axis.

Same seed, same bytes on another machine: numpy picks its float32 ``exp``/``log``/
``sin``/``cos`` (and, on AVX-512 CPUs, float64 transcendental) kernels by CPU at run
time, and those kernels round differently in the last bit, which the 16-bit
quantisation of the written volumes then turns into different files.
:func:`synthesize_collection` therefore renders in worker processes started with
``NPY_DISABLE_CPU_FEATURES`` naming every optional kernel, so every CPU of an
architecture runs numpy's baseline code; the numeric stack itself is pinned by
``constraints.txt``. Small vectors are normed in plain float64 arithmetic, not BLAS.

Examples
--------
>>> import numpy as np
>>> plan = plan_collection(tiny_taxa(), seed=0)
>>> len(plan), plan[0].species
(14, 'Chrysalidina')
>>> vol, voxel_um = render_scan(plan[0], shape=32)
>>> vol.shape, vol.dtype, bool(np.isfinite(vol).all())
((32, 32, 32), dtype('float32'), True)
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.spatial.transform import Rotation

from foramlib.io.atomic import atomic_dir
from foramlib.workers import volume_pool

__all__ = [
    "TaxonSpec",
    "ScanPlan",
    "PAPER_GENERA",
    "paper_taxa",
    "tiny_taxa",
    "taxa_preset",
    "plan_collection",
    "build_specimen",
    "render_scan",
    "shell_axes",
    "synthesize_collection",
    "describe_collection",
    "write_unused_marker",
]

WALL_TYPES = ("agglutinated", "hyaline", "porcelaneous")


@dataclass(frozen=True)
class TaxonSpec:
    """How many scans of one taxon the collection holds.

    Parameters
    ----------
    species : str
        Taxon name written to the manifest's ``species`` column.
    n_specimens : int
        Distinct physical specimens (distinct ``specimen_id`` values).
    n_volumes : int
        Scan files; ``n_volumes - n_specimens`` of them are repeat scans.
    plan : str
        Name of the body plan in the morphology registry used to build it, or
        ``shell-<id>`` for a generic shell (:mod:`foramlib.virtual.shells`).
    """

    species: str
    n_specimens: int
    n_volumes: int
    plan: str

    def __post_init__(self) -> None:
        try:
            _plan_entry(self.plan)
        except ValueError:
            raise ValueError(
                f"TaxonSpec {self.species!r}: unknown plan {self.plan!r}; "
                f"valid plans: {sorted(_PLANS)} or a generic shell 'shell-<id>'"
            ) from None
        if not 1 <= self.n_specimens <= self.n_volumes:
            raise ValueError(
                f"TaxonSpec {self.species!r}: need 1 <= n_specimens <= n_volumes, "
                f"got n_specimens={self.n_specimens}, n_volumes={self.n_volumes}"
            )


@dataclass(frozen=True)
class ScanPlan:
    """One file of the collection: which specimen, and the seeds that make it."""

    file: str
    specimen_id: str
    species: str
    plan: str
    specimen_seed: int
    scan_seed: int
    repeat: int  # 0 for the first scan of a specimen, 1, 2, ... for repeat scans


# The paper's 12 genera with Table 2's 3D-model counts (76 volumes). Repeat scans sit
# only in genera that keep >= 4 distinct specimens, so curation keeps all twelve.
PAPER_GENERA: tuple[TaxonSpec, ...] = ()  # filled below, after the plan registry

# Rarer taxa that curation must drop: 15 taxa, 21 volumes (97 - 76). Dictyoconus has
# four files but only three specimens, so a file-count filter would wrongly keep it.
_RARE_TAXA = (
    ("Dictyoconus", 3, 4, "coskinolina"),
    ("Cuneolina", 2, 2, "arumella"),
    ("Nummulites", 2, 2, "elphidiella"),
    ("Quinqueloculina", 2, 2, "ataxophragmium"),
    ("Dicyclina", 1, 1, "orbitoides"),
    ("Omphalocyclus", 1, 1, "orbitoides"),
    ("Siderolites", 1, 1, "baculogypsina"),
    ("Rotalia", 1, 1, "lockhartia"),
    ("Textularia", 1, 1, "minoxia"),
    ("Pseudolituonella", 1, 1, "coskinolina"),
    ("Praealveolina", 1, 1, "alveolina"),
    ("Spiroloculina", 1, 1, "fallotia"),
    ("Triloculina", 1, 1, "ataxophragmium"),
    ("Pfenderina", 1, 1, "chrysalidina"),
    ("Sirtina", 1, 1, "lockhartia"),
)


# ----------------------------------------------------------------------------------------
# Geometry helpers. Fields are approximate signed distances in mm (negative inside).
# ----------------------------------------------------------------------------------------
class Grid:
    """Specimen-frame coordinates (mm) of the voxels of one evaluation box."""

    def __init__(self, x: np.ndarray, y: np.ndarray, z: np.ndarray, vox: float):
        self.x, self.y, self.z, self.vox = x, y, z, vox
        self._r: np.ndarray | None = None
        self._phi: np.ndarray | None = None

    @property
    def r(self) -> np.ndarray:
        if self._r is None:
            self._r = np.hypot(self.x, self.y)
        return self._r

    @property
    def phi(self) -> np.ndarray:
        if self._phi is None:
            self._phi = np.arctan2(self.y, self.x)
        return self._phi

    def thick(self, mm: float) -> float:
        """A wall thickness that stays visible: at least 1.5 fine voxels."""
        return max(mm, 1.5 * self.vox)


def _sdf_ellipsoid(x, y, z, a, b, c):
    k = np.sqrt((x / a) ** 2 + (y / b) ** 2 + (z / c) ** 2)
    return (k - 1.0) * min(a, b, c)


def _sdf_cone(r, z, height, radius, dome=0.0):
    """Cone with its apex at z=0 opening towards +z, top cap domed by `dome` mm."""
    slope = radius / height
    side = (r - slope * np.maximum(z, 0.0)) / np.sqrt(1.0 + slope**2)
    top = z - height - dome * (1.0 - np.minimum(r / radius, 1.0) ** 2)
    return np.maximum(np.maximum(side, top), -z)


def _sdf_lens(r, z, radius, half_thickness):
    """Biconvex lens: intersection of two spheres, with a sharp keel at `radius`."""
    big = (radius**2 + half_thickness**2) / (2.0 * half_thickness)
    off = big - half_thickness
    upper = np.sqrt(r**2 + (z + off) ** 2) - big
    lower = np.sqrt(r**2 + (z - off) ** 2) - big
    return np.maximum(upper, lower)


def _near_integer(q, mm_per_unit, half_width):
    """Walls where a continuous index `q` crosses an integer, `half_width` mm each side."""
    return np.abs(q - np.round(q)) * mm_per_unit < half_width


def _pillars(x, y, spacing, radius, jitter_phase=(0.0, 0.0)):
    """Rods parallel to z on a square lattice (rotated 30 degrees to avoid axis bias)."""
    c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
    u = (c * x - s * y) / spacing + jitter_phase[0]
    v = (s * x + c * y) / spacing + jitter_phase[1]
    du = (u - np.round(u)) * spacing
    dv = (v - np.round(v)) * spacing
    return du**2 + dv**2 < radius**2


def _planispiral_walls(g: Grid, rho, r0, growth, per_whorl, t_spiral, t_septum, curve=0.25):
    """Spiral wall and septa of a planispiral coil around z, in the radial coordinate `rho`.

    Whorl boundaries follow a logarithmic spiral rho = r0 * growth**(s); chambers are
    counted along the coil, `per_whorl` per whorl, septa bent backwards by `curve`.
    """
    theta = (g.phi + np.pi) / (2.0 * np.pi)
    safe = np.maximum(rho, r0 * 0.25)
    w = np.log(safe / r0) / np.log(growth) - theta
    spiral = _near_integer(w, safe * np.log(growth), t_spiral / 2)
    chamber = (np.floor(w) + theta) * per_whorl + curve * (w - np.floor(w))
    septa = _near_integer(chamber, 2.0 * np.pi * safe / per_whorl, t_septum / 2)
    walls = (spiral | septa) & (rho > r0)
    proloculus = np.abs(rho - r0) < t_spiral / 2
    return walls | proloculus


def _chamber_union(g: Grid, centres, radii, squash, t_wall):
    """Test made of overlapping spheroidal chambers; septa where two chambers meet."""
    shape = g.x.shape
    d1 = np.full(shape, np.inf, np.float32)
    d2 = np.full(shape, np.inf, np.float32)
    for (cx, cy, cz), rad, sq in zip(centres, radii, squash, strict=True):
        d = np.sqrt((g.x - cx) ** 2 + (g.y - cy) ** 2 + ((g.z - cz) / sq) ** 2) - rad
        closer = d < d1
        d2 = np.where(closer, d1, np.minimum(d2, d))
        d1 = np.where(closer, d, d1)
    solid = d1 < 0
    wall = solid & ((d1 > -t_wall) | (d2 - d1 < t_wall))
    return solid, wall


def _trochospiral_chambers(rng, n, first, last, height, turns, coil_radius):
    """Chamber centres and radii along a conical helix, growing from apex (z=0) up."""
    k = np.linspace(0.0, 1.0, n)
    angle = 2.0 * np.pi * turns * k + rng.uniform(0, 2 * np.pi)
    radii = first * (last / first) ** k
    rad_axis = coil_radius * (0.25 + 0.75 * k)
    centres = np.stack([rad_axis * np.cos(angle), rad_axis * np.sin(angle), height * k], axis=1)
    return centres, radii


@dataclass
class Parts:
    """What a body plan builds: the test's inside (`solid`) and its calcite (`wall`)."""

    solid: np.ndarray
    wall: np.ndarray


# ----------------------------------------------------------------------------------------
# Body plans: a sampler of morphology parameters (specimen variation) and a builder.
# Each sampler returns a dict with at least: extent (half-extents in mm, x/y/z),
# wall_type, and whatever its builder reads.
# ----------------------------------------------------------------------------------------
def _u(rng, lo, hi):
    return float(rng.uniform(lo, hi))


def _sample_chrysalidina(rng):
    h = _u(rng, 0.6, 1.5)
    radius = h / _u(rng, 1.5, 2.5)
    return dict(
        height=h,
        radius=radius,
        dome=_u(rng, 0.1, 0.3) * radius,
        n_levels=int(rng.integers(7, 12)),
        twist=_u(rng, -0.6, 0.6),
        central=_u(rng, 0.35, 0.5),
        pillar_spacing=radius * _u(rng, 0.18, 0.26),
        wall_type="agglutinated",
        extent=(radius, radius, h / 2 + 0.15 * radius),
    )


def _build_chrysalidina(g: Grid, m) -> Parts:
    z = g.z + m["height"] / 2  # apex at z=0 in the builder's frame
    sdf = _sdf_cone(g.r, z, m["height"], m["radius"], m["dome"])
    solid = sdf < 0
    t = g.thick(0.045 * m["radius"])
    outer = sdf > -t
    # triserial: three columns of low broad chambers, each column offset by 1/3 level
    phi = g.phi - m["twist"] * z / m["height"] * np.pi
    column = np.floor((phi + np.pi) / (2 * np.pi / 3))
    level_h = m["height"] / m["n_levels"]
    level = (z - 0.3 * level_h * (g.r / m["radius"]) ** 2) / level_h - column / 3
    septa = _near_integer(level, level_h, t / 2)
    radial = _near_integer((phi + np.pi) / (2 * np.pi / 3), 2 * np.pi / 3 * g.r, t / 2)
    local_r = m["radius"] * np.clip(z / m["height"], 0, 1)
    central = g.r < m["central"] * local_r
    pillars = central & _pillars(g.x, g.y, m["pillar_spacing"], 0.22 * m["pillar_spacing"])
    wall = solid & (outer | septa | (radial & ~central) | pillars)
    return Parts(solid, wall)


def _sample_ataxophragmium(rng):
    size = _u(rng, 0.5, 1.4)
    return dict(
        size=size,
        n=int(rng.integers(9, 15)),
        turns=_u(rng, 2.0, 3.0),
        elong=_u(rng, 0.9, 1.4),
        wall_type="agglutinated",
        extent=(0.55 * size, 0.55 * size, 0.55 * size * 1.4),
    )


def _build_ataxophragmium(g: Grid, m, rng) -> Parts:
    s = m["size"]
    n = m["n"]
    centres, radii = _trochospiral_chambers(
        rng, n, 0.08 * s, 0.32 * s, 0.55 * s * m["elong"], m["turns"], 0.22 * s
    )
    centres[:, 2] -= 0.3 * s * m["elong"]
    solid, wall = _chamber_union(g, centres, radii, np.full(n, 0.9), g.thick(0.03 * s))
    return Parts(solid, wall)


def _sample_minoxia(rng):
    h = _u(rng, 0.35, 0.9)
    radius = h / _u(rng, 1.2, 2.0)
    return dict(
        height=h,
        radius=radius,
        n=int(rng.integers(10, 16)),
        turns=_u(rng, 2.5, 4.0),
        wall_type="agglutinated",
        extent=(radius * 1.15, radius * 1.15, h * 0.65),
    )


def _build_minoxia(g: Grid, m, rng) -> Parts:
    # a small cone filled by a trochospiral of simple chambers: in axial sections it
    # gives the same triangle as Chrysalidina, without the pillars and columns
    h, rad = m["height"], m["radius"]
    z = g.z + h / 2
    cone = _sdf_cone(g.r, z, h, rad, dome=0.15 * rad)
    centres, radii = _trochospiral_chambers(
        rng, m["n"], 0.25 * rad, 0.75 * rad, 0.85 * h, m["turns"], 0.45 * rad
    )
    centres[:, 2] += 0.1 * h - h / 2
    chambers, septa = _chamber_union(g, centres, radii, np.full(m["n"], 0.8), g.thick(0.05 * rad))
    t = g.thick(0.05 * rad)
    solid = (cone < 0) & chambers
    wall = solid & ((cone > -t) | septa)
    return Parts(solid, wall)


def _sample_lens_with_laterals(rng, diameter, ratio, spines):
    radius = diameter / 2
    half = radius / ratio
    n_spines = int(rng.integers(4, 9)) if spines else 0
    spine_len = _u(rng, 0.35, 0.8) * radius if spines else 0.0
    angles = np.sort(rng.uniform(0, 2 * np.pi, n_spines) if spines else np.zeros(0))
    if spines:  # spread them out a little: real spines are roughly evenly spaced
        angles = np.linspace(0, 2 * np.pi, n_spines, endpoint=False) + rng.normal(0, 0.25, n_spines)
    tilts = rng.normal(0, 0.15, n_spines)
    reach = radius + spine_len
    return dict(
        radius=radius,
        half=half,
        spine_len=spine_len,
        spine_angles=angles.tolist(),
        spine_tilts=tilts.tolist(),
        ring=radius * _u(rng, 0.14, 0.2),
        cell=radius * _u(rng, 0.16, 0.22),
        layer=half * _u(rng, 0.25, 0.35),
        pillar_spacing=radius * _u(rng, 0.22, 0.32),
        wall_type="hyaline",
        extent=(reach, reach, half * 1.05),
    )


def _sample_orbitoides(rng):
    return _sample_lens_with_laterals(rng, _u(rng, 2.0, 6.0), _u(rng, 2.0, 4.0), spines=False)


def _sample_baculogypsina(rng):
    m = _sample_lens_with_laterals(rng, _u(rng, 0.7, 1.4), _u(rng, 1.6, 2.6), spines=True)
    return m


def _lens_interior(g: Grid, m, t):
    """Equatorial layer of cyclic chambers + lateral chamberlets + pillars (Orbitoides,
    Baculogypsina)."""
    radius, half = m["radius"], m["half"]
    eq_half = max(0.12 * half, 1.5 * t)
    equatorial = np.abs(g.z) < eq_half
    eq_floor = np.abs(np.abs(g.z) - eq_half) < t / 2
    rings = _near_integer(g.r / m["ring"], m["ring"], t / 2)
    n_radial = np.maximum(np.round(2 * np.pi * g.r / m["ring"]), 6)
    radial = _near_integer((g.phi + np.pi) / (2 * np.pi) * n_radial, m["ring"], t / 2)
    eq_walls = equatorial & (rings | radial)
    lateral = ~equatorial
    layer_idx = (np.abs(g.z) - eq_half) / m["layer"]
    floors = _near_integer(layer_idx, m["layer"], t / 2)
    # chessboard: each lateral layer's cells are offset by half a cell from the next
    shift = 0.5 * (np.floor(layer_idx) % 2)
    cells = _near_integer(g.x / m["cell"] + shift, m["cell"], t / 2) | _near_integer(
        g.y / m["cell"] + shift, m["cell"], t / 2
    )
    pillar_r = 0.16 * m["pillar_spacing"] * (1.3 - 0.6 * np.clip(g.r / radius, 0, 1))
    pillars = _pillars(g.x, g.y, m["pillar_spacing"], pillar_r) & lateral
    return eq_walls | eq_floor | (lateral & (floors | cells)) | pillars


def _build_orbitoides(g: Grid, m) -> Parts:
    sdf = _sdf_lens(g.r, g.z, m["radius"], m["half"])
    solid = sdf < 0
    t = g.thick(0.012 * m["radius"])
    wall = solid & ((sdf > -2 * t) | _lens_interior(g, m, t))
    return Parts(solid, wall)


def _build_baculogypsina(g: Grid, m) -> Parts:
    body = _sdf_lens(g.r, g.z, m["radius"], m["half"])
    t = g.thick(0.02 * m["radius"])
    solid = body < 0
    spines = np.zeros_like(solid)
    canals = np.zeros_like(solid)
    base = 0.35 * m["half"] + 0.12 * m["radius"]
    for ang, tilt in zip(m["spine_angles"], m["spine_tilts"], strict=True):
        d = np.array([np.cos(ang) * np.cos(tilt), np.sin(ang) * np.cos(tilt), np.sin(tilt)])
        along = g.x * d[0] + g.y * d[1] + g.z * d[2]
        perp = np.sqrt(np.maximum(g.x**2 + g.y**2 + g.z**2 - along**2, 0))
        tip = m["radius"] + m["spine_len"]
        frac = np.clip(along / tip, 0, 1)
        cone = (perp < base * (1 - frac) + 0.02 * m["radius"]) & (along > 0) & (along < tip)
        spines |= cone
        canals |= cone & (perp < 0.3 * base * (1 - frac)) & (along > 0.4 * m["radius"])
    interior = _lens_interior(g, m, t)
    solid = solid | spines
    wall = (solid & ((body > -2 * t) | interior) & (body < 0)) | (spines & ~canals & (body >= -t))
    return Parts(solid, wall)


def _sample_elphidiella(rng):
    radius = _u(rng, 0.25, 0.6)
    half = radius * _u(rng, 0.4, 0.55)
    return dict(
        radius=radius,
        half=half,
        growth=_u(rng, 1.9, 2.3),
        per_whorl=int(rng.integers(9, 13)),
        dimple=_u(rng, 0.25, 0.4),
        n_pores=int(rng.integers(3, 6)),
        wall_type="hyaline",
        extent=(radius, radius, half),
    )


def _build_elphidiella(g: Grid, m) -> Parts:
    radius, half = m["radius"], m["half"]
    lens = _sdf_ellipsoid(g.x, g.y, g.z, radius, radius, half)
    # umbilical depressions on both sides
    dimple_r = m["dimple"] * radius
    pole = half + 0.6 * dimple_r
    dimples = (
        np.minimum(np.sqrt(g.r**2 + (g.z - pole) ** 2), np.sqrt(g.r**2 + (g.z + pole) ** 2))
        - dimple_r
    )
    sdf = np.maximum(lens, -dimples)
    solid = sdf < 0
    t = g.thick(0.03 * radius)
    r0 = 0.1 * radius
    walls = _planispiral_walls(g, g.r, r0, m["growth"], m["per_whorl"], t, t, curve=0.35)
    wall = solid & ((sdf > -t) | walls)
    # sutural pores: a row of holes through the outer wall along each septum's trace
    theta = (g.phi + np.pi) / (2 * np.pi)
    w = np.log(np.maximum(g.r, r0) / r0) / np.log(m["growth"]) - theta
    chamber = (np.floor(w) + theta) * m["per_whorl"] + 0.35 * (w - np.floor(w))
    near_septum = _near_integer(chamber, 2 * np.pi * np.maximum(g.r, r0) / m["per_whorl"], 1.5 * t)
    pore_row = _near_integer(g.r / radius * m["n_pores"], radius / m["n_pores"], 1.2 * t)
    pores = near_septum & pore_row & (sdf > -2.5 * t)
    return Parts(solid, wall & ~pores)


def _sample_fallotia(rng):
    radius = _u(rng, 1.0, 2.5)
    half = radius * _u(rng, 0.6, 1.0)
    return dict(
        radius=radius,
        half=half,
        growth=_u(rng, 1.5, 1.8),
        per_whorl=int(rng.integers(12, 18)),
        septula=int(rng.integers(10, 16)),
        central=_u(rng, 0.12, 0.2),
        wall_type="porcelaneous",
        extent=(radius, radius, half),
    )


def _build_fallotia(g: Grid, m) -> Parts:
    radius, half = m["radius"], m["half"]
    sdf = _sdf_ellipsoid(g.x, g.y, g.z, radius, radius, half)
    solid = sdf < 0
    t = g.thick(0.012 * radius)
    coil = _planispiral_walls(g, g.r, 0.06 * radius, m["growth"], m["per_whorl"], 1.5 * t, t)
    # septula split each chamber into chamberlets stacked along the coiling axis
    septula = _near_integer(g.z / half * m["septula"] / 2, half * 2 / m["septula"], t / 2)
    central = g.r < m["central"] * radius
    pillars = central & _pillars(g.x, g.y, 0.05 * radius, 0.012 * radius + t / 2)
    wall = solid & ((sdf > -1.5 * t) | coil | (septula & ~central) | pillars)
    return Parts(solid, wall)


def _sample_arumella(rng):
    h = _u(rng, 0.4, 0.9)
    radius = h / _u(rng, 0.7, 1.2)
    return dict(
        height=h,
        radius=radius,
        dome=_u(rng, 0.25, 0.45) * radius,
        n_levels=int(rng.integers(4, 8)),
        n_radial=int(rng.integers(4, 7)),
        wall_type="agglutinated",
        extent=(radius, radius, h / 2 + 0.5 * radius),
    )


def _build_arumella(g: Grid, m) -> Parts:
    z = g.z + m["height"] / 2
    sdf = _sdf_cone(g.r, z, m["height"], m["radius"], m["dome"])
    solid = sdf < 0
    t = g.thick(0.05 * m["radius"])
    level_h = m["height"] / m["n_levels"]
    septa = _near_integer((z - 0.5 * level_h * (g.r / m["radius"]) ** 2) / level_h, level_h, t / 2)
    radial = _near_integer(
        (g.phi + np.pi) / (2 * np.pi) * m["n_radial"], 2 * np.pi * g.r / m["n_radial"], t / 2
    )
    wall = solid & ((sdf > -t) | septa | (radial & (g.r > 0.15 * m["radius"])))
    return Parts(solid, wall)


def _sample_lockhartia(rng):
    radius = _u(rng, 0.5, 1.5)
    h = radius * 2 * _u(rng, 0.35, 0.6)
    return dict(
        radius=radius,
        height=h,
        per_whorl=int(rng.integers(5, 8)),
        growth=_u(rng, 1.8, 2.4),
        umbilicus=_u(rng, 0.5, 0.7),
        pile_spacing=radius * _u(rng, 0.08, 0.12),
        wall_type="hyaline",
        extent=(radius, radius, h / 2 + 0.05 * radius),
    )


def _build_lockhartia(g: Grid, m) -> Parts:
    radius, h = m["radius"], m["height"]
    z = h / 2 - g.z  # apex (umbilical side) down at z=0, flat spiral side up at z=h
    sdf = _sdf_cone(g.r, z, h, radius, dome=-0.05 * radius)
    solid = sdf < 0
    t = g.thick(0.025 * radius)
    spiral_layer = z > h - 0.35 * h
    coil = _planispiral_walls(g, g.r, 0.1 * radius, m["growth"], m["per_whorl"], t, 2.2 * t)
    umb = (g.r < m["umbilicus"] * radius * np.clip(z / h, 0, 1) + 0.1 * radius) & ~spiral_layer
    piles = umb & _pillars(g.x, g.y, m["pile_spacing"], 0.3 * m["pile_spacing"])
    cavity_floor = _near_integer(z / (0.65 * h), 0.65 * h, t / 2)
    chamber_zone = ~umb & ~spiral_layer
    radial = _near_integer(
        (g.phi + np.pi) / (2 * np.pi) * m["per_whorl"], 2 * np.pi * g.r / m["per_whorl"], t
    )
    wall = solid & (
        (sdf > -1.5 * t) | (spiral_layer & coil) | piles | cavity_floor | (chamber_zone & radial)
    )
    return Parts(solid, wall)


def _sample_rhapydionina(rng):
    length = _u(rng, 1.0, 2.8)
    width = length / _u(rng, 2.0, 4.0)
    return dict(
        length=length,
        width=width,
        flare=_u(rng, 1.2, 1.8),
        coil=width * _u(rng, 0.45, 0.6),
        n_levels=int(rng.integers(5, 9)),
        n_radial=int(rng.integers(16, 26)),
        wall_type="porcelaneous",
        extent=(width * 0.95, width * 0.95, length / 2 + 0.1 * width),
    )


def _build_rhapydionina(g: Grid, m) -> Parts:
    length, width, coil_r = m["length"], m["width"], m["coil"]
    z = g.z + length / 2
    coil_half = 0.35 * coil_r
    # early planispiral coil lying in the x-z plane at the base (coiling axis = y)
    cx, cz = 0.0, coil_r
    coil_rho = np.sqrt((g.x - cx) ** 2 + (z - cz) ** 2)
    coil_sdf = np.maximum(coil_rho - coil_r, np.abs(g.y) - coil_half)
    # uncoiled, flaring uniserial part growing along +z from the coil
    start = coil_r
    frac = np.clip((z - start) / (length - start), 0, 1)
    local_r = 0.5 * width * (1.0 / m["flare"] + (1 - 1.0 / m["flare"]) * frac)
    tube_sdf = np.maximum(np.maximum(g.r - local_r, z - length), start - z)
    sdf = np.minimum(coil_sdf, tube_sdf)
    solid = sdf < 0
    t = g.thick(0.03 * width)
    in_coil = coil_sdf < 0
    coil_frame = Grid(g.x, z - cz, g.y, g.vox)  # coil plane x-z, axis along y
    coil_walls = _planispiral_walls(coil_frame, coil_rho, 0.12 * coil_r, 2.2, 8, t, t)
    level_h = (length - start) / m["n_levels"]
    septa = _near_integer(
        (z - start - 0.4 * level_h * (g.r / (0.5 * width)) ** 2) / level_h, level_h, t / 2
    )
    radial = _near_integer(
        (g.phi + np.pi) / (2 * np.pi) * m["n_radial"], 2 * np.pi * g.r / m["n_radial"], t / 2
    ) & (g.r > 0.6 * local_r)
    central = (g.r < 0.45 * local_r) & _pillars(g.x, g.y, 0.12 * width, 0.025 * width + t / 2)
    tube = ~in_coil
    wall = solid & ((sdf > -t) | (in_coil & coil_walls) | (tube & (septa | radial | central)))
    return Parts(solid, wall)


def _sample_alveolina(rng):
    radius = _u(rng, 0.6, 1.6)
    elong = _u(rng, 1.5, 4.0)
    return dict(
        radius=radius,
        elong=elong,
        growth=_u(rng, 1.6, 1.9),
        per_whorl=int(rng.integers(10, 16)),
        septula=int(rng.integers(14, 26)),
        wall_type="porcelaneous",
        extent=(radius, radius, radius * elong),
    )


def _build_alveolina(g: Grid, m) -> Parts:
    radius, elong = m["radius"], m["elong"]
    # spindle: pointed poles along the coiling axis z
    zn = g.z / (radius * elong)
    local_r = radius * np.sqrt(np.clip(1 - np.abs(zn) ** 1.6, 0, 1))
    sdf = np.where(np.abs(zn) < 1, g.r - local_r, radius * (np.abs(zn) - 1) + g.r)
    solid = sdf < 0
    t = g.thick(0.015 * radius)
    # whorls are nested spindles: radial coordinate normalised by the local radius
    rho = radius * g.r / np.maximum(local_r, 1e-6)
    coil = _planispiral_walls(g, rho, 0.08 * radius, m["growth"], m["per_whorl"], 1.8 * t, t)
    septula = _near_integer(
        g.z / (radius * elong) * m["septula"] / 2, 2 * radius * elong / m["septula"], t / 2
    )
    wall = solid & ((sdf > -1.5 * t) | coil | (septula & (rho > 0.2 * radius)))
    return Parts(solid, wall)


def _sample_coskinolina(rng):
    h = _u(rng, 0.8, 1.8)
    radius = h / 2 * _u(rng, 0.85, 1.2)
    return dict(
        height=h,
        radius=radius,
        dome=_u(rng, 0.05, 0.2) * radius,
        n_levels=int(rng.integers(8, 13)),
        n_radial=int(rng.integers(16, 28)),
        central=_u(rng, 0.4, 0.6),
        spire=_u(rng, 0.15, 0.25),
        wall_type="agglutinated",
        extent=(radius, radius, h / 2 + 0.2 * radius),
    )


def _build_coskinolina(g: Grid, m) -> Parts:
    h, radius = m["height"], m["radius"]
    z = g.z + h / 2
    sdf = _sdf_cone(g.r, z, h, radius, m["dome"])
    solid = sdf < 0
    t = g.thick(0.03 * radius)
    spire_h = m["spire"] * h
    spire = z < spire_h
    spire_walls = _planispiral_walls(
        Grid(g.x, z - spire_h / 2, g.y, g.vox),
        np.sqrt(g.x**2 + (z - spire_h / 2) ** 2),
        0.05 * radius,
        2.0,
        5,
        t,
        t,
    )
    level_h = (h - spire_h) / m["n_levels"]
    septa = _near_integer(
        (z - spire_h - 0.25 * level_h * (g.r / radius) ** 2) / level_h, level_h, t / 2
    )
    local_r = radius * np.clip(z / h, 0, 1)
    central = g.r < m["central"] * local_r
    radial = (
        _near_integer(
            (g.phi + np.pi) / (2 * np.pi) * m["n_radial"], 2 * np.pi * g.r / m["n_radial"], t / 2
        )
        & ~central
    )
    pillars = central & _pillars(g.x, g.y, 0.11 * radius, 0.022 * radius + t / 2)
    upper = ~spire
    wall = solid & ((sdf > -t) | (spire & spire_walls) | (upper & (septa | radial | pillars)))
    return Parts(solid, wall)


# name -> (sampler, builder, builder needs an rng)
_PLANS: dict[str, tuple[Callable, Callable, bool]] = {
    "chrysalidina": (_sample_chrysalidina, _build_chrysalidina, False),
    "ataxophragmium": (_sample_ataxophragmium, _build_ataxophragmium, True),
    "baculogypsina": (_sample_baculogypsina, _build_baculogypsina, False),
    "minoxia": (_sample_minoxia, _build_minoxia, True),
    "elphidiella": (_sample_elphidiella, _build_elphidiella, False),
    "fallotia": (_sample_fallotia, _build_fallotia, False),
    "arumella": (_sample_arumella, _build_arumella, False),
    "lockhartia": (_sample_lockhartia, _build_lockhartia, False),
    "orbitoides": (_sample_orbitoides, _build_orbitoides, False),
    "rhapydionina": (_sample_rhapydionina, _build_rhapydionina, False),
    "alveolina": (_sample_alveolina, _build_alveolina, False),
    "coskinolina": (_sample_coskinolina, _build_coskinolina, False),
}


def _plan_entry(name: str) -> tuple[Callable, Callable, bool]:
    """(sampler, builder, builder needs an rng) of a genus plan or a generic shell."""
    if name in _PLANS:
        return _PLANS[name]
    from foramlib.virtual import shells

    # raises ValueError for a name that is neither a genus plan nor "shell-<id>"

    recipe = shells.shell_recipe(shells._recipe_id(name))
    return (lambda rng: shells.sample_shell(rng, recipe)), shells.build_shell, True


PAPER_GENERA = (
    TaxonSpec("Chrysalidina", 14, 16, "chrysalidina"),
    TaxonSpec("Ataxophragmium", 6, 7, "ataxophragmium"),
    TaxonSpec("Baculogypsina", 6, 7, "baculogypsina"),
    TaxonSpec("Minoxia", 5, 6, "minoxia"),
    TaxonSpec("Elphidiella", 6, 6, "elphidiella"),
    TaxonSpec("Fallotia", 6, 6, "fallotia"),
    TaxonSpec("Arumella", 5, 5, "arumella"),
    TaxonSpec("Lockhartia", 5, 5, "lockhartia"),
    TaxonSpec("Orbitoides", 5, 5, "orbitoides"),
    TaxonSpec("Rhapydionina", 5, 5, "rhapydionina"),
    TaxonSpec("Alveolina", 4, 4, "alveolina"),
    TaxonSpec("Coskinolina", 4, 4, "coskinolina"),
)

# How often specimens of a genus are damaged; the paper blames extraction damage for
# Orbitoides errors. Others get a base rate.
_DAMAGE_RATE = {"orbitoides": 0.7, "baculogypsina": 0.35}
_BASE_DAMAGE_RATE = 0.2
# Plans from the same source rock share the chance of a low-contrast matrix and infill.
_MATRIX_RATE = {"chrysalidina": 0.5, "minoxia": 0.5, "coskinolina": 0.35, "arumella": 0.35}
_BASE_MATRIX_RATE = 0.2


def paper_taxa() -> tuple[TaxonSpec, ...]:
    """The default collection: the paper's 12 genera plus 15 rarer taxa (97 volumes).

    Examples
    --------
    >>> taxa = paper_taxa()
    >>> len(taxa), sum(t.n_volumes for t in taxa)
    (27, 97)
    """
    rare = tuple(TaxonSpec(s, ns, nv, p) for s, ns, nv, p in _RARE_TAXA)
    return PAPER_GENERA + rare


def tiny_taxa() -> tuple[TaxonSpec, ...]:
    """A small collection for tests: four genera that pass curation, one that does not.

    Each kept genus has three specimens (one per split); Chrysalidina has a repeat
    scan; Dictyoconus has a single specimen, dropped by a ``min_models=3`` filter.
    """
    return (
        TaxonSpec("Chrysalidina", 3, 4, "chrysalidina"),
        TaxonSpec("Baculogypsina", 3, 3, "baculogypsina"),
        TaxonSpec("Orbitoides", 3, 3, "orbitoides"),
        TaxonSpec("Alveolina", 3, 3, "alveolina"),
        TaxonSpec("Dictyoconus", 1, 1, "coskinolina"),
    )


def taxa_preset(name: str) -> tuple[TaxonSpec, ...]:
    """Look up a named collection preset: ``"paper"`` or ``"tiny"``."""
    presets = {"paper": paper_taxa, "tiny": tiny_taxa}
    if name not in presets:
        raise ValueError(f"unknown virtual collection preset {name!r}; valid: {sorted(presets)}")
    return presets[name]()


def plan_collection(taxa: Sequence[TaxonSpec], seed: int) -> list[ScanPlan]:
    """Assign files, specimen ids and seeds to every scan of the collection.

    Seeds come from :class:`numpy.random.SeedSequence` keyed by (seed, taxon index,
    specimen index), so one taxon's specimens do not change when another taxon's count
    changes. Repeat scans go to the first specimens of a taxon.
    """
    plans: list[ScanPlan] = []
    for ti, taxon in enumerate(taxa):
        code = taxon.species[:4].upper()
        for v in range(taxon.n_volumes):
            spec = v if v < taxon.n_specimens else (v - taxon.n_specimens) % taxon.n_specimens
            repeat = (
                0 if v < taxon.n_specimens else 1 + (v - taxon.n_specimens) // taxon.n_specimens
            )
            spec_seed = int(np.random.SeedSequence([seed, ti, spec]).generate_state(1)[0])
            scan_seed = int(
                np.random.SeedSequence([seed, ti, spec, 1000 + repeat]).generate_state(1)[0]
            )
            specimen_id = f"V-{code}-{spec + 1:02d}"
            suffix = f"_scan{repeat + 1}" if repeat else ""
            plans.append(
                ScanPlan(
                    f"{specimen_id}{suffix}.nii.gz",
                    specimen_id,
                    taxon.species,
                    taxon.plan,
                    spec_seed,
                    scan_seed,
                    repeat,
                )
            )
    return plans


# ----------------------------------------------------------------------------------------
# Rendering one scan
# ----------------------------------------------------------------------------------------
def _specimen(plan: ScanPlan):
    rng = np.random.default_rng(plan.specimen_seed)
    sampler, _, _ = _plan_entry(plan.plan)
    morph = sampler(rng)
    damage_rate = _DAMAGE_RATE.get(plan.plan, _BASE_DAMAGE_RATE)
    damage = []
    if rng.random() < damage_rate:
        for _ in range(int(rng.integers(1, 4))):
            kind = "crack" if rng.random() < 0.6 else "fragment"
            damage.append(
                dict(
                    kind=kind,
                    direction=rng.normal(size=3).tolist(),
                    offset=_u(rng, -0.5, 0.5),
                    size=_u(rng, 0.25, 0.5),
                )
            )
    return morph, damage, int(rng.integers(2**31))


def _norm(v) -> float:
    """Euclidean length of a short vector in float64, the same on every CPU.

    ``np.linalg.norm`` of a 1-D array goes through BLAS ``dot``, whose kernel (and so
    its last bit) OpenBLAS chooses by CPU.
    """
    return math.sqrt(math.fsum(float(x) * float(x) for x in np.ravel(v)))


def build_specimen(plan: ScanPlan, grid: Grid) -> Parts:
    """Build the specimen of `plan` on `grid` (specimen-frame coordinates), with damage."""
    morph, damage, build_seed = _specimen(plan)
    _, builder, needs_rng = _plan_entry(plan.plan)
    parts = (
        builder(grid, morph, np.random.default_rng(build_seed))
        if needs_rng
        else builder(grid, morph)
    )
    ext = np.asarray(morph["extent"])
    scale = float(ext.max())
    for d in damage:
        n = np.asarray(d["direction"]) / _norm(d["direction"])
        dist = grid.x * n[0] + grid.y * n[1] + grid.z * n[2] - d["offset"] * scale
        if d["kind"] == "crack":
            # a thin planar fracture that stops inside the test
            perp_r = np.sqrt(np.maximum(grid.x**2 + grid.y**2 + grid.z**2 - dist**2, 0))
            crack = (np.abs(dist) < grid.thick(0.01 * scale)) & (perp_r < d["size"] * 2 * scale)
            parts.wall &= ~crack
        else:
            # a fragment broken off the edge: everything beyond a plane near the rim
            cut = dist > (0.55 + 0.4 * d["size"]) * scale * _norm(n / (ext / scale))
            parts.wall &= ~cut
            parts.solid &= ~cut
    return parts


def _smooth_noise(rng, shape, scale_vox):
    """Cheap smooth random field (mean 0, sd ~1): coarse normal noise, upsampled."""
    coarse = [max(2, int(np.ceil(s / scale_vox)) + 1) for s in shape]
    field = rng.normal(size=coarse).astype(np.float32)
    zoomed = ndimage.zoom(field, [s / c for s, c in zip(shape, coarse, strict=True)], order=1)
    return zoomed[tuple(slice(0, s) for s in shape)]


def _scan_conditions(plan: ScanPlan):
    rng = np.random.default_rng(plan.scan_seed)
    matrix = rng.random() < _MATRIX_RATE.get(plan.plan, _BASE_MATRIX_RATE)
    return dict(
        rotation=Rotation.random(random_state=rng).as_matrix(),
        fill=_u(rng, 0.8, 0.95),  # fraction of the field of view the specimen spans
        offset=rng.uniform(-0.03, 0.03, 3),
        matrix=matrix,
        matrix_level=_u(rng, 0.55, 0.8) if matrix else 0.0,
        infill=(rng.random() < 0.35) or matrix,
        infill_level=_u(rng, 0.35, 0.7),
        pyrite=rng.random() < 0.15,
        noise=_u(rng, 0.02, 0.08),
        rings=int(rng.integers(0, 6)),
        cupping=_u(rng, 0.0, 0.25),
        stem=rng.random() < 0.6,
        blur=_u(rng, 0.5, 1.0),
        seed=int(rng.integers(2**31)),
    )


def shell_axes(plans: Sequence[ScanPlan]) -> dict[str, np.ndarray]:
    """The direction of each scan's shell axis in the volume's array axes.

    Every body plan is built around the z axis of its own frame: the coiling axis of
    planispiral and trochospiral tests (Alveolina's long axis), the axis of cones and
    lenses, the growth axis of Rhapydionina's uncoiled part. The scan turns that frame
    by a random rotation, recorded nowhere in the file; this recovers it from the plan,
    so a section's plane can be compared with the shell's axis (an axial section
    contains the axis, an equatorial or transverse one is perpendicular to it).

    Parameters
    ----------
    plans : sequence of ScanPlan
        From :func:`plan_collection` with the collection's taxa and seed.

    Returns
    -------
    dict
        File name -> unit 3-vector in the array's axis order (the order of a
        :class:`foramlib.dataset.slicing.Plane`'s normal).

    Examples
    --------
    >>> axes = shell_axes(plan_collection(tiny_taxa(), seed=0))
    >>> len(axes), round(float(np.linalg.norm(axes["V-CHRY-01.nii.gz"])), 6)
    (14, 1.0)
    """
    # render_scan maps scanner coordinates w to specimen ones by rot.T @ w, so the
    # specimen's z axis lies along rot @ (0, 0, 1), the rotation's third column
    return {p.file: np.asarray(_scan_conditions(p)["rotation"], float)[:, 2] for p in plans}


def render_scan(plan: ScanPlan, shape: int = 128, supersample: int = 2):
    """Render one scan of the collection as a float32 volume of attenuation values.

    Parameters
    ----------
    plan : ScanPlan
        The file to render (from :func:`plan_collection`).
    shape : int
        Edge length of the cubic volume in voxels (>= 16).
    supersample : int
        The specimen is built at this many times the resolution and averaged down,
        which gives realistic partial-volume edges (1 disables it).

    Returns
    -------
    volume : ndarray of float32, shape (shape, shape, shape)
        Air ~0, calcite wall ~1, a metal stem ~3 where present. Axis 2 is the
        scanner's rotation axis (ring artefacts and the stem follow it).
    voxel_size_um : float
        Isotropic voxel size chosen so that the specimen spans most of the field.
    """
    if int(shape) < 16:
        raise ValueError(f"shape must be >= 16 voxels, got {shape!r}")
    if int(supersample) < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample!r}")
    shape, ss = int(shape), int(supersample)
    morph, _, _ = _specimen(plan)
    cond = _scan_conditions(plan)
    rng = np.random.default_rng(cond["seed"])
    extent = np.asarray(morph["extent"], float)
    bound = _norm(extent)  # bounding sphere of the specimen, any rotation
    vox_mm = 2 * bound / (shape * cond["fill"])
    voxel_size_um = round(vox_mm * 1000, 2)
    vox_mm = voxel_size_um / 1000
    fine = vox_mm / ss
    m = shape * ss
    centre = cond["offset"] * shape * vox_mm
    # evaluation box: the bounding sphere's footprint in fine voxels
    lo = np.clip(np.floor((centre - bound) / fine + m / 2).astype(int) - 1, 0, m)
    hi = np.clip(np.ceil((centre + bound) / fine + m / 2).astype(int) + 1, 0, m)
    lo -= lo % ss  # align to whole coarse voxels so the average-down stays on the grid
    hi = np.minimum(hi + (-hi) % ss, m)
    axes = [
        ((np.arange(a, b) + 0.5 - m / 2) * fine - c).astype(np.float32)
        for a, b, c in zip(lo, hi, centre, strict=True)
    ]
    rot = cond["rotation"].astype(np.float32)  # specimen frame -> scanner frame
    wx, wy, wz = axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]
    local = [rot[0, i] * wx + rot[1, i] * wy + rot[2, i] * wz for i in range(3)]
    grid = Grid(*local, vox=fine)
    parts = build_specimen(plan, grid)

    wall_type = morph["wall_type"]
    box = tuple(b - a for a, b in zip(lo, hi, strict=True))
    texture = 1.0 + {"agglutinated": 0.12, "hyaline": 0.04, "porcelaneous": 0.02}[
        wall_type
    ] * _smooth_noise(rng, box, 2.0 * ss)
    wall_mu = {"agglutinated": 0.95, "hyaline": 1.0, "porcelaneous": 1.1}[wall_type]
    background = cond["matrix_level"]
    lumen_mu = np.float32(cond["infill_level"] if cond["infill"] else background)
    fine_vol = np.full(box, background, np.float32)
    lumen = parts.solid & ~parts.wall
    fine_vol[lumen] = lumen_mu
    if cond["pyrite"]:
        blobs = (_smooth_noise(rng, box, 3.0 * ss) > 1.6) & lumen
        fine_vol[blobs] = 2.5
    fine_vol[parts.wall] = (wall_mu * texture)[parts.wall]
    del grid, local, parts, lumen, texture

    # average down to scan resolution: partial volume
    coarse_box = tuple(b // ss for b in box)
    coarse = fine_vol.reshape(coarse_box[0], ss, coarse_box[1], ss, coarse_box[2], ss).mean(
        axis=(1, 3, 5)
    )
    vol = np.full((shape,) * 3, background, np.float32)
    clo = lo // ss
    vol[
        clo[0] : clo[0] + coarse_box[0],
        clo[1] : clo[1] + coarse_box[1],
        clo[2] : clo[2] + coarse_box[2],
    ] = coarse
    _add_scan_artefacts(vol, cond, rng, centre / vox_mm + shape / 2, bound / vox_mm)
    return vol.astype(np.float32, copy=False), float(voxel_size_um)


def _add_scan_artefacts(vol, cond, rng, centre_vox, bound_vox):
    """Mount stem and streaks, blur, cupping, rings and noise, in place."""
    n = vol.shape[0]
    idx = np.arange(n, dtype=np.float32) + 0.5
    xx, yy = idx[:, None], idx[None, :]
    if cond["stem"]:
        # a metal rod along the rotation axis, from the bottom of the field up to the test
        sx, sy = centre_vox[0] + rng.normal(0, 0.1 * bound_vox), centre_vox[1]
        radius = max(1.5, 0.06 * bound_vox)
        top = int(np.clip(centre_vox[2] - 0.55 * bound_vox, 1, n - 1))
        d2 = (xx - sx) ** 2 + (yy - sy) ** 2
        rod = d2 < radius**2
        ang = np.arctan2(yy - sy, xx - sx)
        streaks = (
            0.15 * np.cos(2 * ang + rng.uniform(0, np.pi)) * np.exp(-np.sqrt(d2) / (4 * radius))
        )
        vol[:, :, :top] += streaks[:, :, None].astype(np.float32)
        vol[:, :, :top][rod] = 3.0
    vol[:] = ndimage.gaussian_filter(vol, cond["blur"])
    if cond["cupping"] > 0:
        d2 = ((xx - centre_vox[0]) ** 2 + (yy - centre_vox[1]) ** 2) / max(bound_vox, 1.0) ** 2
        vol *= (1.0 - cond["cupping"] * np.exp(-d2 * 2.0)).astype(np.float32)[:, :, None]
    if cond["rings"]:
        r = np.sqrt((xx - n / 2) ** 2 + (yy - n / 2) ** 2)
        profile = np.zeros_like(r)
        for _ in range(cond["rings"]):
            profile += rng.uniform(-0.08, 0.08) * np.exp(-((r - rng.uniform(2, n / 2)) ** 2) / 0.5)
        vol += profile.astype(np.float32)[:, :, None]
    vol += rng.normal(0.0, cond["noise"], vol.shape).astype(np.float32)


# ----------------------------------------------------------------------------------------
# The whole collection
# ----------------------------------------------------------------------------------------
def _render_and_write(args):
    plan, out_dir, shape, supersample = args
    from foramlib.io.volumes import write_nifti

    t0 = time.perf_counter()
    vol, voxel_um = render_scan(plan, shape, supersample)
    write_nifti(
        Path(out_dir) / plan.file,
        vol,
        voxel_um,
        description=f"virtual {plan.species} {plan.specimen_id}",
    )
    return plan.file, voxel_um, time.perf_counter() - t0


def synthesize_collection(
    out_dir,
    taxa: Sequence[TaxonSpec],
    *,
    seed: int = 0,
    shape: int = 128,
    supersample: int = 2,
    n_jobs: int = 1,
    progress: Callable[[str], None] | None = print,
) -> pd.DataFrame:
    """Generate a virtual collection: one ``.nii.gz`` per scan plus ``manifest.csv``.

    The folder `out_dir` is replaced as a whole once every file is written, so an
    interrupted run leaves the previous collection (or none), never a partial one.

    Parameters
    ----------
    out_dir : path-like
        Destination folder.
    taxa : sequence of TaxonSpec
        What to generate (see :func:`paper_taxa`, :func:`tiny_taxa`).
    seed : int
        Master seed; the same seed gives byte-identical files, on any CPU of the
        architecture, given the numeric stack pinned in ``constraints.txt``.
    shape, supersample : int
        Passed to :func:`render_scan`.
    n_jobs : int
        Worker processes (results do not depend on it). Rendering always runs in
        fresh worker processes, even for 1, because only there can numpy be kept to
        its CPU-independent baseline kernels (see the module notes).
    progress : callable or None
        Called with one line per finished scan.

    Returns
    -------
    pandas.DataFrame
        The manifest as written.
    """
    if int(n_jobs) < 1:
        raise ValueError(f"n_jobs must be >= 1, got {n_jobs!r}")
    plans = plan_collection(taxa, seed)
    rows = []
    with atomic_dir(out_dir) as tmp, volume_pool(int(n_jobs), portable=True) as pool:
        jobs = [(p, tmp, shape, supersample) for p in plans]
        results = pool.map(_render_and_write, jobs)
        for i, (plan, (file, voxel_um, secs)) in enumerate(zip(plans, results, strict=True)):
            if progress:
                progress(
                    f"[{i + 1}/{len(plans)}] {file} ({plan.species}) "
                    f"{voxel_um:.1f} um, {secs:.1f} s"
                )
            notes = "virtual scan"
            if plan.repeat:
                notes += f"; repeat scan {plan.repeat + 1} of specimen {plan.specimen_id}"
            rows.append(
                dict(
                    file=file,
                    specimen_id=plan.specimen_id,
                    species=plan.species,
                    voxel_size_um=voxel_um,
                    source="virtual",
                    notes=notes,
                )
            )
        manifest = pd.DataFrame(rows)
        manifest.to_csv(Path(tmp) / "manifest.csv", index=False)
        summary = dict(
            source="virtual",
            seed=seed,
            shape=shape,
            supersample=supersample,
            n_volumes=len(plans),
            n_taxa=len(taxa),
            taxa=[asdict(t) for t in taxa],
        )
        (Path(tmp) / "collection.json").write_text(json.dumps(summary, indent=2) + "\n")
    return manifest


def describe_collection(manifest: pd.DataFrame) -> pd.DataFrame:
    """Per taxon: volumes, specimens and voxel-size range of a generated collection."""
    g = manifest.groupby("species", sort=False)
    return pd.DataFrame(
        {
            "volumes": g["file"].count(),
            "specimens": g["specimen_id"].nunique(),
            "voxel_um_min": g["voxel_size_um"].min(),
            "voxel_um_max": g["voxel_size_um"].max(),
        }
    )


def write_unused_marker(out_dir, source: str) -> Path:
    """Replace `out_dir` with a note saying the virtual collection is not in use.

    The synthesize stage always has an output folder; with ``data.source`` set to a
    real manifest it holds only this note, so nothing can mistake it for data.
    """
    with atomic_dir(out_dir) as tmp:
        (Path(tmp) / "NOT_USED.md").write_text(
            f"data.source is {source!r}: the virtual collection was not generated.\n"
        )
    return Path(out_dir)
