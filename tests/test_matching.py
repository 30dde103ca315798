"""Slice-to-volume matching on tiny virtual specimens of four genera.

Every test that needs the module's index or prepared volumes is marked slow: building
them takes about 40 s on 2 cores, so ``make test-fast`` leaves them to ``make test``.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.transform import Rotation

from foramlib.dataset.preprocess import PreprocessError, preprocess_slice, shrink_to_fit
from foramlib.dataset.slicing import Plane, extract_slice, plane_axes
from foramlib.matching import search as matching
from foramlib.matching.registration import SectionPose
from foramlib.matching.search import IndexConfig, MatchError, MatchIndex, plane_error
from foramlib.virtual import collection as virtual

CONFIG = IndexConfig(n_orientations=150, n_offsets=7)


@pytest.fixture(scope="module")
def specimens():
    wanted = ("V-CHRY-01", "V-BACU-01", "V-ORBI-01", "V-ALVE-01")  # four genera
    plans = virtual.plan_collection(virtual.tiny_taxa(), seed=0)
    chosen = [p for p in plans if p.repeat == 0 and p.specimen_id in wanted]
    return {
        p.specimen_id: (p.species, virtual.render_scan(p, shape=48, supersample=1)[0])
        for p in chosen
    }


@pytest.fixture(scope="module")
def index(specimens):
    return matching.build_index([(k, s, v) for k, (s, v) in specimens.items()], CONFIG)


@pytest.fixture(scope="module")
def prepared(specimens):
    return {k: matching.prepare_volume(v, CONFIG) for k, (_, v) in specimens.items()}


def _angle(a, b) -> float:
    return plane_error(a, b)[0]


def _perturb(section, rng, scale):
    img = section + rng.normal(0.0, 0.05, section.shape).astype(np.float32)
    side = int(round(img.shape[0] * scale))
    img = cv2.resize(img, (side, side), interpolation=cv2.INTER_LINEAR)
    c = max(1, side // 20)
    return img[c:-c, c // 2 : side - c]  # a small, uneven crop of the margin


@pytest.mark.slow
def test_index_save_load_roundtrip(index, tmp_path):
    path = index.save(tmp_path / "idx.npz")
    back = MatchIndex.load(path, CONFIG)
    assert back.config == index.config and len(back) == len(index)
    for name in matching._ARRAYS:
        assert np.array_equal(getattr(back, name), getattr(index, name)), name


@pytest.mark.slow
def test_index_is_compact(index, tmp_path):
    # descriptors (float16) + packed silhouette + plane: a few hundred bytes a candidate,
    # so the default collection's index stays in the tens of megabytes
    size = index.save(tmp_path / "idx.npz").stat().st_size
    assert size / len(index) < 400
    assert index.canonical.dtype == np.uint8
    assert index.descriptors.shape[1] <= matching.DESCRIPTOR_DIMS


@pytest.mark.slow
@pytest.mark.parametrize(
    "old_format,dropped,msg",
    [
        (1, "desc_basis", "index format 1.*rebuild it"),
        # format 2: before start poses came from the silhouettes' geometry
        (2, "geometry", "index format 2, this version reads format 5; rebuild"),
        # format 3: same arrays, but sections segmented on their volume's threshold
        (3, None, "index format 3, this version reads format 5; rebuild"),
        # format 4: same arrays, but thin walls could be taken for dense inclusions
        (4, None, "index format 4, this version reads format 5; rebuild"),
    ],
)
def test_old_index_format_refused(index, tmp_path, old_format, dropped, msg):
    path = index.save(tmp_path / "idx.npz")
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files if k != dropped}
    meta = json.loads(str(arrays["meta"]))
    meta["format"] = old_format
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(tmp_path / "old.npz", **arrays)
    with pytest.raises(MatchError, match=msg):
        MatchIndex.load(tmp_path / "old.npz")


def test_index_reads_each_section_as_a_query_is():
    """A section is described on its own threshold, not its volume's, so that a query
    cut there is read alike: here a faint shell beside a dense core, whose walls fall
    under the volume's threshold (set by the core) in some sections."""
    z, y, x = np.mgrid[:48, :48, :48].astype(np.float32)
    vol = np.full((48, 48, 48), 0.1, np.float32)
    vol[(z - 24) ** 2 + (y - 24) ** 2 + (x - 14) ** 2 < 36] = 1.0  # the dense core
    r = np.sqrt((z - 24) ** 2 + (y - 24) ** 2 + (x - 32) ** 2)
    vol[(r > 7) & (r < 9)] = 0.3  # a faint shell
    config = IndexConfig(n_orientations=3, n_offsets=9)
    index = matching.build_index([("V-TEST", "Testina", vol)], config)
    pv = matching.prepare_volume(vol, config)
    pp = config.preprocess

    def geometry(img, info):
        f = matching.describe(img, config.descriptor_size)
        return matching._geometry(f.centroid, f.radius, f.orientation, info.box, pp.size, pv.window)

    differs = 0
    for row in range(len(index)):
        plane = Plane(tuple(index.normals[row]), float(index.offsets[row]), 0.0)
        section = matching._sections(pv, [plane])[0]
        want = geometry(*preprocess_slice(section, pp))  # as a query is read
        np.testing.assert_allclose(index.geometry[row], want, rtol=1e-3, atol=1e-2)
        try:
            on_volume = geometry(
                *preprocess_slice(
                    section, pp, threshold=pv.threshold, background=pv.background, normalized=True
                )
            )
        except PreprocessError:
            differs += 1
            continue
        differs += not np.allclose(on_volume, want, rtol=1e-3, atol=1e-2)
    assert differs > 0  # the volume's threshold would have read some sections otherwise


