"""Where does a 2D section sit inside the 3D specimens?

* :mod:`foramlib.matching.index` is the matching index on disk and the volumes behind it;
* :mod:`foramlib.matching.search` screens a query against the index and ranks poses;
* :mod:`foramlib.matching.registration` refines a pose against the specimen volume;
* :mod:`foramlib.matching.reliability` says when the best match is too weak to trust
  (a limit calibrated on held-out queries).
"""
