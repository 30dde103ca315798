"""Evaluation: predictions to metrics, ensembles and the paper's tables.

* :mod:`foramlib.evaluation.metrics` computes metrics from per-slice predictions;
* :mod:`foramlib.evaluation.ensemble` builds Top-k votes and the PatchEnsemble, chosen on
  validation data only;
* :mod:`foramlib.evaluation.reports` builds classification reports and Tables 4–8;
* :mod:`foramlib.evaluation.baseline` is the classical HOG + logistic-regression model
  every table of a run is compared with;
* :mod:`foramlib.evaluation.paper` and :mod:`foramlib.evaluation.reference` hold the
  paper's printed numbers and the authors' released result files.
"""
