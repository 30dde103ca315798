"""foramlib.inference.classify (preprocessing, the saved ensemble), its calibration and Grad-CAM.

A tiny workspace (two untrained tiny_cnn members, a hand-made EnsembleSpec, validation
predictions) is built in a temporary folder; nothing depends on a pipeline run.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pandas as pd
import pytest

from foramlib.dataset.preprocess import PreprocessConfig, PreprocessError
from foramlib.evaluation.ensemble import EnsembleSpec, save_ensembles
from foramlib.inference import classify, section_check
from foramlib.inference.calibration import calibrate_spec, calibrate_threshold
from foramlib.inference.gradcam import cam_side, feature_layer, grad_cam, overlay

NAMES = ["Alpha", "Beta", "Gamma"]
SIZE = 32


def disc_image(shape=(80, 100), dtype=np.uint8, value=200, radius=25):
    img = np.zeros(shape, dtype)
    cv2.circle(img, (shape[1] // 2, shape[0] // 2), radius, int(value), -1)
    cv2.circle(img, (shape[1] // 2, shape[0] // 2), radius // 3, int(value) // 4, -1)
    return img


def write_workspace(root, *, with_val=True, final="PatchEnsemble"):
    """models/<m>/ for two tiny_cnn members, results/ensemble + metrics.json, slicing.json."""
    from foramlib.learn.loader import save_class_names
    from foramlib.learn.models import build_model

    rng = np.random.default_rng(0)
    members = ("m1", "m2")
    n = 40
    y = rng.integers(0, 3, n)
    for i, m in enumerate(members):
        d = root / "models" / m
        d.mkdir(parents=True)
        model = build_model("tiny_cnn", input_size=SIZE, n_classes=len(NAMES), seed=i)
        model.save(d / "model.keras")
        save_class_names(NAMES, d / "class_names.json")
        if with_val:
            probs = rng.dirichlet(np.ones(3), n)
            probs[np.arange(n // 2), y[: n // 2]] += 2.0  # half confidently right
            probs /= probs.sum(axis=1, keepdims=True)
            frame = pd.DataFrame(
                {
                    "slice_id": [f"v:{k}" for k in range(n)],
                    "split": "val",
                    "true": [NAMES[k] for k in y],
                    "predicted": [NAMES[k] for k in probs.argmax(1)],
                }
            )
            for j, name in enumerate(NAMES):
                frame[f"p_{name}"] = probs[:, j]
            frame.to_csv(d / "predictions_val.csv", index=False)
    specs = {
        "PatchEnsemble": EnsembleSpec(
            "patch", members, tuple(NAMES), main="m1", patch="m2", weak=("Beta",)
        ),
        "Top-2": EnsembleSpec("top_k", members, tuple(NAMES), k=2),
    }
    (root / "results" / "ensemble").mkdir(parents=True)
    for name, spec in specs.items():
        spec.save(root / "results" / "ensemble" / f"{name}.json")
    save_ensembles(specs, root / "results" / "ensembles.json")
    metrics = {"data_source": "virtual", "final": final, "models": {}}
    (root / "results" / "metrics.json").write_text(json.dumps(metrics))
    (root / "data" / "slices").mkdir(parents=True)
    pp = PreprocessConfig(size=SIZE, sensitivity=0.5).as_dict()
    (root / "data" / "slices" / "slicing.json").write_text(json.dumps({"preprocess": pp}))
    return root


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return write_workspace(tmp_path_factory.mktemp("ws"))


@pytest.fixture(scope="module")
def classifier(workspace):
    return classify.Classifier.from_workspace(workspace)


# --------------------------------------------------------------------------- preprocessing


def test_prepare_uses_the_shared_preprocessing():
    from foramlib.dataset.preprocess import preprocess_slice

    img = disc_image()
    base = PreprocessConfig(size=SIZE)
    out, info = classify.prepare(img, classify.PrepareOptions(), base)
    expected, _ = preprocess_slice(img, base)
    np.testing.assert_array_equal(out, expected)
    assert info["source"] == "preprocessed" and 0.1 < info["fraction"] < 0.4


def test_prepare_options_change_the_output():
    img = disc_image()
    base = PreprocessConfig(size=SIZE)
    plain, _ = classify.prepare(img, classify.PrepareOptions(), base)
    sharp, info = classify.prepare(img, classify.PrepareOptions(clahe=True, sharpen=True), base)
    assert not np.array_equal(plain, sharp)
    assert info["config"]["clahe"] and info["config"]["sharpen"]


def test_prepare_manual_crop_keeps_only_the_chosen_part():
    img = np.zeros((60, 120), np.uint8)
    cv2.circle(img, (30, 30), 20, 200, -1)
    cv2.rectangle(img, (80, 10), (115, 50), 120, -1)
    base = PreprocessConfig(size=SIZE)
    _, whole = classify.prepare(img, classify.PrepareOptions(), base)
    _, left = classify.prepare(img, classify.PrepareOptions(crop=(0, 1, 0, 0.5)), base)
    assert left["crop"] == [0.0, 1.0, 0.0, 0.5]
    # only the disc: the crop box is square around it, much narrower than both shapes
    assert (left["box"][3] - left["box"][2]) < (whole["box"][3] - whole["box"][2])


def test_prepare_stored_slice_is_used_as_is_with_training_settings():
    base = PreprocessConfig(size=SIZE)
    stored, _ = classify.prepare(disc_image(), classify.PrepareOptions(), base)
    same, info = classify.prepare(stored, classify.PrepareOptions(), base, cleaned=True)
    assert info["source"] == "stored slice" and same is not stored
    np.testing.assert_array_equal(same, stored)
    _, changed = classify.prepare(
        stored, classify.PrepareOptions(sensitivity=0.7), base, cleaned=True
    )
    assert changed["source"] == "preprocessed"


def test_prepare_shrinks_huge_images():
    big = cv2.resize(disc_image(), (3000, 2400), interpolation=cv2.INTER_NEAREST)
    out, info = classify.prepare(big, classify.PrepareOptions(), PreprocessConfig(size=SIZE))
    assert out.shape == (SIZE, SIZE) and info["downscaled_from"] == [2400, 3000]


@pytest.mark.parametrize(
    ("image", "match"),
    [
        (np.zeros((40, 40), np.uint8), "blank"),
        (np.eye(8, dtype=np.uint8), "too small"),
    ],
)
def test_prepare_rejects_blank_and_tiny(image, match):
    with pytest.raises(PreprocessError, match=match):
        classify.prepare(image, name="upload.png")


@pytest.mark.parametrize(
    "crop", [(0.5, 0.4, 0, 1), (0, 1, -0.1, 1), (0, 1.5, 0, 1), (0, 1, 0, float("nan"))]
)
def test_prepare_options_reject_bad_crops(crop):
    with pytest.raises(classify.ClassifyError, match="crop must be"):
        classify.PrepareOptions(crop=crop)


def test_prepare_options_reject_bad_sensitivity():
    with pytest.raises(classify.ClassifyError, match="sensitivity must be in"):
        classify.PrepareOptions(sensitivity=1.5).config(PreprocessConfig())


def test_preprocess_defaults_from_store_then_params(tmp_path):
    (tmp_path / "params.yaml").write_text("slice:\n  size: 48\n  sensitivity: 0.6\n")
    cfg, source = classify.preprocess_defaults(tmp_path)
    assert (cfg.size, cfg.sensitivity, source) == (48, 0.6, "params.yaml slice.*")
    (tmp_path / "data" / "slices").mkdir(parents=True)
    pp = PreprocessConfig(size=64, clahe=True).as_dict()
    (tmp_path / "data" / "slices" / "slicing.json").write_text(json.dumps({"preprocess": pp}))
    cfg, source = classify.preprocess_defaults(tmp_path)
    assert (cfg.size, cfg.clahe, source) == (64, True, "data/slices/slicing.json")


# --------------------------------------------------------------------------- calibration


def test_calibration_picks_the_largest_coverage_reaching_the_precision():
    conf = np.array([0.9, 0.85, 0.8, 0.7, 0.6, 0.55, 0.5, 0.4])
    ok = np.array([1, 1, 1, 1, 0, 1, 0, 0], bool)
    cal = calibrate_threshold(conf, ok, target_precision=0.8, min_support=3)
    # accepting >= 0.55: 5 of 6 right (83 %); >= 0.5: 5 of 7 (71 %)
    assert cal.threshold == 0.55 and cal.reached
    assert cal.precision == pytest.approx(5 / 6) and cal.coverage == pytest.approx(6 / 8)
    assert cal.uncertain(0.54) and not cal.uncertain(0.55)


def test_calibration_ties_are_taken_together():
    conf = [0.9, 0.7, 0.7, 0.7, 0.2]
    ok = [True, True, False, False, False]
    cal = calibrate_threshold(conf, ok, target_precision=0.6, min_support=1)
    assert cal.threshold == 0.9  # ">= 0.7" takes all three tied slices: 2 of 4 right
    cal = calibrate_threshold(conf, ok, target_precision=0.5, min_support=2)
    assert cal.threshold == 0.7 and cal.coverage == pytest.approx(0.8)


def test_calibration_unreachable_flags_everything():
    cal = calibrate_threshold([0.9, 0.8], [False, True], target_precision=0.9)
    assert not cal.reached and cal.uncertain(0.99)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(confidence=[], correct=[]), "non-empty"),
        (dict(confidence=[0.5], correct=[True, False]), "one length"),
        (dict(confidence=[float("nan")], correct=[True]), "NaN"),
        (dict(confidence=[0.5], correct=[True], target_precision=0), "target_precision"),
        (dict(confidence=[0.5], correct=[True], min_support=0), "min_support"),
    ],
)
def test_calibration_rejects_bad_input(kwargs, match):
    with pytest.raises(classify.ClassifyError, match=match):
        calibrate_threshold(**kwargs)


def test_calibrate_spec_uses_validation_predictions(workspace):
    from foramlib.evaluation.metrics import load_model_predictions

    spec = EnsembleSpec.load(workspace / "results" / "ensemble" / "Top-2.json")
    cal = calibrate_spec(spec, workspace / "models", target_precision=0.6, min_support=5)
    val = {m: load_model_predictions(workspace / "models" / m, "val") for m in spec.members}
    probs = spec.apply(val)
    conf, ok = probs.max(1), probs.argmax(1) == val["m1"].y_true
    accepted = conf >= cal.threshold
    assert cal.n_val == 40
    assert ok[accepted].mean() == pytest.approx(cal.precision)
    assert cal.reached and cal.precision >= 0.6


# --------------------------------------------------------------------------- classifier


def test_missing_artefacts_name_what_to_run(tmp_path):
    assert classify.missing_artefacts(tmp_path) == [
        "results/metrics.json (the evaluated final ensemble)"
    ]
    with pytest.raises(classify.ArtefactError, match=r"metrics\.json is missing.*dvc repro"):
        classify.Classifier.from_workspace(tmp_path)


def test_missing_member_model_is_reported(tmp_path):
    ws = write_workspace(tmp_path, with_val=False)
    (ws / "models" / "m2" / "model.keras").unlink()
    assert classify.missing_artefacts(ws) == ["models/m2/model.keras"]
    with pytest.raises(classify.ArtefactError, match=r"m2.*missing.*dvc repro"):
        classify.Classifier.from_workspace(ws)


def test_classifier_loads_the_final_ensemble(classifier):
    assert classifier.name == "PatchEnsemble" and classifier.main == "m1"
    assert classifier.input_sizes == {"m1": SIZE, "m2": SIZE}
    assert classifier.preprocess.size == SIZE
    assert classifier.calibration is not None and classifier.calibration.n_val == 40
    assert classifier.sources["preprocessing"] == "data/slices/slicing.json"


def test_predict_combines_members_like_the_spec(classifier):
    clean, info = classifier.prepare(disc_image())
    pred = classifier.predict(clean, preprocessing=info)
    x = clean.astype(np.float32)[None, :, :, None]
    members = {m: np.asarray(model.predict_on_batch(x)) for m, model in classifier.models.items()}
    expected = classifier.spec.apply(members)[0]
    assert [g for g, _ in pred.top5] == [NAMES[i] for i in np.argsort(-expected)]
    assert pred.probabilities == pytest.approx(dict(zip(NAMES, expected, strict=True)))
    assert pred.uncertain == classifier.calibration.uncertain(pred.confidence)
    assert pred.metadata["members"] == ["m1", "m2"] and pred.metadata["preprocessing"] is info


def test_predict_resizes_like_training(workspace):
    """A slice of another size is resized with the training loader's rule."""
    from foramlib.dataset.preprocess import resize_slice

    clf = classify.Classifier.from_workspace(workspace, ensemble="m1")
    assert clf.spec.members == ("m1",)
    big = np.random.default_rng(1).integers(0, 255, (50, 50), dtype=np.uint8)
    pred = clf.predict(big)
    x = resize_slice(big, SIZE).astype(np.float32)[None, :, :, None]
    expected = np.asarray(clf.models["m1"].predict_on_batch(x))[0]
    assert pred.member_probabilities["m1"] == pytest.approx(expected.tolist())


