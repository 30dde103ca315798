"""The DVC stages' declared deps and params against the code they run."""

import json
from pathlib import Path

import pytest
import yaml

from foramlib.tools import cli
from foramlib.tools.stagedeps import (
    check_dvc_yaml,
    check_stage_config,
    closure,
    fix_dvc_yaml,
    module_imports,
    notebook_imports,
    notebook_parameters,
)

REPO = Path(__file__).resolve().parents[1]
RUNNER_DEPS = ["foramlib/tools/__init__.py", "foramlib/tools/stages.py"]


def write_notebook(path, code, parameters="x = 1\n"):
    """A stage notebook: a percent script for ``.py`` (as the project keeps them), else
    an ``.ipynb``."""
    if path.suffix == ".py":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            f'# %% [markdown]\n# # a stage\n\n# %% tags=["parameters"]\n{parameters}\n'
            f"# %%\n{code}\n"
        )
        return path
    cells = [
        {"cell_type": "markdown", "id": "a", "metadata": {}, "source": "# a stage"},
        {"cell_type": "code", "id": "b", "metadata": {"tags": ["parameters"]},
         "source": parameters, "outputs": [], "execution_count": None},
        {"cell_type": "code", "id": "c", "metadata": {}, "source": code, "outputs": [],
         "execution_count": None},
    ]  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4,
                                "nbformat_minor": 5}))  # fmt: skip
    return path


def make_project(root, modules, code, deps, cmd_params="-p x 1", params=None, parameters="x = 1\n"):
    """A project with foramlib/<modules>, one notebook stage and its dvc.yaml."""
    package = root / "foramlib"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    modules = {"tools.stages": "", **modules}
    for name, source in modules.items():
        path = package.joinpath(*name.split(".")).with_suffix(".py")
        if path.parent != package:  # a subpackage, as the runner's tools/
            path.parent.mkdir(exist_ok=True)
            (path.parent / "__init__.py").touch()
        path.write_text(source)
    write_notebook(root / "notebooks" / "go.py", code, parameters)
    stage = {
        "cmd": f"python -m foramlib.tools.stages notebooks/go.py reports/go.ipynb {cmd_params}",
        "deps": ["notebooks/go.py", *RUNNER_DEPS, *deps],
    }
    if params is not None:
        stage["params"] = params
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"go": stage}}))
    return root


def messages(root):
    return [str(p) for p in check_dvc_yaml(root)]


def test_the_projects_own_stages_list_the_code_and_params_they_use():
    assert messages(REPO) == []


@pytest.mark.parametrize(
    "import_b",
    [
        "from foramlib import b",
        "from foramlib.b import thing",
        "import foramlib.b",
        "from .b import thing",
        "from . import b",
        "def later():\n    from foramlib.b import thing  # lazy: still runs when called\n",
    ],
)
def test_a_module_imported_only_indirectly_must_be_listed(tmp_path, import_b):
    root = make_project(
        tmp_path, {"a": import_b + "\n", "b": ""}, "from foramlib import a", ["foramlib/a.py"]
    )
    assert messages(root) == ["go: runs foramlib/b.py but its deps do not list it"]


def test_listing_the_whole_closure_is_clean(tmp_path):
    root = make_project(
        tmp_path,
        {"a": "from foramlib import b\n", "b": "from foramlib.c import z\n", "c": ""},
        "from foramlib.a import thing\nimport numpy",
        ["foramlib/a.py", "foramlib/b.py", "foramlib/c.py"],
    )
    assert messages(root) == []


def test_a_listed_module_the_stage_never_imports_is_reported(tmp_path):
    root = make_project(
        tmp_path, {"a": "", "b": ""}, "from foramlib import a", ["foramlib/a.py", "foramlib/b.py"]
    )
    assert messages(root) == ["go: deps list foramlib/b.py, which the stage does not import"]


def test_a_package_folder_dep_covers_its_modules(tmp_path):
    root = make_project(tmp_path, {"a": "from foramlib import b\n", "b": ""},
                        "from foramlib import a", ["foramlib"])  # fmt: skip
    assert messages(root) == []


def test_the_runners_imports_are_every_stages_code_and_the_cli_is_not(tmp_path):
    root = make_project(
        tmp_path,
        {
            "tools.cli": "from foramlib import big\n",  # the command-line tool: not run by stages
            "atomic": "",
            "big": "",
            "tools.stages": "from foramlib.atomic import atomic_path\n",
        },
        "x = 2",
        ["foramlib/atomic.py"],
    )
    assert messages(root) == []
    dvc = yaml.safe_load((root / "dvc.yaml").read_text())
    dvc["stages"]["go"]["deps"].remove("foramlib/atomic.py")
    dvc["stages"]["go"]["deps"].append("foramlib/tools/cli.py")
    (root / "dvc.yaml").write_text(yaml.safe_dump(dvc))
    assert messages(root) == [
        "go: runs foramlib/atomic.py but its deps do not list it",
        "go: deps list foramlib/tools/cli.py, which the stage does not import",
    ]


