"""Answering a user's input with the trained ensemble (the dashboard's and CLI's engine).

* :mod:`foramlib.inference.classify` decodes an upload, preprocesses it like training,
  classifies it with the final ensemble and explains it (uncertainty, Grad-CAM);
* :mod:`foramlib.inference.scan` classifies a whole scan from many sections;
* :mod:`foramlib.inference.section_check` says whether an input looks like a
  foraminifer section at all.
"""
