"""Stage notebooks run atomically: a failed run never replaces the report."""

from __future__ import annotations

import subprocess
import sys

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from foramlib.tools import cli
from foramlib.tools.stages import main, parse_parameter, run_notebook


def _script(path, body):
    """A stage notebook as the project keeps them: a Jupytext percent script."""
    path.write_text(
        f'# %% [markdown]\n# # A stage\n\n# %% tags=["parameters"]\nvalue = 1\n\n# %%\n{body}\n'
    )
    return path


def _notebook(path, body):
    nb = new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    params = new_code_cell("value = 1")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, new_code_cell(body)]
    nbformat.write(nb, path)
    return path


@pytest.mark.parametrize(
    "text, expected",
    [
        ("3", 3),
        ("2.5", 2.5),
        ("data/virtual", "data/virtual"),
        ("false", False),
        ("null", None),
        ("a: [", "a: ["),
        ("5e-05", 5e-05),  # how DVC writes params.yaml's 0.00005
        ("None", None),  # how DVC writes a YAML null
        ("1e3x", "1e3x"),
    ],
)
def test_parameters_are_typed_like_yaml(text, expected):
    assert parse_parameter(text) == expected


def test_run_notebook_injects_parameters_and_writes_the_report(tmp_path):
    nb = _notebook(tmp_path / "stage.ipynb", "print('value is', value * 2)")
    out = tmp_path / "reports" / "stage.ipynb"
    assert main([str(nb), str(out), "-p", "value", "21"]) == 0
    assert "value is 42" in out.read_text()
    # `foram run` is the same runner
    assert cli.main(["run", str(nb), str(out), "-p", "value", "4"]) == 0
    assert "value is 8" in out.read_text()


def test_a_percent_script_runs_as_a_notebook_with_its_cells(tmp_path):
    script = _script(tmp_path / "stage.py", "print('value is', value * 3)")
    out = tmp_path / "reports" / "stage.ipynb"
    assert main([str(script), str(out), "-p", "value", "5"]) == 0
    nb = nbformat.read(out, as_version=4)
    assert [c.cell_type for c in nb.cells] == ["markdown", "code", "code", "code"]
    assert "injected-parameters" in nb.cells[2].metadata["tags"]  # papermill's cell
    assert nb.cells[3].outputs[0]["text"] == "value is 15\n"
    assert nb.metadata["papermill"]["input_path"] == str(script)  # the path, not the object
    assert nb.metadata["kernelspec"]["name"] == "python3" and "jupytext" not in nb.metadata


def test_an_unreadable_notebook_is_one_error_line(tmp_path, capsys):
    (tmp_path / "broken.ipynb").write_text("{not json")
    assert main([str(tmp_path / "broken.ipynb"), str(tmp_path / "out.ipynb")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "broken.ipynb: not a readable notebook" in err
    assert not (tmp_path / "out.ipynb").exists()


def test_stages_run_as_a_module_the_way_dvc_yaml_calls_them(tmp_path):
    nb = _script(tmp_path / "stage.py", "print('value is', value + 1)")
    out = tmp_path / "stage.out.ipynb"
    cmd = [sys.executable, "-m", "foramlib.tools.stages", str(nb), str(out), "-p", "value", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "value is 3" in out.read_text()
    usage = subprocess.run(cmd[:3], capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2 and "NOTEBOOK" in usage.stderr.upper()


def test_failed_run_keeps_the_old_report_and_saves_the_failure(tmp_path):
    out = tmp_path / "reports" / "stage.ipynb"
    out.parent.mkdir()
    out.write_text("previous report")
    nb = _notebook(tmp_path / "stage.ipynb", "raise RuntimeError('stage broke')")
    with pytest.raises(Exception, match="stage broke"):
        run_notebook(nb, out, {"value": 2}, log_output=False)
    assert out.read_text() == "previous report"
    failed = tmp_path / "reports" / "stage.failed.ipynb"
    assert "stage broke" in failed.read_text()
    assert sorted(p.name for p in out.parent.iterdir()) == ["stage.failed.ipynb", "stage.ipynb"]


def test_missing_notebook_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"stage notebook .*nope.ipynb does not exist"):
        run_notebook(tmp_path / "nope.ipynb", tmp_path / "out.ipynb")


def test_a_failing_stage_ends_with_its_error_and_keeps_the_traceback_in_the_report(
    tmp_path, capsys
):
    body = "raise ValueError('manifest m.csv has 1 problem(s):\\n  - line 2: file not found')"
    nb = _notebook(tmp_path / "stage.ipynb", body)
    out = tmp_path / "stage.out.ipynb"
    assert main([str(nb), str(out)]) == 1
    err = capsys.readouterr().err
    assert "failed: ValueError: manifest m.csv has 1 problem(s):\n  - line 2: file not found" in err
    assert "Traceback" not in err and "stage.out.failed.ipynb" in err
    report = (tmp_path / "stage.out.failed.ipynb").read_text()
    assert '"ename": "ValueError"' in report and '"traceback"' in report
    assert not out.exists()
    assert main([str(tmp_path / "nope.ipynb"), str(out)]) == 1
    assert "nope.ipynb does not exist" in capsys.readouterr().err


def test_a_stage_whose_kernel_dies_ends_with_one_line_that_says_why(tmp_path, capsys):
    """A kernel killed for memory (here: it kills itself) is not a traceback either."""
    nb = _notebook(
        tmp_path / "stage.ipynb", "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)"
    )
    out = tmp_path / "stage.out.ipynb"
    assert main([str(nb), str(out)]) == 1
    err = capsys.readouterr().err
    assert "stage.ipynb failed: its kernel died" in err and "lack of memory" in err
    assert "Traceback" not in err and not out.exists()