@pytest.mark.slow
def test_index_geometry_places_the_silhouette(index, prepared):
    """Stored centroids lie on the fossil, radii are a fraction of the section."""
    assert index.geometry.shape == (len(index), 4)
    rows = np.arange(0, len(index), 97)
    for r in rows:
        spec = index.specimen[r]
        pv = prepared[spec]
        cu, cv, radius, _ = index.geometry[r].astype(float)
        assert 0.5 < radius < pv.window / 2
        n = index.normals[r].astype(float)
        u, v = plane_axes(n, 0.0)
        centroid = pv.centre + index.offsets[r] * n + cu * u + cv * v
        # the silhouette's centroid is within the specimen's extent
        assert np.linalg.norm(centroid - pv.points.mean(axis=0)) < pv.window / 2


@pytest.mark.slow
def test_index_version_mismatch_refused(index, tmp_path):
    path = index.save(tmp_path / "idx.npz")
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta"]))
    meta["preprocess_version"] = -1
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(tmp_path / "old.npz", **arrays)
    with pytest.raises(MatchError, match="preprocessing version -1; rebuild it"):
        MatchIndex.load(tmp_path / "old.npz")
    with pytest.raises(MatchError, match="rebuild it"):
        MatchIndex.load(path, IndexConfig(n_orientations=10, n_offsets=7))


