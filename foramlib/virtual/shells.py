"""Generic shells: random body plans for the offline pretraining corpus.

The paper fine-tunes ImageNet backbones. Offline we cannot fetch ImageNet weights, so
the ``pretrain`` stages train the backbones first on a large corpus of *other* shells:
each pseudo-taxon here is a random recipe combining the generator's building blocks
(an outer form, coiling, stacked septa, radial partitions, concentric layers, a
chamberlet lattice, pillars, chamber clusters) at its own proportions and wall
thickness. No genus builder of :mod:`foramlib.virtual.collection` is used, and no specimen of the
collection: the corpus shares the scan simulation (partial volume, noise, rings, mounts,
matrix) and the slicer with the collection, as real micro-CT pretraining data would,
but not its taxa.

A recipe is a deterministic function of its integer id; a specimen's morphology is the
recipe with its continuous proportions jittered by up to ±15 % and its counts by ±1, so
each pseudo-taxon has a consistent 3D signature with specimen-to-specimen variation.

Examples
--------
>>> recipe = shell_recipe(7)
>>> recipe["outer"] in OUTER_FORMS, set(recipe["features"]) <= set(FEATURES)
(True, True)
>>> taxa = shell_taxa(3, 2, seed=0)
>>> [t.species for t in taxa], taxa[0].plan.startswith("shell-")
(['Shell-001', 'Shell-002', 'Shell-003'], True)
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "OUTER_FORMS",
    "FEATURES",
    "PLAN_PREFIX",
    "shell_recipe",
    "sample_shell",
    "build_shell",
    "shell_taxa",
]

PLAN_PREFIX = "shell-"
OUTER_FORMS = ("ellipsoid", "cone", "lens", "spindle", "cylinder", "cluster", "uniserial")
FEATURES = ("spiral", "levels", "radial", "concentric", "lattice", "pillars")


def _recipe_id(plan: str) -> int:
    if not plan.startswith(PLAN_PREFIX) or not plan[len(PLAN_PREFIX) :].isdigit():
        raise ValueError(f"plan = {plan!r} is not a generic shell plan ('{PLAN_PREFIX}<id>')")
    return int(plan[len(PLAN_PREFIX) :])


def shell_recipe(recipe_id: int) -> dict:
    """The recipe of pseudo-taxon `recipe_id`: outer form, proportions and features.

    Parameters
    ----------
    recipe_id : int
        Non-negative id; the same id always gives the same recipe.

    Returns
    -------
    dict
        ``outer`` (one of :data:`OUTER_FORMS`), ``size`` (mm, largest half-extent),
        ``aspect`` (height / width), ``wall`` (wall thickness as a fraction of the
        size), ``wall_type`` and ``features`` (a dict of the chosen internal features
        from :data:`FEATURES` with their parameters).

    Examples
    --------
    >>> shell_recipe(3) == shell_recipe(3)
    True
    >>> shell_recipe(-1)
    Traceback (most recent call last):
    ...
    ValueError: recipe_id = -1 is invalid: expected an integer >= 0
    """
    if isinstance(recipe_id, bool) or not isinstance(recipe_id, int | np.integer) or recipe_id < 0:
        raise ValueError(f"recipe_id = {recipe_id!r} is invalid: expected an integer >= 0")
    rng = np.random.default_rng(np.random.SeedSequence([int(recipe_id), 0x5E11]))
    outer = str(rng.choice(OUTER_FORMS))
    n_features = int(rng.integers(1, 4))
    chosen = rng.choice(FEATURES, size=n_features, replace=False)
    features: dict[str, dict] = {}
    for name in sorted(str(f) for f in chosen):
        if name == "spiral":
            features[name] = dict(
                growth=float(rng.uniform(1.4, 2.6)), per_whorl=int(rng.integers(4, 20))
            )
        elif name == "levels":
            features[name] = dict(n=int(rng.integers(3, 14)), curve=float(rng.uniform(-0.5, 0.5)))
        elif name == "radial":
            features[name] = dict(n=int(rng.integers(3, 28)), inner=float(rng.uniform(0, 0.6)))
        elif name == "concentric":
            features[name] = dict(n=int(rng.integers(2, 7)))
        elif name == "lattice":
            features[name] = dict(cell=float(rng.uniform(0.08, 0.25)))
        else:
            features[name] = dict(
                spacing=float(rng.uniform(0.06, 0.2)), zone=float(rng.uniform(0.3, 1.0))
            )
    return dict(
        outer=outer,
        size=float(rng.uniform(0.3, 2.5)),
        aspect=float(np.exp(rng.uniform(np.log(0.3), np.log(3.0)))),
        wall=float(rng.uniform(0.012, 0.05)),
        wall_type=str(rng.choice(["agglutinated", "hyaline", "porcelaneous"])),
        chambers=int(rng.integers(4, 14)),
        features=features,
    )


def _jitter(rng, value: float, amount: float = 0.15) -> float:
    return float(value * rng.uniform(1 - amount, 1 + amount))


def sample_shell(rng: np.random.Generator, recipe: dict) -> dict:
    """One specimen of a recipe: proportions jittered by up to ±15 %, counts by ±1.

    Returns the morphology dict the builder reads, with the ``extent`` (half-extents in
    mm) and ``wall_type`` that :func:`foramlib.virtual.collection.render_scan` needs.
    """
    size = _jitter(rng, recipe["size"])
    aspect = _jitter(rng, recipe["aspect"])
    # the larger of width and height is `size`
    if aspect >= 1:
        half_h, radius = size, size / aspect
    else:
        half_h, radius = size * aspect, size
    features = {}
    for name, params in recipe["features"].items():
        p = {}
        for k, v in params.items():
            p[k] = (
                max(1, int(v) + int(rng.integers(-1, 2))) if isinstance(v, int) else _jitter(rng, v)
            )
        features[name] = p
    m = dict(
        outer=recipe["outer"],
        radius=radius,
        half=half_h,
        wall=_jitter(rng, recipe["wall"]),
        wall_type=recipe["wall_type"],
        chambers=max(3, recipe["chambers"] + int(rng.integers(-1, 2))),
        features=features,
        phase=rng.uniform(0, 2 * np.pi),
        seed=int(rng.integers(2**31)),
    )
    reach = 1.0
    if recipe["outer"] == "cluster":
        reach = 1.35  # chambers bulge out of the nominal envelope
    m["extent"] = (radius * reach, radius * reach, half_h * reach)
    return m


def _outer(g, m):
    """Signed distance (mm, negative inside) of the outer form, and optional chamber
    septa (for chamber clusters)."""
    from foramlib.virtual.collection import _chamber_union, _sdf_cone, _sdf_ellipsoid, _sdf_lens

    radius, half, outer = m["radius"], m["half"], m["outer"]
    if outer == "ellipsoid":
        return _sdf_ellipsoid(g.x, g.y, g.z, radius, radius, half), None
    if outer == "cone":
        return _sdf_cone(g.r, g.z + half, 2 * half, radius, 0.15 * radius), None
    if outer == "lens":
        return _sdf_lens(g.r, g.z, radius, min(half, 0.9 * radius)), None
    if outer == "spindle":
        zn = g.z / half
        local = radius * np.sqrt(np.clip(1 - np.abs(zn) ** 1.4, 0, 1))
        return np.where(np.abs(zn) < 1, g.r - local, radius * (np.abs(zn) - 1) + g.r), None
    if outer == "cylinder":
        return np.maximum(g.r - radius, np.abs(g.z) - half), None
    rng = np.random.default_rng(m["seed"])
    n = m["chambers"]
    t = g.thick(m["wall"] * max(radius, half))
    k = np.linspace(0.0, 1.0, n)
    if outer == "cluster":
        # chambers growing along a helix about z (a generic trochospire)
        angle = m["phase"] + 2 * np.pi * rng.uniform(1.0, 3.0) * k
        rad = radius * (0.25 + 0.35 * k)
        centres = np.stack(
            [
                0.5 * radius * (0.3 + 0.7 * k) * np.cos(angle),
                0.5 * radius * np.sin(angle) * (0.3 + 0.7 * k),
                half * (2 * k - 1) * 0.6,
            ],
            axis=1,
        )
        squash = np.full(n, 1.0)
    else:  # uniserial: a straight or gently curved row of growing chambers
        bend = rng.uniform(-0.3, 0.3) * half
        rad = radius * (0.45 + 0.55 * k)
        centres = np.stack([bend * k**2, np.zeros(n), half * (2 * k - 1) * 0.75], axis=1)
        squash = np.full(n, 0.8)
    solid, septa = _chamber_union(g, centres, rad, squash, t)
    # a chamber cluster's outline is its union; its walls come from _chamber_union
    return np.where(solid, -2 * t, 2 * t).astype(np.float32), septa


def build_shell(g, m, rng=None):
    """Build one generic shell on grid `g` (a :class:`foramlib.virtual.collection.Grid`)."""
    from foramlib.virtual.collection import Parts, _near_integer, _pillars, _planispiral_walls

    radius, half = m["radius"], m["half"]
    scale = max(radius, half)
    sdf, septa = _outer(g, m)
    solid = sdf < 0
    t = g.thick(m["wall"] * scale)
    if septa is not None:
        wall = septa.copy()
    else:
        wall = sdf > -t
    f = m["features"]
    if "spiral" in f:
        s = f["spiral"]
        wall |= _planispiral_walls(
            g, g.r, 0.08 * radius, max(s["growth"], 1.2), s["per_whorl"], t, t
        )
    if "levels" in f:
        s = f["levels"]
        level_h = 2 * half / s["n"]
        q = (g.z + half - s["curve"] * level_h * (g.r / radius) ** 2) / level_h
        wall |= _near_integer(q, level_h, t / 2)
    if "radial" in f:
        s = f["radial"]
        spokes = _near_integer(
            (g.phi + np.pi + m["phase"]) / (2 * np.pi) * s["n"], 2 * np.pi * g.r / s["n"], t / 2
        )
        wall |= spokes & (g.r > s["inner"] * radius)
    if "concentric" in f:
        s = f["concentric"]
        k = np.sqrt((g.r / radius) ** 2 + (g.z / half) ** 2) * s["n"]
        wall |= _near_integer(k, scale / s["n"], t / 2)
    if "lattice" in f:
        cell = f["lattice"]["cell"] * scale
        wall |= (
            _near_integer(g.x / cell, cell, t / 2)
            | _near_integer(g.y / cell, cell, t / 2)
            | _near_integer(g.z / cell, cell, t / 2)
        )
    if "pillars" in f:
        s = f["pillars"]
        spacing = s["spacing"] * scale
        wall |= _pillars(g.x, g.y, spacing, 0.22 * spacing) & (g.r < s["zone"] * radius)
    return Parts(solid, solid & wall)


def shell_taxa(n_taxa: int, n_specimens: int, seed: int = 0):
    """`n_taxa` pseudo-taxa of `n_specimens` specimens each, as virtual TaxonSpecs.

    Recipe ids are drawn from `seed`, so two corpora of different seeds hold different
    pseudo-taxa. Species are named ``Shell-001`` ...; plans ``shell-<recipe id>``.

    Examples
    --------
    >>> [t.n_specimens for t in shell_taxa(2, 5)]
    [5, 5]
    >>> shell_taxa(0, 5)
    Traceback (most recent call last):
    ...
    ValueError: n_taxa = 0 is invalid: expected an integer >= 2
    """
    from foramlib.virtual.collection import TaxonSpec

    for name, value, lo in (("n_taxa", n_taxa, 2), ("n_specimens", n_specimens, 2)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < lo:
            raise ValueError(f"{name} = {value!r} is invalid: expected an integer >= {lo}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xC0DE]))
    ids = rng.choice(10**6, size=int(n_taxa), replace=False)
    return tuple(
        TaxonSpec(f"Shell-{i + 1:03d}", int(n_specimens), int(n_specimens), f"{PLAN_PREFIX}{rid}")
        for i, rid in enumerate(ids)
    )
