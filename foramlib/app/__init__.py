"""The Voila dashboard, in three parts that can be read and tested apart.

* :mod:`foramlib.app.workspace` finds the pipeline's outputs and reads them;
* :mod:`foramlib.app.render` turns results into the HTML and images a page shows;
* :mod:`foramlib.app.dashboard` holds :class:`~foramlib.app.dashboard.App`, the widgets
  and their handlers (``dashboard/app.ipynb`` only builds and displays it).
"""