@pytest.mark.slow
def test_in_plane_angle_convention(index, specimens):
    """A query cut at a candidate's plane, turned by 70°, comes back with angle 70°,
    and a section cut at the returned plane comes back with the same pose."""
    spec = "V-ORBI-01"
    row = int(np.flatnonzero(index.specimen == spec)[len(index) // 40])
    plane = Plane(tuple(index.normals[row]), float(index.offsets[row]), 70.0)
    vol = specimens[spec][1]

    def best(cut: Plane):
        q = extract_slice(vol, cut, size=72)
        opts = dict(volumes={spec: vol}, top_k=1, specimens=[spec], refine=False)
        return matching.match(index, q, **opts)[0]

    m = best(plane)
    assert _angle(m.normal, plane.normal) < 1.0
    sign = np.sign(np.dot(m.normal, plane.normal))
    assert abs(sign * m.offset - plane.offset) < 0.5
    if sign > 0:
        assert abs((m.angle_deg - 70.0 + 180) % 360 - 180) < 5
    out = best(Plane(m.normal, m.offset, m.angle_deg))
    assert _angle(out.normal, m.normal) < 1.0 and abs(out.offset - m.offset) < 0.5
    assert abs((out.angle_deg - m.angle_deg + 180) % 360 - 180) < 5


# (specimen, normal, offset, in-plane angle, rescale): normals not in the index
QUERIES = [
    ("V-CHRY-01", (0.31, -0.55, 0.78), 1.7, 35.0, 1.1),
    ("V-BACU-01", (-0.62, 0.21, 0.75), -2.3, 200.0, 0.9),
    ("V-ORBI-01", (0.45, 0.6, -0.66), 1.1, 120.0, 1.05),
    ("V-ALVE-01", (0.72, -0.35, 0.6), -0.8, 300.0, 0.92),
]
# Known gap: a spindle at 48^3 voxels, nearly symmetric about its axis; several poses
# fit about as well and the best five are 15-50° off (see benchmarks/matching.py for
# the rate at 128^3).
AMBIGUOUS = {"V-ALVE-01"}


@pytest.mark.slow
def test_section_geometry_is_the_index_geometry(index, prepared):
    """Sections measured at match time are measured as the index's were."""
    for r in range(0, len(index), 131):
        pv = prepared[index.specimen[r]]
        normal = index.normals[r].astype(float)
        offsets, geometry = matching._section_geometry(
            pv, normal, [float(index.offsets[r])], CONFIG
        )
        assert len(offsets) == 1
        assert np.allclose(geometry[0], index.geometry[r].astype(float), atol=0.02, rtol=2e-3)


def _true_pose(index, pv, volume, truth: Plane):
    """The query cut at `truth` (angle 0), and the origin and axes of its true pose
    (the query's reference point, its silhouette's centroid, placed in the volume)."""
    section = extract_slice(volume, truth, size=pv.window)
    q = matching._prepare_query(index, section)
    _, info = preprocess_slice(section, index.config.preprocess)
    mid = (pv.window - 1) / 2
    row, col = q.centroid[0] + info.box[0] - mid, q.centroid[1] + info.box[2] - mid
    u, v = plane_axes(truth.normal, 0.0)
    origin = pv.centre + truth.offset * np.asarray(truth.normal) + col * u + row * v
    return q, origin, u, v


def test_neighbouring_sections_get_out_of_a_periodic_local_optimum():
    """Chamberlets that repeat along an axis make a section 9 voxels off a local
    optimum of the registration; trying the parallel sections around it finds the
    true one."""
    rng = np.random.default_rng(5)
    z, y, x = np.mgrid[:40, :40, :40] - 19.5
    period = ndimage.gaussian_filter(rng.normal(size=(9, 40, 40)), (1.0, 1.2, 1.2), mode="wrap")
    unique = ndimage.gaussian_filter(rng.normal(size=(40, 40, 40)), 1.2)
    texture = np.tile(period, (5, 1, 1))[:40] + 0.4 * unique
    volume = np.where((x**2 + y**2 < 13**2) & (np.abs(z) < 15), 0.6 + 2.0 * texture, 0.0)
    volumes = {"cyl": volume.astype(np.float32)}
    config = IndexConfig(n_orientations=20, n_offsets=3)
    index = matching.build_index([("cyl", "Cylindrica", volumes["cyl"])], config)
    pv = index.prepared("cyl", volumes)
    truth = Plane((0.0, 0.0, 1.0), 2.0, 0.0)
    q, origin, u, v = _true_pose(index, pv, volumes["cyl"], truth)
    start = SectionPose(origin + 9.0 * np.asarray(truth.normal), np.stack([u, v]), 1.0)  # 9 above
    poses = [matching._Pose("cyl", "Cylindrica", start, 0.0, pv.centre)]
    never = lambda: False  # noqa: E731
    matching._register_all(index, q, poses, volumes, slice(0, 2), 400, never, lambda f: None)
    stuck = poses[0]
    assert abs(stuck.plane.offset - truth.offset) > 3.0  # the registration alone
    found = matching._neighbours(index, q, [stuck], volumes, never)
    best = max(found, key=lambda p: p.score)
    assert best.score > stuck.score
    assert abs(best.plane.offset - truth.offset) < 1.0
    assert _angle(best.plane.normal, truth.normal) < 3.0


def test_a_pose_half_a_turn_off_is_tried_the_other_way_round(monkeypatch):
    """A section nearly symmetric under a half turn in its plane: registration
    started half a turn off stays there; the neighbour stage also registers the pose
    turned round, which finds the truth."""
    rng = np.random.default_rng(11)
    z, y, x = np.mgrid[:40, :40, :40] - 19.5
    s = ndimage.gaussian_filter(rng.normal(size=(40, 40, 40)), 1.5)
    odd = ndimage.gaussian_filter(rng.normal(size=(40, 40, 40)), 1.5)
    texture = s + s[:, ::-1, ::-1] + 0.6 * odd  # the first two: a half turn about z
    volume = np.where((x**2 + y**2 < 14**2) & (np.abs(z) < 15), 0.6 + 2.0 * texture, 0.0)
    volumes = {"disc": volume.astype(np.float32)}
    index = matching.build_index([("disc", "Discus", volumes["disc"])], IndexConfig(20, 3))
    pv = index.prepared("disc", volumes)
    truth = Plane((0.0, 0.0, 1.0), 2.0, 0.0)
    q, origin, u, v = _true_pose(index, pv, volumes["disc"], truth)
    # only the turned pose: no parallel section holds the fossil this far away
    q.tuning = matching.SearchTuning(neighbour_offsets=(60.0,))
    turned = SectionPose(origin, -np.stack([u, v]), 1.0)
    poses = [matching._Pose("disc", "Discus", turned, 0.0, pv.centre)]
    never = lambda: False  # noqa: E731
    matching._register_all(index, q, poses, volumes, slice(0, 2), 400, never, lambda f: None)
    stuck = poses[0]
    assert np.dot(stuck.pose.axes[0], u) < -0.9  # the registration alone
    found = matching._neighbours(index, q, [stuck], volumes, never)
    assert found, "nothing registered"
    best = max(found, key=lambda p: p.score)
    assert best.score > stuck.score + 0.05
    assert np.dot(best.pose.axes[0] / np.linalg.norm(best.pose.axes[0]), u) > 0.99
    assert abs(best.plane.offset - truth.offset) < 1.0


def test_a_pose_turned_about_the_shell_axis_is_turned_back():
    """A solid of revolution with eight radial partitions, which an irregular texture
    breaks only a little: a section turned 100° about its axis sits next to a local
    optimum (a 90° turn) that the registration keeps; the axis-turn stage tries the
    pose turned about the specimen's principal axes and finds the truth."""
    rng = np.random.default_rng(3)
    z, y, x = np.mgrid[:40, :40, :40] - 19.5
    r, phi = np.hypot(x, y), np.arctan2(y, x)
    profile = ndimage.gaussian_filter(rng.normal(size=(40, 20)), 1.5)  # over (z, r)
    layers = ndimage.map_coordinates(profile, [z + 19.5, r], order=1, mode="nearest")
    partitions = np.cos(8 * phi) * np.clip(r / 6.0, 0.0, 1.0)
    odd = ndimage.gaussian_filter(rng.normal(size=(40, 40, 40)), 1.5)
    texture = layers / layers.std() + partitions / partitions.std() + 0.5 * odd / odd.std()
    volume = np.where((r < 14) & (np.abs(z) < 15), 1.0 + 0.3 * texture, 0.0)
    volumes = {"cone": volume.astype(np.float32)}
    index = matching.build_index([("cone", "Conica", volumes["cone"])], IndexConfig(20, 3))
    pv = index.prepared("cone", volumes)
    centroid, principal = pv.principal_axes
    axis = principal[np.argmax(np.abs(principal[:, 0]))]
    assert abs(axis[0]) > 0.99  # z (array axis 0), the long axis, is one of them
    truth = Plane((0.0, 0.0, 1.0), 4.0, 0.0)  # (z, y, x): a plane along the axis
    q, origin, u, v = _true_pose(index, pv, volumes["cone"], truth)
    m = Rotation.from_rotvec(np.deg2rad(100.0) * axis).as_matrix()
    start = SectionPose(centroid + m @ (origin - centroid), np.stack([m @ u, m @ v]), 1.0)
    poses = [matching._Pose("cone", "Conica", start, 0.0, pv.centre)]
    never = lambda: False  # noqa: E731
    matching._register_all(index, q, poses, volumes, slice(0, 2), 400, never, lambda f: None)
    stuck = poses[0]
    assert _angle(stuck.plane.normal, truth.normal) > 30.0  # the registration alone
    found = matching._axis_turns(index, q, [stuck], volumes, never)
    assert found, "nothing registered"
    best = max(found, key=lambda p: p.score)
    assert best.score > stuck.score + 0.02
    assert _angle(best.plane.normal, truth.normal) < 3.0
    sign = np.sign(np.dot(best.plane.normal, truth.normal))
    assert abs(sign * best.plane.offset - truth.offset) < 1.0


def _query(specimens, prepared, spec, normal, offset, angle, scale):
    rng = np.random.default_rng(sum(map(ord, spec)))
    truth = Plane(normal, offset, angle)
    section = extract_slice(specimens[spec][1], truth, size=prepared[spec].window)
    return truth, _perturb(section, rng, scale)


@pytest.mark.slow
@pytest.mark.parametrize("spec,normal,offset,angle,scale", QUERIES)
def test_oblique_query_finds_specimen(
    index, specimens, prepared, spec, normal, offset, angle, scale
):
    truth, q = _query(specimens, prepared, spec, normal, offset, angle, scale)
    assert min(_angle(truth.normal, n) for n in index.normals) > 0.5  # not an indexed normal
    found = matching.match(index, q, volumes=prepared)
    assert found[0].specimen_id == spec
    assert found[0].species == specimens[spec][0]
    assert set(found[0].scores) == {"dice", "ncc", "texture", "ssim", "descriptor", "combined"}
    assert found[0].image.dtype == np.uint8
    assert [m.scores["combined"] for m in found] == sorted(
        (m.scores["combined"] for m in found), reverse=True
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "spec,normal,offset,angle,scale",
    [
        pytest.param(*q, marks=pytest.mark.xfail(reason="symmetric spindle", strict=True))
        if q[0] in AMBIGUOUS
        else q
        for q in QUERIES
    ],
)
def test_oblique_query_recovers_pose(
    index, specimens, prepared, spec, normal, offset, angle, scale
):
    truth, q = _query(specimens, prepared, spec, normal, offset, angle, scale)
    found = matching.match(index, q, volumes=prepared)
    # a section and its flipped normal are one plane (offset flips too); nearly
    # symmetric shells make several poses fit, so some top-5 answer must be right
    poses = []
    for m in found:
        sign = 1.0 if np.dot(m.normal, truth.normal) >= 0 else -1.0
        poses.append((_angle(m.normal, truth.normal), abs(sign * m.offset - offset)))
    assert any(a <= 15.0 and d <= 3.0 for a, d in poses), poses
    # the best match itself is a recovered pose (the benchmark's criterion: 10°; at
    # 48^3 voxels poses a few degrees apart score alike)
    assert found[0].specimen_id == spec
    assert poses[0][0] <= 10.0 and poses[0][1] <= 1.0, poses


@pytest.mark.slow
def test_a_mounting_stem_in_the_query_is_read_away(index, specimens, prepared, monkeypatch):
    """A metal stem cut across in a corner takes the query's segmentation; the weak
    first answer sends the query through its other readings, and the one without its
    brightest class finds the pose."""
    # The Chrysalidina: at 48^3 voxels the Orbitoides' own thin mount is no denser than
    # its walls once blurred, so it stays in its prepared volume (as in the query), and
    # with the stem in the corner two of its poses 13 degrees apart score alike (0.63).
    spec, normal, offset, angle, scale = QUERIES[0]
    truth, q = _query(specimens, prepared, spec, normal, offset, angle, scale)
    q[:8, -9:] = 3.0 * np.percentile(q, 99.9)

    def recovered(m) -> bool:
        sign = 1.0 if np.dot(m.normal, truth.normal) >= 0 else -1.0
        return _angle(m.normal, truth.normal) <= 10.0 and abs(sign * m.offset - offset) <= 1.0

    best = matching.match(index, q, volumes=prepared)[0]
    assert best.reading == "brightest class removed"
    assert best.specimen_id == spec and recovered(best)
    never_retry = matching.SearchTuning(retry_score=-1.0)
    monkeypatch.setattr(matching, "bright_class_hides_fossil", lambda *a: False)
    first = matching.match(index, q, volumes=prepared, tuning=never_retry)[0]
    assert first.reading == "as given" and not recovered(first)
    assert first.scores["combined"] < best.scores["combined"]


@pytest.mark.slow
def test_a_stem_hiding_the_fossil_is_read_away_whatever_the_first_score(
    index, specimens, prepared, monkeypatch
):
    """A stem far brighter than the fossil takes the whole segmentation; even when the
    stem alone matches well (no weak answer), the reading without it is searched."""
    spec, normal, offset, angle, scale = QUERIES[2]
    truth, q = _query(specimens, prepared, spec, normal, offset, angle, scale)
    q[:8, -9:] = 3.0 * np.percentile(q, 99.9)
    tuning = matching.SearchTuning(retry_score=-1.0)  # no answer counts as weak
    seen = []
    best = matching.match(
        index, q, volumes=prepared, tuning=tuning, progress=lambda f, m: seen.append(m)
    )[0]
    again = [m for m in seen if "searching again" in m]
    assert again == [
        "a bright stem may hide the fossil: searching again, query read as "
        "'brightest class removed'"
    ]
    assert best.reading == "brightest class removed" and best.specimen_id == spec
    # a query without a stem is not searched again
    seen.clear()
    _, plain = _query(specimens, prepared, spec, normal, offset, angle, scale)
    matching.match(
        index, plain, volumes=prepared, tuning=tuning, progress=lambda f, m: seen.append(m)
    )
    assert not any("searching again" in m for m in seen)


@pytest.mark.slow
@pytest.mark.parametrize("retry_score,retried", [(0.0, False), (2.0, True)])
def test_other_readings_are_searched_only_after_a_weak_answer(
    index, specimens, prepared, monkeypatch, retry_score, retried
):
    truth, q = _query(specimens, prepared, *QUERIES[0])
    tuning = matching.SearchTuning(retry_score=retry_score)
    seen = []
    found = matching.match(
        index, q, volumes=prepared, tuning=tuning, progress=lambda f, m: seen.append(m)
    )
    again = [m for m in seen if "searching again" in m]
    names = [r.name for r in matching.READINGS[1:]]
    assert len(again) == (len(names) if retried else 0)
    assert all(name in m for name, m in zip(names[: len(again)], again, strict=True))
    assert found[0].reading in (names + ["as given"] if retried else ["as given"])
    # refine=False returns screened poses, whose scores are not comparable: no retry
    seen.clear()
    matching.match(
        index, q, volumes=prepared, refine=False, tuning=tuning,
        progress=lambda f, m: seen.append(m),
    )  # fmt: skip
    assert not any("searching again" in m for m in seen)


@pytest.mark.slow
@pytest.mark.parametrize(
    "retry_score,wide_search,widened", [(0.0, 3, False), (2.0, 1, False), (2.0, 3, True)]
)
def test_a_query_weak_on_every_reading_gets_a_wider_search(
    index, specimens, prepared, monkeypatch, retry_score, wide_search, widened
):
    """Still weak after every reading: its best reading and the smoothed outline are
    searched once more with wide_search times the candidates at each stage (and
    wide_around times the poses whose neighbours and turns are tried), and a wider
    answer is kept only where it scores higher."""
    truth, q = _query(specimens, prepared, *QUERIES[0])
    tuning = matching.SearchTuning(retry_score=retry_score, wide_search=wide_search)
    calls = []
    search = matching._search

    def spy(index_, q_, rows, volumes, spent, report, **settings):
        calls.append(settings)
        return search(index_, q_, rows, volumes, spent, report, **settings)

    monkeypatch.setattr(matching, "_search", spy)
    seen = []
    best = matching.match(
        index, q, volumes=prepared, coarse_k=50, screen_k=4, refine_k=2, tuning=tuning,
        progress=lambda f, m: seen.append(m),
    )[0]  # fmt: skip
    wider = [m for m in seen if "a wider search" in m]
    narrow = dict(coarse_k=50, screen_k=4, refine_k=2)
    first_pass = calls[: len(calls) - len(wider)]
    assert all({k: c[k] for k in narrow} == narrow for c in first_pass)
    assert all(c.get("around_factor", 1) == 1 for c in first_pass)
    if not widened:
        assert wider == [] and (len(calls) == 1 if retry_score == 0.0 else len(calls) > 1)
        return
    assert len(wider) in (1, 2) and "'smoothed outline'" in wider[-1]
    wide = {k: v * wide_search for k, v in narrow.items()}
    assert all({k: c[k] for k in wide} == wide for c in calls[-len(wider) :])
    assert all(c["around_factor"] == tuning.wide_around > 1 for c in calls[-len(wider) :])
    # the wider search can only improve the answer
    narrow_only = matching.SearchTuning(retry_score=retry_score, wide_search=1)
    first = matching.match(
        index, q, volumes=prepared, coarse_k=50, screen_k=4, refine_k=2, tuning=narrow_only
    )[0]
    assert best.scores["combined"] >= first.scores["combined"] - 1e-6


@pytest.mark.slow
def test_restrict_to_specimens_and_species(index, specimens, prepared):
    spec, normal, offset, angle, _ = QUERIES[0]
    q = extract_slice(specimens[spec][1], Plane(normal, offset, angle), size=60)
    only = matching.match(index, q, volumes=prepared, specimens=["V-ALVE-01"], refine=False)
    assert {m.specimen_id for m in only} == {"V-ALVE-01"}
    genus = matching.match(index, q, volumes=prepared, species="Orbitoides", refine=False, top_k=3)
    assert {m.species for m in genus} == {"Orbitoides"}
    with pytest.raises(MatchError, match="not in the index"):
        matching.match(index, q, volumes=prepared, specimens=["nope"])


@pytest.mark.slow
def test_volumes_are_required_and_cached(index, specimens):
    spec, normal, offset, angle, _ = QUERIES[2]
    vol = specimens[spec][1]
    q = extract_slice(vol, Plane(normal, offset, angle), size=60)
    with pytest.raises(MatchError, match="needs the specimen volumes"):
        matching.match(index, q)
    with pytest.raises(MatchError, match="needs the volume of specimen 'V-"):
        matching.match(index, q, volumes={"V-ALVE-01": specimens["V-ALVE-01"][1]})
    raw = {spec: vol}
    first = index.prepared(spec, raw)
    assert index.prepared(spec, raw) is first  # prepared once, then reused


@pytest.mark.slow
def test_progress_reports_fractions_up_to_done(index, prepared):
    spec, normal, offset, angle, _ = QUERIES[0]
    q = extract_slice(prepared[spec].data, Plane(normal, offset, angle), size=60)
    seen = []
    matching.match(index, q, volumes=prepared, progress=lambda f, msg: seen.append((f, msg)))
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and seen[-1][1] == "done"
    assert any("refining" in msg for _, msg in seen)


@pytest.mark.slow
def test_matches_are_distinct_poses(index, specimens, prepared):
    truth, q = _query(specimens, prepared, *QUERIES[1])
    found = matching.match(index, q, volumes=prepared, top_k=5)
    for i, a in enumerate(found):
        for b in found[:i]:
            same = a.specimen_id == b.specimen_id
            if same and abs(abs(a.offset) - abs(b.offset)) < 1.0:
                assert _angle(a.normal, b.normal) > 3.0


@pytest.mark.slow
@pytest.mark.parametrize(
    "bad,err,msg",
    [
        (np.zeros((64, 64)), PreprocessError, "blank"),
        (np.full((64, 64), 7, np.uint16), PreprocessError, "blank"),
        (np.random.default_rng(0).random((8, 8)), PreprocessError, "too small"),
        (np.array([b"\x00\x01", b"zz"] * 50, dtype=object).reshape(10, 10), MatchError, "dtype"),
        (np.zeros((3, 40, 40, 2)), PreprocessError, "2-D"),
    ],
)
def test_bad_queries_raise_clear_errors(index, bad, err, msg):
    with pytest.raises(err, match=msg):
        matching.match(index, bad)


@pytest.mark.slow
def test_bad_arguments(index):
    img = np.zeros((40, 40))
    img[10:30, 12:28] = 1.0
    with pytest.raises(MatchError, match="top_k"):
        matching.match(index, img, top_k=0)
    with pytest.raises(MatchError, match="triples"):
        matching.build_index([("a", np.zeros((8, 8, 8)))], CONFIG)
    with pytest.raises(ValueError, match="n_orientations"):
        IndexConfig(n_orientations=0)


@pytest.mark.slow
def test_index_from_another_descriptor_layout_refused(index, tmp_path):
    path = index.save(tmp_path / "idx.npz")
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["desc_mean"] = arrays["desc_mean"][:-5]
    np.savez(tmp_path / "other.npz", **arrays)
    with pytest.raises(MatchError, match="descriptors have .* values.*rebuild it"):
        MatchIndex.load(tmp_path / "other.npz")


@pytest.mark.slow
def test_top_k_matches_are_returned(index, specimens, prepared):
    _, q = _query(specimens, prepared, *QUERIES[3])
    assert len(matching.match(index, q, volumes=prepared, top_k=5)) == 5
    assert len(matching.match(index, q, volumes=prepared, top_k=2, refine=False)) == 2


@pytest.mark.slow
@pytest.mark.parametrize("name", ["coarse_k", "screen_k", "refine_k"])
def test_search_effort_is_validated(index, prepared, name):
    spec, normal, offset, angle, _ = QUERIES[0]
    q = extract_slice(prepared[spec].data, Plane(normal, offset, angle), size=60)
    with pytest.raises(MatchError, match=f"{name} must be an integer >= 1, got 0"):
        matching.match(index, q, volumes=prepared, **{name: 0})
    assert matching.match(index, q, volumes=prepared, top_k=1, **{name: 1})


@pytest.mark.parametrize(
    ("a", "b", "offsets", "expected"),
    [
        ((0, 0, 1), (0, 0, 1), (2.0, 5.0), (0.0, 3.0)),
        ((0, 0, 1), (0, 0, -1), (2.0, -2.0), (0.0, 0.0)),  # the same plane, flipped
        ((1, 0, 0), (0, 1, 0), (0.0, 0.0), (90.0, 0.0)),
        ((1, 0, 0), (np.cos(0.1), np.sin(0.1), 0), (1.0, 1.0), (np.degrees(0.1), 0.0)),
    ],
)
def test_plane_error_treats_flipped_planes_as_one(a, b, offsets, expected):
    angle, offset = plane_error(a, b, *offsets)
    assert angle == pytest.approx(expected[0], abs=1e-6)
    assert offset == pytest.approx(expected[1], abs=1e-9)


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(short_evals=0), r"short_evals = 0 is invalid: expected an integer >= 1"),
        (dict(wide_search=2.5), r"wide_search = 2.5 is invalid"),
        (dict(registration_threads=True), r"registration_threads = True is invalid"),
        (dict(texture_weight=0.5), r"texture_weight \+ ncc_weight = 0.8 is invalid"),
        (dict(ncc_weight=-0.1, texture_weight=1.1), r"texture_weight = 1.1 is invalid"),
        (dict(coarse_descriptor_weight=2), r"coarse_descriptor_weight = 2 is invalid"),
        (dict(registration_levels=()), r"registration_levels = \(\) is invalid"),
        (dict(registration_levels=((4, 1.0),)), r"registration_levels = .* is invalid"),
        (dict(axis_turn_step=0.0), r"axis_turn_step = 0.0"),
    ],
)
def test_search_tuning_rejects_bad_values_naming_them(change, message):
    with pytest.raises(ValueError, match=message):
        matching.SearchTuning(**change)


