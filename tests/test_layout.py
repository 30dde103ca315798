"""The package's architecture, as a test: subpackages import only from the layers below."""

from pathlib import Path

import pytest

from foramlib.tools.stagedeps import module_imports

PACKAGE = Path(__file__).resolve().parents[1] / "foramlib"

#: lowest first; a module may import from its own subpackage and from lower layers only
LAYERS = [
    {"params", "io", "workers"},  # reading settings and files; where per-volume jobs run
    {"virtual", "dataset"},  # the data: virtual collection, curation, slicing, split
    {"learn"},  # models, loader, augmentation, training
    {"evaluation"},  # metrics, ensembles, tables, baseline
    {"inference", "matching", "viz"},  # answering a user; where a section sits; figures
    {"config"},  # params.yaml's schema and profiles (knows every section's settings)
    {"pipeline", "app"},  # the stages' orchestration; the dashboard
    {"tools"},  # build tooling: cli, stage runner, deps check, book
]
RANK = {part: i for i, layer in enumerate(LAYERS) for part in layer}


def _part(module: str) -> str:
    return module.split(".")[0]


def test_every_subpackage_and_top_level_module_has_a_layer():
    graph = module_imports(PACKAGE)
    assert {_part(m) for m in graph} == set(RANK)


def test_imports_only_go_down_the_layers():
    graph = module_imports(PACKAGE)
    upward = sorted(
        f"{m} imports {d}"
        for m, deps in graph.items()
        for d in deps
        if _part(d) != _part(m) and RANK[_part(d)] >= RANK[_part(m)]
    )
    assert upward == []


@pytest.mark.parametrize("science", ["io", "virtual", "dataset", "learn", "evaluation",
                                     "inference", "matching", "viz"])  # fmt: skip
def test_the_science_never_imports_tooling_the_app_or_the_stages(science):
    graph = module_imports(PACKAGE)
    used = {_part(d) for m, deps in graph.items() if _part(m) == science for d in deps}
    assert used.isdisjoint({"tools", "app", "pipeline", "config"})
