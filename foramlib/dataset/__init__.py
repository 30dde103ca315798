"""From curated volumes to the slice data set of paper §2.1.

* :mod:`foramlib.dataset.curation` checks every listed volume and keeps the taxa with
  enough specimens;
* :mod:`foramlib.dataset.slicing` cuts 2D sections along any plane;
* :mod:`foramlib.dataset.preprocess` is the one slice preprocessing, shared by slicing,
  training and the classifier;
* :mod:`foramlib.dataset.split` sends whole specimens to train, validation and test.
"""