def test_search_tuning_is_what_the_search_reads(index, specimens, prepared):
    """The query carries the tuning it is searched with; the default is TUNING; a
    non-SearchTuning is refused before any work."""
    truth, q = _query(specimens, prepared, *QUERIES[0])
    assert matching._prepare_query(index, q).tuning is matching.TUNING
    levels = ((24, 2.0), (48, 1.5), (64, 1.0))
    tuned = matching._prepare_query(
        index, q, tuning=matching.SearchTuning(registration_levels=levels)
    )
    # the pyramid follows the tuning: its levels, then the fine_size grid
    assert [t.shape[0] for t in tuned.templates] == [24, 48, 64, index.config.fine_size]
    with pytest.raises(MatchError, match="tuning must be a SearchTuning, got dict"):
        matching.match(index, q, volumes=prepared, tuning={"retry_score": 0.5})


def _one_shell_index():
    """A one-specimen index of a small shell: quick to build (no virtual collection)."""
    z, y, x = np.mgrid[:48, :48, :48].astype(np.float32)
    vol = np.full((48, 48, 48), 0.1, np.float32)
    r = np.sqrt((z - 24) ** 2 + (y - 22) ** 2 / 0.6 + (x - 24) ** 2)
    vol[(r > 9) & (r < 13)] = 1.0
    vol[(r <= 9) & (np.abs(x - 24) < 2)] = 0.7  # a septum: the section has texture
    config = IndexConfig(n_orientations=4, n_offsets=5)
    return matching.build_index([("V-TEST", "Testina", vol)], config), {"V-TEST": vol}