def _dihedral_mean(model, x):
    views = [np.rot90(m, k, axes=(1, 2)) for m in (x, x[:, :, ::-1]) for k in range(4)]
    return np.mean([np.asarray(model.predict_on_batch(np.ascontiguousarray(v))) for v in views], 0)


def test_members_are_served_with_the_views_of_their_training_run(tmp_path):
    ws = write_workspace(tmp_path)
    (ws / "models" / "m2" / "config.json").write_text(json.dumps({"tta_views": 8}))
    clf = classify.Classifier.from_workspace(ws)
    assert clf.tta_views == {"m1": 1, "m2": 8}  # m1 has no config.json: slice alone
    clean, _ = clf.prepare(disc_image())
    pred = clf.predict(clean)
    assert pred.metadata["tta_views"] == {"m1": 1, "m2": 8}
    x = clean.astype(np.float32)[None, :, :, None]
    expected_m2 = _dihedral_mean(clf.models["m2"], x)[0]
    single_m2 = np.asarray(clf.models["m2"].predict_on_batch(x))[0]
    assert pred.member_probabilities["m2"] == pytest.approx(expected_m2.tolist(), abs=1e-6)
    assert not np.allclose(expected_m2, single_m2, atol=1e-6)  # the views mattered
    stack = np.stack([clean, np.ascontiguousarray(clean[::-1])])
    many = clf.predict_many(stack)
    assert many[0] == pytest.approx(list(pred.probabilities.values()), abs=1e-6)


