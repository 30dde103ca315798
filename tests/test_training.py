"""Two-phase training on a tiny slice store: outputs, reload, checks, backends, devices."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import importlib.util  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from foramlib.dataset import slicing, split  # noqa: E402
from foramlib.dataset.preprocess import PreprocessConfig  # noqa: E402
from foramlib.io.volumes import read_manifest  # noqa: E402
from foramlib.learn import loader as data  # noqa: E402
from foramlib.learn import training
from foramlib.learn.augment import AugmentConfig, mix_batch  # noqa: E402

QUICK = dict(
    backbone="tiny_cnn",
    input_size=32,
    batch_size=8,
    phase1_epochs=1,
    phase2_epochs=1,
    phase1_lr=1e-3,
    phase2_lr=1e-3,
    max_steps_per_epoch=2,
    seed=3,
)


@pytest.fixture(scope="module")
def split_store(tiny_collection, tmp_path_factory):
    """Slice store + split index of the tiny virtual collection (4 genera x 3 specimens)."""
    root = tmp_path_factory.mktemp("train")
    manifest = read_manifest(tiny_collection / "manifest.csv")
    manifest = manifest[manifest["species"] != "Dictyoconus"].reset_index(drop=True)
    config = slicing.SlicingConfig(
        slices_per_taxon=30, offsets_per_orientation=3, preprocess=PreprocessConfig(size=32)
    )
    index = slicing.build_slice_store(manifest, root / "slices", config, seed=1, progress=None)
    result = split.search_split(split.specimen_table(index, manifest), seed=0)
    split_index = split.split_slices(index, result.assignment)
    split_index.to_csv(root / "index.csv", index=False)
    return root


def _datasets(root, names=None, mix=None, **kwargs):
    index = data.load_split_index(root / "index.csv")
    names = names or data.class_names(index)
    return data.make_datasets(
        index, root / "slices", names, batch_size=8, seed=0, mix=mix, **kwargs
    ), names


@pytest.fixture(scope="module")
def trained(split_store, tmp_path_factory):
    config = training.TrainConfig(**QUICK, augment=AugmentConfig(mix_probability=1.0), tta_views=8)
    datasets, names = _datasets(
        split_store, mix=lambda x, y, rng: mix_batch(x, y, config.augment, rng)
    )
    out = tmp_path_factory.mktemp("model") / "tiny_cnn"
    live = out.parent / "live"
    result = training.train_backbone(config, datasets, names, out, live_dir=live, progress=None)
    return result, out, datasets, names


@pytest.mark.slow
def test_training_writes_every_output(trained):
    result, out, datasets, names = trained
    for name in (
        "model.keras",
        "history.csv",
        "class_names.json",
        "config.json",
        "summary.json",
        "predictions_val.csv",
        "predictions_test.csv",
    ):
        assert (out / name).is_file(), name
    assert json.loads((out / "class_names.json").read_text()) == names
    cfg = training.TrainConfig.from_dict(json.loads((out / "config.json").read_text()))
    assert cfg.backbone == "tiny_cnn" and cfg.augment.mix_probability == 1.0
    assert cfg.tta_views == 8
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tta_views"] == 8
    assert summary["precision"] == "float32"  # CPU: float32 unless set
    assert summary["epochs_run"] == 2 and summary["train_images_per_s"] > 0


def test_history_covers_both_phases_with_decaying_rate(trained):
    result, out, _, _ = trained
    hist = pd.read_csv(out / "history.csv")
    assert hist["phase"].tolist() == [1, 2]
    assert {"loss", "val_loss", "accuracy", "val_accuracy", "learning_rate"} <= set(hist)
    assert hist["learning_rate"].iloc[0] < QUICK["phase1_lr"]  # cosine decay has begun


def test_every_epoch_is_logged_through_dvclive_and_reads_back_as_the_history(trained):
    result, out, _, _ = trained
    live = out.parent / "live"
    logged = training.read_live_history(live)
    history = result.history.reset_index(drop=True)
    assert set(logged) == set(history)
    pd.testing.assert_frame_equal(logged[list(history)], history, check_dtype=False)
    files = {p.relative_to(live / "plots" / "metrics").as_posix() for p in live.rglob("*.tsv")}
    assert {"train/loss.tsv", "val/loss.tsv", "train/accuracy.tsv", "phase.tsv"} <= files
    assert all(f.startswith(("train/", "val/")) or f[:-4] in training._RUN_KEYS for f in files)
    last = json.loads((live / "metrics.json").read_text())  # what `dvc metrics show` reads
    assert last["val"]["loss"] == pytest.approx(history["val_loss"].iloc[-1])
    assert not (live / "dvc.yaml").exists()  # dvc.yaml declares the files, DVCLive does not


def test_reading_a_missing_dvclive_log_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere: no DVCLive metrics"):
        training.read_live_history(tmp_path / "nowhere")


def test_predictions_are_probabilities_with_provenance(trained):
    result, out, datasets, names = trained
    for split_name in ("val", "test"):
        pred = pd.read_csv(out / f"predictions_{split_name}.csv")
        assert len(pred) == datasets[split_name].n_images
        assert pred["slice_id"].tolist() == datasets[split_name].slice_ids()
        probs = pred[[f"p_{n}" for n in names]].to_numpy()
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
        assert set(pred["split"]) == {split_name}
        assert (pred["true"] == [names[i] for i in datasets[split_name].labels()]).all()


def test_saved_model_reloads_and_reproduces_its_predictions(trained):
    import keras

    result, out, datasets, names = trained
    model = keras.models.load_model(out / "model.keras")
    x = np.concatenate([datasets["val"][i][0] for i in range(len(datasets["val"]))])
    # tta_views=8: the mean over the 4 rotations of the slice and of its mirror image
    views = [np.rot90(m, k, axes=(1, 2)) for m in (x, x[:, :, ::-1]) for k in range(4)]
    probs = np.mean([model.predict(v, verbose=0) for v in views], axis=0)
    saved = pd.read_csv(out / "predictions_val.csv")[[f"p_{n}" for n in names]].to_numpy()
    np.testing.assert_allclose(probs, saved, atol=1e-5)
    single = model.predict(x, verbose=0)
    assert np.abs(single - saved).max() > 1e-4  # the views did change the answer


def test_batchnorm_learns_when_training_from_scratch(trained):
    import keras

    from foramlib.learn.models import backbone_of, sublayers

    model = keras.models.load_model(trained[1] / "model.keras")
    bn = [
        layer
        for layer in sublayers(backbone_of(model))
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    # weights=None: no pretrained statistics to protect, so BatchNorm trains in phase 2,
    # with a momentum short enough for its statistics to settle in a short run
    assert bn and all(layer.trainable for layer in bn)
    assert all(layer.momentum <= 0.9 for layer in bn)


@pytest.mark.slow
def test_batchnorm_stays_frozen_when_fine_tuning_pretrained_weights(split_store, tmp_path):
    import keras

    from foramlib.learn.models import backbone_of, build_model, sublayers

    # "pretrained" weights: a local weights file, as a user without network would use
    donor = build_model("tiny_cnn", input_size=32, n_classes=4)
    weights = tmp_path / "tiny.weights.h5"
    backbone_of(donor).save_weights(weights)
    config = training.TrainConfig(**{**QUICK, "weights": str(weights)})
    datasets, names = _datasets(split_store)
    training.train_backbone(config, datasets, names, tmp_path / "m", progress=None)
    model = keras.models.load_model(tmp_path / "m" / "model.keras")
    layers = list(sublayers(backbone_of(model)))
    bn = [layer for layer in layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert bn and not any(layer.trainable for layer in bn)
    assert any(layer.trainable for layer in layers if isinstance(layer, keras.layers.Conv2D))


def test_extra_callbacks_can_end_each_phase_and_the_trained_model_comes_back(split_store, tmp_path):
    import keras

    class StopAtFirstBatch(keras.callbacks.Callback):
        batches = 0

        def on_train_batch_end(self, batch, logs=None):
            type(self).batches += 1
            self.model.stop_training = True

    config = training.TrainConfig(**{**QUICK, "phase1_epochs": 2, "phase2_epochs": 2})
    datasets, names = _datasets(split_store)
    result = training.train_backbone(
        config, datasets, names, tmp_path / "m", progress=None, callbacks=[StopAtFirstBatch()]
    )
    assert StopAtFirstBatch.batches == 2  # one batch in each phase, then the phase ended
    # the live model is the trained one (the saved copy predicts the same), still compiled
    x = datasets["val"][0][0]
    saved = keras.models.load_model(result.model_path)
    np.testing.assert_allclose(
        result.model.predict(x, verbose=0), saved.predict(x, verbose=0), atol=1e-5
    )
    assert result.model.optimizer is not None


@pytest.mark.parametrize(
    "n_epochs, cycle, t_mul, ends",
    [
        (15, 5, 2.0, [5, 15]),  # the quick profile's phase 2
        (20, 5, 2.0, [5, 15, 20]),  # the paper's: the third cycle cut short
        (4, 5, 2.0, [4]),  # shorter than one cycle
        (1, 1, 2.0, [1]),
        (7, 2, 1.0, [2, 4, 6, 7]),
        (10, 2, 1.5, [2, 5, 10]),  # a cycle ending inside epoch 5 ends with it
    ],
)
def test_cycle_ends_follow_the_warm_restart_schedule(n_epochs, cycle, t_mul, ends):
    assert training.cycle_ends(n_epochs, cycle, t_mul) == ends


def test_cycle_ends_match_keras_learning_rate_restarts():
    import keras

    steps, cycle = 4, 3
    schedule = keras.optimizers.schedules.CosineDecayRestarts(
        1.0, first_decay_steps=cycle * steps, t_mul=training.RESTART_T_MUL
    )
    rates = [float(schedule(step)) for step in range(30 * steps)]
    # a cycle ends where the next step's rate jumps back up
    jumps = [s // steps for s in range(1, len(rates)) if rates[s] > rates[s - 1]]
    assert training.cycle_ends(30, cycle)[:-1] == jumps


@pytest.mark.parametrize(
    "args, match",
    [
        ((0, 5), r"n_epochs = 0 and cycle_epochs = 5 must be >= 1"),
        ((5, 0), r"cycle_epochs = 0 must be >= 1"),
        ((5, 2, 0.5), r"t_mul = 0.5 must be >= 1"),
    ],
)
def test_cycle_ends_reject_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        training.cycle_ends(*args)


def _stopping_run(callback, val_losses):
    """Feed `callback` a run's validation losses; return the epoch it stopped after (or
    None) and the weight restored at the end (each epoch sets the weight to its number)."""
    import keras

    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, use_bias=False)])
    callback.set_model(model)
    model.stop_training = False
    callback.on_train_begin()
    stopped = None
    for epoch, loss in enumerate(val_losses):
        model.set_weights([np.full((1, 1), float(epoch), dtype="float32")])
        callback.on_epoch_end(epoch, {"val_loss": loss})
        if model.stop_training:
            stopped = epoch
            break
    callback.on_train_end()
    return stopped, int(model.get_weights()[0][0, 0])


# a warm-restart run: the loss climbs after each restart (epochs 5 and 10) and improves
# again only late in the 10-epoch second cycle
LOSSES = [2.5, 2.4, 2.1, 2.0, 1.97, 2.03, 2.33, 2.17, 1.99, 1.97, 2.0, 1.87, 1.9, 1.9, 1.88]


def test_early_stopping_after_any_epoch_is_keras_rule():
    stopped, restored = _stopping_run(training.early_stopping(6), LOSSES)
    assert (stopped, restored) == (10, 4)  # six epochs after the best, mid-cycle


def test_early_stopping_at_cycle_ends_runs_the_cycle_out_and_keeps_its_best():
    ends = [e - 1 for e in training.cycle_ends(15, 5)]  # epochs 4 and 14, from 0
    stopped, restored = _stopping_run(training.early_stopping(6, stop_after=ends), LOSSES)
    assert (stopped, restored) == (None, 11)


def test_early_stopping_at_cycle_ends_stops_at_the_first_end_past_its_patience():
    flat = [2.0, 1.9, 1.8] + [1.85] * 9
    stop = training.early_stopping(2, stop_after=[3, 7, 11])
    assert _stopping_run(stop, flat) == (7, 2)  # patience ran out at epoch 4; stop at 7
    stop = training.early_stopping(2, stop_after=[2, 7, 11])
    assert _stopping_run(stop, flat) == (7, 2)  # no stop at a cycle end within patience


def test_early_stopping_leaves_another_callback_s_stop_alone():
    import keras

    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    stop = training.early_stopping(1, stop_after=[5])
    stop.set_model(model)
    stop.on_train_begin()
    model.stop_training = True  # e.g. a time budget, earlier in the same epoch
    stop.on_epoch_end(0, {"val_loss": 1.0})
    stop.on_epoch_end(1, {"val_loss": 2.0})
    assert model.stop_training


def test_early_stopping_rejects_a_patience_below_one():
    with pytest.raises(ValueError, match="patience = 0 must be an integer >= 1"):
        training.early_stopping(0)


@pytest.mark.parametrize(
    "mode, phase1, phase2", [("epoch", None, None), ("cycle_end", [1], [2, 3])]
)
def test_each_phase_stops_where_its_mode_allows(mode, phase1, phase2, split_store, tmp_path,
                                                monkeypatch):  # fmt: skip
    seen = []

    def recording(patience, stop_after=None):
        seen.append(None if stop_after is None else sorted(stop_after))
        return real(patience, stop_after)

    real = training.early_stopping
    monkeypatch.setattr(training, "early_stopping", recording)
    config = training.TrainConfig(
        **{**QUICK, "phase1_epochs": 2, "phase2_epochs": 2, "restart_epochs": 1},
        early_stopping=mode,
    )
    datasets, names = _datasets(split_store)
    result = training.train_backbone(config, datasets, names, tmp_path / "m", progress=None)
    # phase 1 is one cosine decay; phase 2 restarts every epoch (from epoch 2, 0-based)
    assert seen == [phase1, phase2]
    assert json.loads((tmp_path / "m" / "config.json").read_text())["early_stopping"] == mode
    assert len(result.history) <= 4


def test_restarts_are_read_from_the_logged_learning_rate():
    history = pd.DataFrame(
        {"phase": [1, 1, 2, 2, 2, 2, 2], "learning_rate": [1e-3, 0, 9e-4, 1e-4, 1e-3, 5e-4, 1e-3]}
    )
    assert training.restarts_after(history) == [5, 7]  # never at the phase change
    assert training.restarts_after(history.drop(columns="learning_rate")) == []


def test_history_figure_marks_the_restarts_and_the_kept_epoch():
    import matplotlib

    matplotlib.use("Agg")
    history = pd.DataFrame(
        {
            "phase": [1, 2, 2, 2, 2],
            "learning_rate": [0, 5e-4, 1e-4, 1e-3, 5e-4],
            "loss": [2.0, 1.8, 1.6, 1.7, 1.5],
            "val_loss": [2.1, 2.0, 1.9, 2.2, 2.0],
            "accuracy": [0.1, 0.3, 0.4, 0.35, 0.5],
            "val_accuracy": [0.1, 0.2, 0.3, 0.25, 0.28],
        }
    )
    fig = training.history_figure(history, "t")
    for ax in fig.axes:
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert "learning-rate restart" in labels and "kept (lowest val loss)" in labels
        assert [line.get_xdata()[0] for line in ax.get_lines() if line.get_linestyle() == ":"] == [
            4.5
        ]
    loss_ax = fig.axes[0]
    (ring,) = [line for line in loss_ax.get_lines() if line.get_marker() == "o"]
    assert (ring.get_xdata()[0], ring.get_ydata()[0]) == (3, 1.9)


def test_config_from_params_reads_the_train_section_and_the_backbone_size():
    params = {
        "seed": 7,
        "train": {
            "backbones": {"tiny_cnn": {"input_size": 48}},
            "phase2_epochs": 3,
            "tta_views": 4,
            "augment": {"enabled": False},
        },
    }
    cfg = training.TrainConfig.from_params(params, "tiny_cnn", patience=2)
    assert (cfg.input_size, cfg.seed, cfg.phase2_epochs, cfg.tta_views) == (48, 7, 3, 4)
    assert cfg.patience == 2 and cfg.augment.enabled is False
    with pytest.raises(ValueError, match="no input_size for 'mobilenetv3_small'"):
        training.TrainConfig.from_params(params, "mobilenetv3_small")


def test_a_backbone_s_own_settings_replace_the_section_s_for_it_alone():
    params = {
        "seed": 7,
        "train": {
            "backbones": {
                "tiny_cnn": {"input_size": 64, "phase2_epochs": 4, "max_steps_per_epoch": 20},
                "mobilenetv3_small": {"input_size": 96},
            },
            "phase2_epochs": 15,
            "max_steps_per_epoch": None,
        },
    }
    tiny = training.TrainConfig.from_params(params, "tiny_cnn")
    mobile = training.TrainConfig.from_params(params, "mobilenetv3_small")
    assert (tiny.phase2_epochs, tiny.max_steps_per_epoch) == (4, 20)
    assert (mobile.phase2_epochs, mobile.max_steps_per_epoch) == (15, None)
    # explicit overrides (benchmarks, tests) still come last
    assert training.TrainConfig.from_params(params, "tiny_cnn", phase2_epochs=2).phase2_epochs == 2


@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(backbone="vgg99"), r"unknown backbone 'vgg99'; valid: \["),
        (dict(input_size=16), r"train.input_size = 16 is invalid: expected an integer >= 32"),
        (dict(precision="fp8"), r"train.precision = 'fp8' is invalid"),
        (dict(phase1_epochs=0, phase2_epochs=0), r"phase1_epochs \+ train.phase2_epochs"),
        (dict(max_steps_per_epoch=0), r"max_steps_per_epoch = 0 must be >= 1 or null"),
        (dict(tta_views=3), r"train.tta_views = 3 is invalid: expected one of \(1, 2, 4, 8\)"),
        (dict(tta_views=True), r"train.tta_views = True is invalid"),
        (dict(early_stopping="never"), r"train.early_stopping = 'never' is invalid"),
    ],
)
def test_bad_configs_fail_before_training(changes, match):
    with pytest.raises(ValueError, match=match):
        training.TrainConfig(**{**QUICK, **changes})


def test_mismatched_class_lists_fail_before_training(split_store, tmp_path):
    datasets, names = _datasets(split_store)
    with pytest.raises(data.DataError):
        training.train_backbone(
            training.TrainConfig(**QUICK),
            datasets,
            list(reversed(names)),
            tmp_path / "m",
            progress=None,
        )
    assert not (tmp_path / "m").exists()


@pytest.mark.slow
def test_same_seed_same_training(split_store, tmp_path):
    config = training.TrainConfig(**{**QUICK, "phase2_epochs": 0})
    runs = []
    for name in ("a", "b"):
        datasets, names = _datasets(split_store)
        runs.append(
            training.train_backbone(config, datasets, names, tmp_path / name, progress=None)
        )
    pd.testing.assert_frame_equal(runs[0].predictions["val"], runs[1].predictions["val"], atol=1e-5)


SCRIPT = textwrap.dedent("""
    import json, os, sys
    backend, store, out, devices = sys.argv[1:5]
    os.environ["KERAS_BACKEND"] = backend
    if backend == "tensorflow" and int(devices) > 1:
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * int(devices))
    from foramlib.learn import loader as data, training
    index = data.load_split_index(os.path.join(store, "index.csv"))
    names = data.class_names(index)
    sets = data.make_datasets(index, os.path.join(store, "slices"), names, batch_size=8)
    config = training.TrainConfig(backbone="tiny_cnn", input_size=32, batch_size=8,
        phase1_epochs=1, phase2_epochs=1, max_steps_per_epoch=2, seed=1,
        distribution="data_parallel" if int(devices) > 1 else "none")
    result = training.train_backbone(config, sets, names, out, progress=None)
    print("RESULT", json.dumps(result.summary))
