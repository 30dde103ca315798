"""The errors of inference, shared by the classifier, its calibration and whole scans."""

__all__ = ["RUN_FIRST", "ArtefactError", "ClassifyError"]

#: the fix for a missing artefact, quoted by every such message
RUN_FIRST = "run `dvc repro` (or `make demo`) in the workspace first"


class ClassifyError(ValueError):
    """A request the classifier cannot serve (bad options, wrong image, ...)."""


class ArtefactError(ClassifyError):
    """Models, results or data that the pipeline has not produced (yet)."""
