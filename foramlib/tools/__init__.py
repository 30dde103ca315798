"""Build tooling, apart from the science.

* :mod:`foramlib.tools.cli` is the ``foram`` command;
* :mod:`foramlib.tools.stages` runs one stage's notebook through papermill, atomically;
* :mod:`foramlib.tools.stagedeps` checks ``dvc.yaml`` against the code each stage runs;
* :mod:`foramlib.tools.book` builds the Jupyter Book, offline and strictly.
"""