""")


def _train_in_subprocess(backend, store, out, devices=1):
    env = dict(os.environ, KERAS_BACKEND=backend, CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, backend, str(store), str(out), str(devices)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


@pytest.mark.slow
def test_data_parallel_on_two_virtual_cpu_devices(split_store, tmp_path):
    summary = _train_in_subprocess("tensorflow", split_store, tmp_path / "dp", devices=2)
    assert summary["replicas"] == 2
    assert (tmp_path / "dp" / "model.keras").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_training_runs_on_other_installed_backends(backend, split_store, tmp_path):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed here (TensorFlow is the project's backend)")
    summary = _train_in_subprocess(backend, split_store, tmp_path / backend)
    assert summary["backend"] == backend
    if backend == "jax":  # the augmentation layers must not switch jit off (op by op)
        assert summary["jit_compile"] is True


def _augmented():
    import keras

    from foramlib.learn.augment import augmentation_layers

    return keras.Sequential(
        [keras.Input((16, 16, 1)), augmentation_layers(AugmentConfig(), seed=0)]
    )


def test_enable_jit_marks_the_affine_augmentation_compilable_on_jax():
    from foramlib.learn.models import sublayers

    model = _augmented()
    blocked = [x for x in sublayers(model) if not x.supports_jit]
    assert {type(x).__name__ for x in blocked} == set(training.JIT_SAFE_ON_JAX)
    assert training.enable_jit(model, backend="jax") is True
    assert all(x.supports_jit for x in sublayers(model))


@pytest.mark.parametrize("backend", ["tensorflow", "torch"])
def test_enable_jit_leaves_other_backends_alone(backend):
    from foramlib.learn.models import sublayers

    model = _augmented()
    assert training.enable_jit(model, backend=backend) == "auto"
    assert not all(x.supports_jit for x in sublayers(model))


def test_enable_jit_keeps_jit_off_for_an_unknown_uncompilable_layer():
    import keras

    class HostOnly(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.supports_jit = False

        def call(self, x):
            return x

    model = keras.Sequential([keras.Input((16, 16, 1)), keras.layers.RandomZoom(0.1), HostOnly()])
    assert training.enable_jit(model, backend="jax") == "auto"
    assert not model.layers[0].supports_jit  # nothing changed


def test_compile_on_tensorflow_keeps_keras_default():
    model = _augmented()
    config = training.TrainConfig(backbone="tiny_cnn", input_size=32, batch_size=4)
    training._compile(model, config, 1e-3)
    assert model.jit_compile is False  # Keras' auto: the augmentation has no XLA kernel
