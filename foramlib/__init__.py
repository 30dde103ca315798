"""foramlib: the tested helper library behind the ForamDeepSlice companion pipeline.

Every pipeline stage is a thin papermill notebook that calls into this package. Its
layers, lowest first; a module imports from its own subpackage and from lower layers
only (``tests/test_layout.py`` checks it)::

    params, io, workers         dotted keys of params.yaml; volumes, uploads, atomic writes;
                                where per-volume jobs run (here, local processes, Dask)
    virtual, dataset            the virtual collection; curation, slicing, preprocessing, split
    learn                       models, loader, augmentation, training, offline pretraining
    evaluation                  metrics, ensembles, the paper's tables, the classical baseline
    inference, matching, viz    classifying an input; where a section sits in 3D; figures
    config                      params.yaml's schema and the kept profiles
    pipeline, app               one module per stage (typed config + run); the dashboard
    tools                       build tooling: foram CLI, stage runner, deps check, book
"""

__version__ = "0.1.0"