@pytest.mark.parametrize("text", ['{"tta_views": 3}', "not json", "[8]"])
def test_bad_member_config_is_an_artefact_error(tmp_path, text):
    ws = write_workspace(tmp_path)
    (ws / "models" / "m1" / "config.json").write_text(text)
    with pytest.raises(classify.ArtefactError, match=r"models/m1/config.json is unreadable"):
        classify.Classifier.from_workspace(ws)


def test_predict_rejects_raw_images(classifier):
    with pytest.raises(classify.ClassifyError, match="cleaned 2-D uint8"):
        classifier.predict(np.zeros((SIZE, SIZE), np.float32))


def test_unknown_ensemble_is_an_artefact_error(workspace):
    with pytest.raises(classify.ArtefactError, match="ensemble 'Top-9' not found"):
        classify.Classifier.from_workspace(workspace, ensemble="Top-9")


def test_classifier_without_validation_predictions_flags_everything(tmp_path):
    ws = write_workspace(tmp_path, with_val=False)
    clf = classify.Classifier.from_workspace(ws)
    clean, _ = clf.prepare(disc_image())
    assert clf.calibration is None and clf.predict(clean).uncertain


def test_prepare_records_how_colourful_the_input_is():
    grey = disc_image()
    _, info = classify.prepare(grey, classify.PrepareOptions(), PreprocessConfig(size=SIZE))
    assert info["colourfulness"] == 0.0
    tinted = np.dstack([grey, grey // 2, np.zeros_like(grey)])
    _, info = classify.prepare(tinted, classify.PrepareOptions(), PreprocessConfig(size=SIZE))
    assert info["colourfulness"] > section_check.COLOUR_LIMIT


def test_prepare_upload_keeps_stored_slices_and_preprocesses_the_rest():
    base = PreprocessConfig(size=SIZE)
    stored = _stored()
    same, info = classify.prepare_upload(np.dstack([stored] * 3), base)
    assert info["source"] == "stored slice"
    np.testing.assert_array_equal(same, stored)
    _, info = classify.prepare_upload(disc_image(), base)
    assert info["source"] == "preprocessed"
    # a crop or other settings always run the preprocessing, as in the dashboard
    options = classify.PrepareOptions(sensitivity=0.7)
    assert classify.prepare_upload(stored, base, options)[1]["source"] == "preprocessed"


def _check_for(size, seed=0):
    rng = np.random.default_rng(seed)
    discs = []
    for _ in range(60):
        img = disc_image(value=int(rng.integers(150, 250)), radius=int(rng.integers(18, 30)))
        discs.append(
            classify.prepare(img, classify.PrepareOptions(), PreprocessConfig(size=size))[0]
        )
    discs = np.stack(discs)
    return section_check.fit_section_check(discs[:40], discs[40:], keep=0.9, components=1)


def test_classifier_without_a_section_check_gives_no_verdict(classifier):
    assert classifier.section_check is None
    assert "missing" in classifier.sources["section_check"]
    clean, info = classifier.prepare(disc_image())
    pred = classifier.predict(clean, preprocessing=info)
    assert pred.section is None and not pred.not_a_section
    assert pred.metadata["section_check"] is None


def test_classifier_gives_the_section_checks_verdict(tmp_path):
    ws = write_workspace(tmp_path)
    _check_for(SIZE).save(ws / classify.SECTION_CHECK)
    clf = classify.Classifier.from_workspace(ws)
    assert clf.sources["section_check"] == classify.SECTION_CHECK
    clean, info = clf.prepare(disc_image())
    pred = clf.predict(clean, preprocessing=info)
    assert pred.section.looks_like_section and not pred.not_a_section
    assert pred.metadata["section_check"]["reason"] == "ok"
    noise = np.random.default_rng(1).integers(0, 256, (SIZE, SIZE)).astype(np.uint8)
    pred = clf.predict(noise)
    assert pred.not_a_section and pred.section.reason == "unlike"
    assert pred.genus in NAMES  # the genus is still given, with the verdict beside it
    tinted = np.dstack([disc_image(), disc_image() // 2, np.zeros_like(disc_image())])
    clean, info = clf.prepare(tinted)
    assert clf.predict(clean, preprocessing=info).section.reason == "colour"


def test_the_section_check_is_read_once_per_version_of_its_file(tmp_path):
    import os

    path = tmp_path / classify.SECTION_CHECK
    path.parent.mkdir(parents=True)
    _check_for(SIZE).save(path)
    base = PreprocessConfig(size=SIZE)
    first, _ = classify.load_section_check(tmp_path, base)
    assert classify.load_section_check(tmp_path, base)[0] is first  # every match asks
    _check_for(SIZE, seed=1).save(path)  # the evaluate stage ran again
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    again, _ = classify.load_section_check(tmp_path, base)
    assert again is not first
    assert not np.array_equal(again.centre, first.centre)  # the new file's check


def test_stale_or_broken_section_check_is_not_used(tmp_path):
    ws = write_workspace(tmp_path)
    _check_for(2 * SIZE).save(ws / classify.SECTION_CHECK)
    clf = classify.Classifier.from_workspace(ws)
    assert clf.section_check is None and clf.sources["section_check"].startswith("stale")
    (ws / classify.SECTION_CHECK).write_bytes(b"garbage")
    clf = classify.Classifier.from_workspace(ws)
    assert clf.section_check is None and clf.sources["section_check"].startswith("unusable")


def test_loaded_models_are_compiled_for_prediction_on_jax(workspace, tmp_path, monkeypatch):
    """Keras marks the augmentation layers (idle at inference) as not jit-compilable
    and does not save `supports_jit`, so on JAX a loaded model would predict op by
    op; loading applies :func:`foramlib.learn.training.enable_jit`. Only the backend's name
    is faked here (JAX is not a dependency); on TensorFlow nothing changes."""
    import shutil

    import keras

    from foramlib.learn import training
    from foramlib.learn.augment import AugmentConfig
    from foramlib.learn.models import build_model, sublayers

    ws = shutil.copytree(workspace, tmp_path / "ws")
    augmented = build_model(
        "tiny_cnn", input_size=SIZE, n_classes=len(NAMES), augment=AugmentConfig()
    )
    augmented.save(ws / "models" / "m1" / "model.keras")
    as_saved = classify.Classifier.from_workspace(ws, ensemble="m1").models["m1"]
    assert not all(layer.supports_jit for layer in sublayers(as_saved))
    plain = keras.saving.load_model(ws / "models" / "m1" / "model.keras", compile=False)
    assert as_saved.jit_compile == plain.jit_compile  # TensorFlow: Keras' own choice

    real = training.enable_jit
    monkeypatch.setattr(training, "enable_jit", lambda m, backend=None: real(m, backend="jax"))
    model = classify.Classifier.from_workspace(ws, ensemble="m1").models["m1"]
    assert all(layer.supports_jit for layer in sublayers(model))
    assert model.jit_compile is True


# --------------------------------------------------------------------------- Grad-CAM


def test_feature_layer_of_nested_backbone(classifier):
    assert feature_layer(classifier.models["m1"]).name == "block4_relu"


def test_feature_layer_can_be_finer(classifier):
    from foramlib.learn.models import backbone_of

    model = classifier.models["m1"]
    fine = feature_layer(model, min_side=6)
    side = fine.output.shape[1]
    assert side >= 6 and "Padding" not in type(fine).__name__
    # the LAST map that fine: every later spatial layer is coarser
    layers = backbone_of(model).layers
    later = layers[layers.index(fine) + 1 :]
    assert all(len(x.output.shape) != 4 or x.output.shape[1] < 6 for x in later)
    with pytest.raises(classify.ClassifyError, match="side >= 99"):
        feature_layer(model, min_side=99)


def test_classifier_grad_cam_uses_the_finer_map(classifier):
    clean, _ = classifier.prepare(disc_image())
    model = classifier.models["m1"]
    heat = classifier.grad_cam(clean)
    fine = grad_cam(model, clean.astype(np.float32), min_side=cam_side(SIZE))
    coarse = grad_cam(model, clean.astype(np.float32))
    assert fine.shape[0] > coarse.shape[0]
    expected = cv2.resize(fine, clean.shape[::-1], interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(heat, expected, atol=1e-6)


def test_grad_cam_follows_the_models_own_forward_pass(classifier):
    import keras

    from foramlib.learn.models import backbone_of

    model = classifier.models["m1"]
    clean, _ = classifier.prepare(disc_image())
    heat = grad_cam(model, clean.astype(np.float32))
    assert heat.shape == (SIZE // 8, SIZE // 8) and heat.dtype == np.float32
    assert 0.0 <= heat.min() and heat.max() <= 1.0
    # the wrapper layers it re-applies reproduce the model's output
    net = backbone_of(model)
    x = clean.astype(np.float32)[None, :, :, None]
    rgb = model.get_layer("preprocess")(model.get_layer("gray_to_rgb")([x, x, x]))
    probs = model.get_layer("predictions")(net(rgb))
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(probs), model.predict_on_batch(x), rtol=1e-5, atol=1e-6
    )


def test_grad_cam_depends_on_where_the_fossil_is(classifier):
    left = np.zeros((SIZE, SIZE), np.uint8)
    left[8:24, 2:14] = 220
    right = left[:, ::-1].copy()
    hl = classifier.grad_cam(left)
    hr = classifier.grad_cam(right)
    assert hl.shape == (SIZE, SIZE)
    assert not np.allclose(hl, hr)


def test_grad_cam_rejects_wrong_size(classifier):
    with pytest.raises(classify.ClassifyError, match=r"expected an image of shape \(32, 32, 1\)"):
        grad_cam(classifier.models["m1"], np.zeros((10, 10), np.float32))


def test_overlay_blends_colour():
    out = overlay(np.full((8, 8), 100, np.uint8), np.linspace(0, 1, 64).reshape(8, 8))
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    assert not np.array_equal(out[0, 0], out[-1, -1])


def _stored(size=SIZE):
    stored, _ = classify.prepare(
        disc_image(), classify.PrepareOptions(), PreprocessConfig(size=size)
    )
    return stored


def _with_border_pixel(s):
    s = s.copy()
    s[0, s.shape[1] // 2] = 1
    return s


@pytest.mark.parametrize(
    ("make", "is_stored"),
    [
        (lambda s: s, True),
        (lambda s: np.dstack([s, s, s]), True),  # grey saved as RGB
        (lambda s: np.dstack([s, s, s, np.full_like(s, 255)]), True),
        (lambda s: np.dstack([s, s, s, np.where(s > 0, 255, 0).astype(np.uint8)]), False),
        (lambda s: np.dstack([s, s, s // 2]), False),  # colour
        (lambda s: s.astype(np.uint16) * 257, False),  # 16-bit: a scanner's export
        (lambda s: np.clip(s.astype(int) + 12, 0, 255).astype(np.uint8), False),  # background
        (_with_border_pixel, False),
        (lambda s: cv2.resize(s, (2 * SIZE, 2 * SIZE)), False),  # another size
        (lambda s: np.zeros_like(s), False),  # blank: prepare says so
    ],
)
def test_stored_slice_tells_an_exported_slice_from_a_raw_section(make, is_stored):
    stored = _stored()
    found = classify.stored_slice(make(stored), PreprocessConfig(size=SIZE))
    if is_stored:
        np.testing.assert_array_equal(found, stored)
        assert found.ndim == 2 and found.dtype == np.uint8
    else:
        assert found is None
