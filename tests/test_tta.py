"""Test-time augmentation: the views of a slice and the mean prediction over them."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from foramlib.learn import tta  # noqa: E402


def _batch(n=3, size=5, channels=True):
    x = np.random.default_rng(0).random((n, size, size)).astype(np.float32)
    return x[..., None] if channels else x


@pytest.mark.parametrize("n_views", [1, 2, 4, 8])
def test_views_are_distinct_symmetries_with_the_identity_first(n_views):
    x = _batch()
    out = tta.views(x, n_views)
    assert len(out) == n_views
    np.testing.assert_array_equal(out[0], x)
    flat = {v.tobytes() for v in out}
    assert len(flat) == n_views  # no view repeats another
    for v in out:
        assert v.shape == x.shape and v.flags["C_CONTIGUOUS"]
        # a symmetry only moves pixels: same values, same sorted order per image
        np.testing.assert_array_equal(
            np.sort(v.reshape(len(x), -1)), np.sort(x.reshape(len(x), -1))
        )


def test_eight_views_are_the_whole_dihedral_group():
    x = _batch(n=1, channels=False)
    expected = {np.rot90(m, k, axes=(1, 2)).tobytes() for m in (x, x[:, :, ::-1]) for k in range(4)}
    assert {v.tobytes() for v in tta.views(x, 8)} == expected


@pytest.mark.parametrize("bad", [0, 3, 16, 2.0, True, "8", None])
def test_bad_view_counts_are_refused(bad):
    with pytest.raises(ValueError, match=r"tta_views = .* is invalid: expected one of"):
        tta.check_views(bad)


@pytest.mark.parametrize("shape", [(4, 5), (2, 4, 5), (2, 4, 5, 1), (1, 2, 2, 1, 1)])
def test_views_need_a_batch_of_square_images(shape):
    with pytest.raises(ValueError, match="square images"):
        tta.views(np.zeros(shape), 8)


class _Recorder:
    """A stand-in model: 'probability' of class 0 = the top-left pixel of each input."""

    def __init__(self):
        self.calls = []

    def predict_on_batch(self, x):
        self.calls.append(len(x))
        p = x[:, 0, 0, 0]
        return np.stack([p, 1 - p], axis=1)

    def predict(self, x, batch_size=None, verbose=0):
        assert batch_size == len(x)
        return self.predict_on_batch(x)


def test_predict_views_averages_every_view_in_one_call():
    x = np.zeros((2, 3, 3, 1), np.float32)
    x[0, 0, 0, 0] = 1.0  # only the identity view keeps this pixel top-left
    x[1] = 1.0  # every view sees 1
    model = _Recorder()
    probs = tta.predict_views(model, x, 8)
    assert model.calls == [16]
    # image 0: the corner pixel is top-left in 2 of the 8 views (identity, and the mirror
    # of the rotation by 90 degrees, i.e. the transpose)
    np.testing.assert_allclose(probs, [[2 / 8, 6 / 8], [1.0, 0.0]])


def test_predict_batches_keeps_the_order_of_the_batches():
    batches = [(np.full((2, 3, 3, 1), v, np.float32), None) for v in (0.25, 0.75)]
    probs = tta.predict_batches(_Recorder(), batches, 4)
    np.testing.assert_allclose(probs[:, 0], [0.25, 0.25, 0.75, 0.75])
    with pytest.raises(ValueError, match="no batches"):
        tta.predict_batches(_Recorder(), [], 2)


def test_a_keras_model_gets_the_mean_of_its_own_predictions():
    import keras

    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(2, 3)(inputs)
    h = keras.layers.Flatten()(h)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(h))
    x = _batch(n=4, size=8)
    expected = np.mean([model.predict(v, verbose=0) for v in tta.views(x, 8)], axis=0)
    np.testing.assert_allclose(tta.predict_views(model, x, 8), expected, atol=1e-6)
    np.testing.assert_allclose(
        tta.predict_views(model, x, 1), model.predict(x, verbose=0), atol=1e-6
    )
