"""foramlib: the tested helper library behind the ForamDeepSlice companion pipeline.

Every pipeline stage is a thin papermill notebook that calls into this package.
"""

__version__ = "0.1.0"
