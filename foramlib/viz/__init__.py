"""Figures: the pipeline's plots (:mod:`foramlib.viz.plots`) and the 3D view of a plane
inside its specimen (:mod:`foramlib.viz.view3d`)."""
