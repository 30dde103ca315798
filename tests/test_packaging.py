"""The project's own files: dependency lists agree, CI runs the README's command."""

from __future__ import annotations

import re
import tomllib

import pytest
import yaml
from packaging.requirements import Requirement


def _reqs(lines):
    return {Requirement(line).name.lower(): str(Requirement(line).specifier) for line in lines}


def test_environment_yml_installs_what_pyproject_declares(repo_root):
    project = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]
    declared = _reqs(project["dependencies"] + project["optional-dependencies"]["dev"])
    env = yaml.safe_load((repo_root / "environment.yml").read_text())
    pip_lists = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip_lists) == 1
    assert _reqs(pip_lists[0]) == declared
    python = [d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python=")]
    assert python == ["python=3.11"]
    assert project["requires-python"].startswith(">=3.11")


def test_dockerfile_uses_a_gpu_tensorflow_base_installs_and_runs_the_pipeline(repo_root):
    lines = [
        ln.strip()
        for ln in (repo_root / "Dockerfile").read_text().splitlines()
        if ln.strip() and not ln.strip().startswith("#")
    ]
    instructions = [ln.split()[0] for ln in lines if re.match(r"^[A-Z]+\b", ln)]
    assert instructions[0] == "FROM"
    base = lines[0].split()[1]
    assert base.startswith("tensorflow/tensorflow:") and base.endswith("-gpu")
    assert any("pip install" in ln and "-e" in ln for ln in lines)
    cmd = [ln for ln in lines if ln.startswith("CMD")]
    assert len(cmd) == 1 and "dvc" in cmd[0] and "repro" in cmd[0]


def test_ci_runs_exactly_the_readme_test_command(repo_root):
    readme = (repo_root / "README.md").read_text()
    ci = (repo_root / ".ci" / "run").read_text()
    commands = [
        ln.strip()
        for ln in ci.splitlines()
        if ln.strip() and not ln.startswith("#") and not ln.startswith(("set ", "cd "))
    ]
    # the test command itself, after nothing but the README's system prerequisites
    assert commands[-1] == "make test"
    for line in commands[:-1]:
        assert re.fullmatch(
            r"command -v (\w+) >/dev/null \|\| \{ apt-get update && "
            r"DEBIAN_FRONTEND=noninteractive apt-get install -y \1; \}",
            line,
        ), line
        package = line.split()[2]
        assert f"`{package}`" in readme.split("## Two commands")[1].split("##")[0], package
    assert "make test" in readme and "make demo" in readme


@pytest.mark.parametrize("target", ["demo", "test", "env", "profile"])
def test_makefile_has_the_documented_targets(repo_root, target):
    assert re.search(rf"^{target}:", (repo_root / "Makefile").read_text(), re.M)


def test_dvc_analytics_are_off(repo_root):
    assert re.search(r"analytics\s*=\s*false", (repo_root / ".dvc" / "config").read_text())


def test_stage_notebooks_are_percent_scripts_with_one_parameters_cell(repo_root):
    from foramlib.pipeline import STAGES
    from foramlib.tools.stages import read_notebook

    scripts = sorted((repo_root / "notebooks").glob("*.py"))
    assert [p.stem for p in scripts] == sorted(STAGES)
    assert not list((repo_root / "notebooks").glob("*.ipynb"))
    for path in scripts:
        nb = read_notebook(path)
        assert nb.cells[0].cell_type == "markdown", f"{path.name}: starts with its title"
        code = [c for c in nb.cells if c.cell_type == "code"]
        tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, f"{path.name}: needs exactly one 'parameters' cell"


def test_the_dashboard_notebook_is_committed_without_outputs(repo_root):
    import nbformat

    nb = nbformat.read(repo_root / "dashboard" / "app.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)
