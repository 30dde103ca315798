"""Test-time augmentation: classify a slice from several equally valid views of it.

A section of a fossil has no preferred in-plane orientation: the slicer draws each
plane's in-plane rotation at random, and a mirrored section is the section of the
mirrored shell, which training already shows (flips). So the 8 symmetries of the square
(rotations by 0/90/180/270 degrees and their mirror images) are 8 views of the same
section, and a model's mean probability over them is a steadier answer than any one
view. Unlike resizing or cropping these views move pixels without interpolating, so no
view is blurrier than the stored slice.

The number of views is part of a trained model's configuration
(``train.tta_views``, saved in ``models/<backbone>/config.json``): the train stage
predicts the validation and test slices with it, the ensembles and the uncertainty
threshold are chosen on those predictions, and the classifier serves with the same
views, so calibration and serving see the same kind of probability.

Examples
--------
>>> import numpy as np
>>> x = np.arange(4).reshape(1, 2, 2)
>>> [v[0].tolist() for v in views(x, 2)]
[[[0, 1], [2, 3]], [[1, 0], [3, 2]]]
"""

from __future__ import annotations

import numpy as np

__all__ = ["VIEW_COUNTS", "check_views", "views", "predict_views", "predict_batches"]

#: allowed numbers of views: the identity; + its mirror; the 4 rotations; all 8
VIEW_COUNTS = (1, 2, 4, 8)


def check_views(n_views, what: str = "tta_views") -> int:
    """`n_views` as an int if it is one of :data:`VIEW_COUNTS`, else a ``ValueError``.

    Examples
    --------
    >>> check_views(8)
    8
    >>> check_views(3)
    Traceback (most recent call last):
    ...
    ValueError: tta_views = 3 is invalid: expected one of (1, 2, 4, 8)
    """
    if isinstance(n_views, bool) or not isinstance(n_views, int | np.integer):
        raise ValueError(f"{what} = {n_views!r} is invalid: expected one of {VIEW_COUNTS}")
    if int(n_views) not in VIEW_COUNTS:
        raise ValueError(f"{what} = {n_views!r} is invalid: expected one of {VIEW_COUNTS}")
    return int(n_views)


def views(images: np.ndarray, n_views: int) -> list[np.ndarray]:
    """The first `n_views` symmetries of the square of a batch of images.

    Parameters
    ----------
    images : ndarray, shape (N, H, W) or (N, H, W, C), H == W
    n_views : {1, 2, 4, 8}
        1: the images; 2: and their mirror images; 4: the four rotations; 8: the
        rotations and their mirror images. The identity is always first.

    Returns
    -------
    list of ndarray
        `n_views` contiguous arrays shaped like `images`.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.arange(4).reshape(1, 2, 2)
    >>> [v[0].tolist() for v in views(x, 4)]
    [[[0, 1], [2, 3]], [[1, 3], [0, 2]], [[3, 2], [1, 0]], [[2, 0], [3, 1]]]
    """
    n_views = check_views(n_views)
    images = np.asarray(images)
    if images.ndim not in (3, 4) or images.shape[1] != images.shape[2]:
        raise ValueError(
            f"expected a batch of square images (N, S, S[, C]), got shape {images.shape}"
        )
    if n_views == 1:
        return [images]
    if n_views == 2:
        return [images, np.ascontiguousarray(images[:, :, ::-1])]
    out = []
    for k in range(4):
        turned = np.ascontiguousarray(np.rot90(images, k, axes=(1, 2)))
        out.append(turned)
        if n_views == 8:
            out.append(np.ascontiguousarray(turned[:, :, ::-1]))
    return out


def predict_views(model, images: np.ndarray, n_views: int, *, on_batch: bool = True) -> np.ndarray:
    """A Keras model's mean probability over `n_views` views of one batch.

    All views go through the model as one batch, so keep ``len(images) * n_views``
    within what a batch may hold.

    Parameters
    ----------
    model : keras.Model
        Outputs class probabilities.
    images : ndarray, shape (N, S, S, C)
        Model inputs.
    n_views : {1, 2, 4, 8}
    on_batch : bool
        True: ``model.predict_on_batch`` (lowest latency, for serving); False:
        ``model.predict``, which also splits the batch over the replicas of a
        distribution strategy (training runs).

    Returns
    -------
    ndarray of float64, shape (N, n_classes)
    """
    batch = views(images, n_views)
    n = len(batch[0])
    stacked = np.concatenate(batch)
    if on_batch:
        probs = model.predict_on_batch(stacked)
    else:
        probs = model.predict(stacked, batch_size=len(stacked), verbose=0)
    probs = np.asarray(probs, dtype=np.float64)
    return probs.reshape(len(batch), n, -1).mean(axis=0)


def predict_batches(model, batches, n_views: int) -> np.ndarray:
    """:func:`predict_views` over a sequence of ``(images, labels)`` batches, in order.

    Uses ``model.predict``, so it also runs under a distribution strategy.

    Parameters
    ----------
    model : keras.Model
    batches : sequence of (ndarray, ndarray)
        E.g. an unshuffled :class:`foramlib.learn.loader.SliceBatches`.
    n_views : {1, 2, 4, 8}

    Returns
    -------
    ndarray of float64, shape (n_images, n_classes)
    """
    check_views(n_views)
    out = [
        predict_views(model, batches[i][0], n_views, on_batch=False) for i in range(len(batches))
    ]
    if not out:
        raise ValueError("no batches to predict")
    return np.concatenate(out)