def test_a_large_query_is_shrunk_before_anything_else(monkeypatch):
    """A scan image bigger than ``query_max_side`` is searched exactly as its shrunk
    copy is, and nothing after the shrink sees the big one."""
    index, volumes = _one_shell_index()
    plane = Plane(tuple(index.normals[2]), float(index.offsets[2]), 0.0)
    prepared = matching.prepare_volume(volumes["V-TEST"], index.config)
    section = matching._sections(prepared, [plane])[0]
    big = cv2.resize(section, (1500, 1200), interpolation=cv2.INTER_LINEAR)
    seen = []
    prepare = matching._prepare_query

    def spy(index, image, *args, **kwargs):
        seen.append(np.asarray(image).shape)
        return prepare(index, image, *args, **kwargs)

    monkeypatch.setattr(matching, "_prepare_query", spy)
    from_big = matching.match(index, big, volumes=volumes, refine=False, top_k=2)
    assert seen and max(max(s) for s in seen) == 1024
    small, scale = shrink_to_fit(big, 1024)
    assert small.shape == (819, 1024) and scale == pytest.approx(1024 / 1500)
    from_small = matching.match(index, small, volumes=volumes, refine=False, top_k=2)
    for a, b in zip(from_big, from_small, strict=True):
        assert (a.specimen_id, a.normal, a.offset, a.angle_deg) == (
            b.specimen_id,
            b.normal,
            b.offset,
            b.angle_deg,
        )
        assert a.scores == b.scores
    # a tuning may keep more of the query
    seen.clear()
    matching.match(
        index,
        big,
        volumes=volumes,
        refine=False,
        tuning=matching.SearchTuning(query_max_side=1200),
    )
    assert max(max(s) for s in seen) == 1200


@pytest.mark.parametrize("side", [8, 15, 0, 2.5])
def test_query_max_side_is_validated(side):
    with pytest.raises(ValueError, match=rf"query_max_side = {side!r} is invalid"):
        matching.SearchTuning(query_max_side=side)