def test_magics_and_shell_escapes_do_not_break_the_import_scan(tmp_path):
    path = write_notebook(
        tmp_path / "n.py", "%matplotlib inline\n!ls\nfrom foramlib import plots, slicing\n"
    )
    assert notebook_imports(path) == {"plots", "slicing"}


def test_parameters_passed_and_accepted_must_agree(tmp_path):
    root = make_project(
        tmp_path,
        {},
        "print(x)",
        [],
        cmd_params="-p x ${a.x} -p typo 3",
        params=["a"],
        parameters="x: int = 1  # from params\nforgotten = 'default'\n",
    )
    assert messages(root) == [
        "go: -p typo is not a parameter of notebooks/go.py",
        "go: notebooks/go.py parameter 'forgotten' is never passed with -p, "
        "so its notebook default wins",
    ]


@pytest.mark.parametrize(
    "listed, problem",
    [
        (["a"], None),
        (["a.x"], None),
        (["a.y"], "go: cmd reads ${a.x} but params do not list a.x"),
        ([], "go: cmd reads ${a.x} but params do not list a.x"),
        ([{"params.yaml": ["a.x"]}], None),
    ],
)
def test_every_value_the_cmd_reads_is_a_listed_param(tmp_path, listed, problem):
    root = make_project(tmp_path, {}, "print(x)", [], cmd_params="-p x ${a.x}", params=listed)
    assert messages(root) == ([problem] if problem else [])


def test_foreach_stages_are_checked_through_their_do_body(tmp_path):
    root = make_project(tmp_path, {"a": ""}, "from foramlib import a", [])
    stage = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]["go"]
    stage["cmd"] += " -p y ${item.size} -p z ${key}"
    body = {"foreach": {"one": {"size": 1}}, "do": stage}
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"go": body}}))
    write_notebook(root / "notebooks" / "go.py", "from foramlib import a", "x = y = z = 0\n")
    assert messages(root) == ["go: runs foramlib/a.py but its deps do not list it"]


def test_closure_rejects_an_unknown_module():
    with pytest.raises(ValueError, match=r"\['nope'\] are not in foramlib"):
        closure({"nope"}, {"a": set()})


def test_the_package_graph_follows_lazy_imports():
    graph = module_imports(REPO / "foramlib")
    assert "evaluation.metrics" in graph["inference.scan"]  # imported inside a function
    assert closure({"tools.stages"}, graph) == {"tools", "tools.stages", "io", "io.atomic"}


def test_a_notebook_without_a_parameters_cell_is_named(tmp_path):
    path = write_notebook(tmp_path / "n.ipynb", "x = 1")
    cells = json.loads(path.read_text())
    cells["cells"][1]["metadata"] = {}
    path.write_text(json.dumps(cells))
    with pytest.raises(ValueError, match=r"n\.ipynb: no cell is tagged 'parameters'"):
        notebook_parameters(path)


def test_an_unreadable_notebook_is_named(tmp_path):
    (tmp_path / "broken.ipynb").write_text("{not json")
    with pytest.raises(ValueError, match=r"broken\.ipynb: not a readable notebook"):
        notebook_imports(tmp_path / "broken.ipynb")


def test_cli_deps_exits_1_and_prints_each_problem(tmp_path, capsys):
    root = make_project(tmp_path, {"a": "from foramlib import b\n", "b": ""},
                        "from foramlib import a", ["foramlib/a.py"])  # fmt: skip
    assert cli.main(["deps", "--root", str(root)]) == 1
    out = capsys.readouterr()
    assert "go: runs foramlib/b.py but its deps do not list it" in out.out
    assert "1 problem(s)" in out.err
    assert cli.main(["deps", "--root", str(REPO)]) == 0


def test_cli_deps_fix_rewrites_only_the_stages_code_deps(tmp_path, capsys):
    root = make_project(
        tmp_path,
        {"a": "from foramlib import b\n", "b": "", "c": ""},
        "from foramlib import a",
        ["foramlib/a.py", "foramlib/c.py", "data/raw"],
    )
    text = (root / "dvc.yaml").read_text().replace("stages:", "# kept comment\nstages:")
    (root / "dvc.yaml").write_text(text)
    assert cli.main(["deps", "--root", str(root), "--fix"]) == 0
    out = capsys.readouterr().out
    assert "fixed: go: runs foramlib/b.py but its deps do not list it" in out
    assert "fixed: go: deps list foramlib/c.py, which the stage does not import" in out
    assert messages(root) == []
    after = (root / "dvc.yaml").read_text()
    assert after.startswith("# kept comment\n")
    deps = yaml.safe_load(after)["stages"]["go"]["deps"]
    assert deps == ["notebooks/go.py", *RUNNER_DEPS, "foramlib/a.py", "foramlib/b.py", "data/raw"]


