"""Files in and out: micro-CT volumes and the manifest, and atomic writes.

* :mod:`foramlib.io.volumes` reads, checks, resamples and writes volumes (NIfTI, TIFF
  stacks, folders of slices, NRRD) and reads the collection manifest;
* :mod:`foramlib.io.atomic` writes files and folders atomically, so that an interrupted
  stage never leaves an output a rerun trusts;
* :mod:`foramlib.io.uploads` decodes uploaded bytes (dashboard, CLI inputs) into an
  image or a volume, within size limits;
* :mod:`foramlib.io.environment` reads those limits from ``FORAM_*`` variables.
"""
