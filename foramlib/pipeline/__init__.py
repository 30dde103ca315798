"""One module per pipeline stage: a typed configuration and ``run(config)``.

Each ``foramlib.pipeline.<stage>`` module holds all of a stage's orchestration; its
notebook (``notebooks/<stage>.py``, a percent script that DVC runs through papermill,
so the book keeps the executed report) only turns its parameters into the
configuration, calls ``run`` and displays the result. Tests and tools call the same
``run``.

Every notebook stage of ``dvc.yaml`` has its module here; the ``book`` stage is build
tooling (``foramlib.tools.book``), not science.

Examples
--------
>>> len(STAGES), list(STAGES)[:4]  # in pipeline order
(11, ['synthesize', 'curate', 'slice', 'split'])
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping

from foramlib.pipeline._config import StageConfig, lookup, params_field

__all__ = ["STAGES", "StageConfig", "check_params", "lookup", "params_field", "stage_config"]

#: stage name (as in ``dvc.yaml``) -> (module, configuration class) of the stages moved
#: here. Imported on demand: a stage that imports its own module must not run (and so
#: depend on) every other stage's code.
STAGES = {
    "synthesize": ("foramlib.pipeline.synthesize", "SynthesizeStageConfig"),
    "curate": ("foramlib.pipeline.curate", "CurateStageConfig"),
    "slice": ("foramlib.pipeline.slice", "SliceStageConfig"),
    "split": ("foramlib.pipeline.split", "SplitStageConfig"),
    "corpus": ("foramlib.pipeline.corpus", "CorpusStageConfig"),
    "pretrain": ("foramlib.pipeline.pretrain", "PretrainStageConfig"),
    "train": ("foramlib.pipeline.train", "TrainStageConfig"),
    "ensemble": ("foramlib.pipeline.ensemble", "EnsembleStageConfig"),
    "evaluate": ("foramlib.pipeline.evaluate", "EvaluateStageConfig"),
    "index": ("foramlib.pipeline.index", "IndexStageConfig"),
    "calibrate_match": ("foramlib.pipeline.calibrate_match", "CalibrateMatchStageConfig"),
}


def stage_config(name: str) -> type[StageConfig]:
    """The configuration class of stage `name`.

    Examples
    --------
    >>> stage_config("ensemble").params_keys()["max_k"]
    'ensemble.max_k'
    >>> stage_config("nope")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: no pipeline module for stage 'nope'; known: ['calibrate_match', 'corpus', ...]
    """
    if name not in STAGES:
        raise ValueError(f"no pipeline module for stage {name!r}; known: {sorted(STAGES)}")
    module, cls = STAGES[name]
    return getattr(importlib.import_module(module), cls)


def check_params(params: Mapping) -> list[str]:
    """Every stage configuration built from `params`: one line per problem, [] if none.

    ``foramlib.config.validate_params`` checks each value on its own; this checks that
    the stages can be configured from them (a key a stage needs, a combination a stage
    refuses), before anything runs.

    Examples
    --------
    >>> check_params({"seed": 0})[0]
    "synthesize: params.yaml has no key 'data.source'"
    """
    problems = []
    for name in STAGES:
        try:
            stage_config(name).each_from_params(params)
        except (KeyError, TypeError, ValueError) as err:
            message = err.args[0] if err.args else repr(err)
            problems.append(f"{name}: {message}")
    return problems