def test_deps_fix_reaches_a_foreach_stages_do_body(tmp_path):
    root = make_project(tmp_path, {"a": "from foramlib import b\n", "b": ""},
                        "from foramlib import a", ["foramlib/a.py"])  # fmt: skip
    stage = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]["go"]
    body = {"foreach": {"x": 1}, "do": stage}
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"go": body}}))
    fixed, remaining = fix_dvc_yaml(root)
    assert [p.add for p in fixed] == ["foramlib/b.py"] and remaining == []
    assert (
        "foramlib/b.py"
        in yaml.safe_load((root / "dvc.yaml").read_text())["stages"]["go"]["do"]["deps"]
    )


def test_deps_fix_leaves_params_problems_to_a_person(tmp_path):
    root = make_project(tmp_path, {"a": ""}, "from foramlib import a", ["foramlib/a.py"],
                        cmd_params="-p x 1 -p nope 2")  # fmt: skip
    before = (root / "dvc.yaml").read_text()
    fixed, remaining = fix_dvc_yaml(root)
    assert fixed == [] and [str(p) for p in remaining] == [
        "go: -p nope is not a parameter of notebooks/go.py"
    ]
    assert (root / "dvc.yaml").read_text() == before  # nothing to fix: not rewritten


# --- subpackages ---------------------------------------------------------------------


def _subpackage_project(tmp_path, deps):
    root = make_project(tmp_path, {"b": ""}, "from foramlib.sub import mod as stage", deps)
    sub = root / "foramlib" / "sub"
    sub.mkdir()
    (sub / "__init__.py").write_text("from foramlib.sub._base import X\n")
    (sub / "_base.py").write_text("X = 1\n")
    (sub / "mod.py").write_text("from . import _base\n\ndef run():\n    from foramlib import b\n")
    (sub / "other.py").write_text("import foramlib.b\n")
    return root


def test_a_subpackage_module_runs_its_package_init_and_relative_imports(tmp_path):
    root = _subpackage_project(tmp_path, ["foramlib/sub/mod.py"])
    assert messages(root) == [
        "go: runs foramlib/b.py but its deps do not list it",
        "go: runs foramlib/sub/__init__.py but its deps do not list it",
        "go: runs foramlib/sub/_base.py but its deps do not list it",
    ]
    graph = module_imports(root / "foramlib")
    assert graph["sub.mod"] == {"sub", "sub._base", "b"}
    assert graph["sub"] == {"sub._base"}


def test_a_subpackage_folder_dep_covers_its_modules(tmp_path):
    root = _subpackage_project(tmp_path, ["foramlib/sub", "foramlib/b.py"])
    assert messages(root) == []


# --- pipeline stage configurations against dvc.yaml -----------------------------------


def _stage_body(cmd_params, params):
    return {"cmd": f"python -m foramlib.tools.stages notebooks/ensemble.py out {cmd_params}",
            "params": params}  # fmt: skip


@pytest.mark.parametrize(
    ("cmd_params", "params", "problem"),
    [
        ("-p params_file params.yaml -p max_k ${ensemble.max_k} -p mode ${ensemble.mode} "
         "-p main ${ensemble.main} -p n_weak ${ensemble.n_weak}",
         ["train.backbones", "ensemble"], None),
        ("-p params_file params.yaml -p max_k ${ensemble.n_weak}",
         ["train.backbones", "ensemble"],
         "ensemble: -p max_k reads ${ensemble.n_weak} but EnsembleStageConfig.max_k "
         "(params key ensemble.max_k)"),
        ("-p max_k ${ensemble.max_k}", ["ensemble"],
         "ensemble: EnsembleStageConfig.backbones (params key train.backbones) is never "
         "passed: add -p backbones ${train.backbones}"),
        ("-p params_file params.yaml", ["ensemble"],
         "ensemble: EnsembleStageConfig.backbones (params key train.backbones) is not under "
         "the stage's params"),
    ],
)  # fmt: skip
def test_stage_config_fields_match_the_p_flags_and_params(cmd_params, params, problem):
    found = [str(p) for p in check_stage_config("ensemble", _stage_body(cmd_params, params))]
    if problem is None:
        assert found == []
    else:
        assert problem in found


def test_stages_without_a_pipeline_module_have_no_config_check():
    assert check_stage_config("book", _stage_body("-p x 1", [])) == []
