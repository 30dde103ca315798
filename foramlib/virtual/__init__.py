"""Procedural 3D shells: the seeded virtual micro-CT collection and the pretraining corpus.

* :mod:`foramlib.virtual.collection` renders the virtual collection (twelve genera,
  their documented confusions and scan artefacts) that stands in for the paper's data;
* :mod:`foramlib.virtual.shells` draws generic shells of other body plans, the offline
  pretraining corpus (disjoint from the collection).
"""
