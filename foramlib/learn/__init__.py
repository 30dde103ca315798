"""Learning: models, their input pipeline and their training (paper §2.2–2.3).

* :mod:`foramlib.learn.models` is the backbone registry and classifier builder;
* :mod:`foramlib.learn.loader` reads slice arrays for Keras (train and serve);
* :mod:`foramlib.learn.augment` and :mod:`foramlib.learn.tta` are training-time and
  test-time augmentation;
* :mod:`foramlib.learn.training` runs the two-phase transfer learning,
  :mod:`foramlib.learn.pretraining` the offline pretraining that replaces ImageNet.
"""
