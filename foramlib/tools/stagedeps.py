"""Check that each DVC stage's declared deps and params match what its code uses.

A stage of ``dvc.yaml`` runs a notebook through ``python -m foramlib.tools.stages``. The
``foramlib`` modules it really executes are the notebook's imports and everything
they import, transitively, plus the runner. DVC only reruns a stage when a file in
its ``deps`` changes, so a module missing from the list is a reproducibility defect
(editing it leaves stale results that ``dvc status`` calls up to date), and a module
listed but not used makes the stage rerun for nothing. This module computes the
import closure from the source with :mod:`ast` and compares; it also checks that
every ``-p`` the command passes is a parameter of the notebook, that every notebook
parameter is passed (else the notebook's own default silently wins over
``params.yaml``), and that every ``${...}`` the command reads is listed under the
stage's ``params``. For the stages that have a ``foramlib.pipeline`` module, it checks
that each configuration field from ``params.yaml`` is passed with the same key and
listed under the stage's params.

Run it as ``foram deps`` (exit status 1 and one line per problem when something
disagrees); the test suite runs it on the project's own ``dvc.yaml``.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

PACKAGE = "foramlib"

# `python -m foramlib.tools.stages NOTEBOOK ...` runs the notebook runner: its import closure
# belongs to every notebook stage (checked by the tests); the CLI does not.
RUNNER = "tools.stages"

_CMD_NOTEBOOK = re.compile(r"-m\s+foramlib\.tools\.stages\s+(\S+\.(?:ipynb|py))\s")
_CMD_PARAM = re.compile(r"-p\s+([A-Za-z_][A-Za-z0-9_]*)\s")
_CMD_VAR = re.compile(r"\$\{([^}]+)\}")


@dataclass(frozen=True)
class Problem:
    """One disagreement between a stage's declaration and its code.

    Attributes
    ----------
    stage : str
        Stage name in ``dvc.yaml``.
    message : str
        What is wrong and what to change.
    """

    stage: str
    message: str
    add: str = ""  # a module file the stage's deps should list (fixable)
    drop: str = ""  # a module file its deps list needlessly (fixable)

    def __str__(self) -> str:
        return f"{self.stage}: {self.message}"


def _import_targets(node: ast.AST, module: str | None) -> set[str]:
    """Dotted names (inside the package) that one import statement may load."""
    if isinstance(node, ast.Import):
        return {
            ".".join(alias.name.split(".")[1:])
            for alias in node.names
            if alias.name.split(".")[0] == PACKAGE and "." in alias.name
        }
    if not isinstance(node, ast.ImportFrom):
        return set()
    if node.level:  # relative to the importing module's package
        here = (module or "").split(".")[: -node.level] if module else []
        base = ".".join(here + ([node.module] if node.module else []))
    elif node.module == PACKAGE:
        base = ""
    elif node.module and node.module.startswith(PACKAGE + "."):
        base = node.module[len(PACKAGE) + 1 :]
    else:
        return set()
    # `from foramlib.x import a`: a may be a module (foramlib.x.a) or a name in x
    found = {base} if base else set()
    found |= {f"{base}.{alias.name}" if base else alias.name for alias in node.names}
    return found


def _imported_modules(tree: ast.AST, module: str | None = None, nested: bool = True) -> set[str]:
    """Dotted names of ``foramlib`` modules (and candidates) imported in `tree`, with
    every parent package (importing ``foramlib.a.b`` runs ``a/__init__.py``); anywhere
    in the tree, or at module level only."""
    found: set[str] = set()
    for node in ast.walk(tree) if nested else tree.body:
        for target in _import_targets(node, module):
            parts = target.split(".")
            found.update(".".join(parts[: i + 1]) for i in range(len(parts)))
    found.discard(module)
    return found


def _module_names(package_dir: Path) -> dict[str, Path]:
    """Module name (``"config"``, ``"learn"``, ``"learn.loader"``) -> its file."""
    names = {}
    for path in sorted(package_dir.rglob("*.py")):
        rel = path.relative_to(package_dir).with_suffix("").parts
        if rel[-1] == "__init__":
            rel = rel[:-1]
        if rel and all(part.isidentifier() for part in rel):
            names[".".join(rel)] = path
    return names


def module_imports(package_dir: str | Path) -> dict[str, set[str]]:
    """Direct ``foramlib`` imports of every module of the package, subpackages included.

    Parameters
    ----------
    package_dir : str or Path
        The ``foramlib`` folder.

    Returns
    -------
    dict
        Module name (``"config"``, ``"pipeline.evaluate"``; a subpackage's
        ``__init__.py`` is the subpackage's name) -> names of the package's modules it
        imports, at module level or inside functions (a lazy import still runs when
        the stage calls that function).

    Examples
    --------
    >>> graph = module_imports(Path(__file__).parents[1])
    >>> {"io", "io.atomic"} <= graph["tools.stages"]
    True
    >>> {"pipeline", "pipeline._config"} <= graph["pipeline.evaluate"]
    True
    """
    package_dir = Path(package_dir)
    paths = _module_names(package_dir)
    graph = {}
    for name, path in paths.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        graph[name] = _imported_modules(tree, _package_of(name, path)) & set(paths)
        graph[name].discard(name)
        if "." in name:  # a submodule runs its package's __init__ first
            graph[name].add(name.rsplit(".", 1)[0])
    return graph


def _package_of(name: str, path: Path) -> str:
    # relative imports resolve against the package: for a/__init__.py that is `a`
    # itself, for a/b.py it is `a`; _import_targets strips one level per dot
    return f"{name}.__init__" if path.name == "__init__.py" else name


def closure(roots: set[str], graph: dict[str, set[str]]) -> set[str]:
    """Every module reachable from `roots` through `graph`, the roots included.

    Examples
    --------
    >>> sorted(closure({"a"}, {"a": {"b"}, "b": {"c"}, "c": set()}))
    ['a', 'b', 'c']
    """
    unknown = sorted(set(roots) - set(graph))
    if unknown:
        raise ValueError(f"modules {unknown} are not in {PACKAGE}")
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(graph[name] - seen)
    return seen


def runner_modules(root: str | Path, graph: dict[str, set[str]]) -> set[str]:
    """The modules every notebook stage runs through ``python -m foramlib.tools.stages``."""
    return closure({RUNNER}, graph)


def _code_cells(notebook: Path) -> list[dict]:
    from foramlib.tools.stages import read_notebook

    try:
        cells = read_notebook(notebook)["cells"]
    except FileNotFoundError as err:
        raise ValueError(f"{notebook}: not a readable notebook ({err})") from err
    return [c for c in cells if c.get("cell_type") == "code"]


def _parse_cell(source: str, notebook: Path) -> ast.AST:
    # IPython magics and shell escapes are not Python; they import nothing of ours.
    lines = [line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))]
    try:
        return ast.parse("\n".join(lines), filename=str(notebook))
    except SyntaxError as err:
        raise ValueError(
            f"{notebook}: a code cell does not parse ({err.msg}, line {err.lineno})"
        ) from None


def notebook_imports(notebook: str | Path) -> set[str]:
    """Names of the ``foramlib`` modules a notebook's code cells import."""
    notebook = Path(notebook)
    found: set[str] = set()
    for cell in _code_cells(notebook):
        found |= _imported_modules(_parse_cell("".join(cell["source"]), notebook))
    return found


def notebook_parameters(notebook: str | Path) -> set[str]:
    """Names assigned in the notebook's cell tagged ``parameters`` (papermill's cell)."""
    notebook = Path(notebook)
    for cell in _code_cells(notebook):
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            tree = _parse_cell("".join(cell["source"]), notebook)
            names = set()
            for node in ast.walk(tree):
                targets = (
                    node.targets if isinstance(node, ast.Assign)
                    else [node.target] if isinstance(node, ast.AnnAssign) else []
                )  # fmt: skip
                names |= {t.id for t in targets if isinstance(t, ast.Name)}
            return names
    raise ValueError(f"{notebook}: no cell is tagged 'parameters' (papermill needs one)")


def _stage_bodies(dvc_yaml: Path) -> dict[str, dict]:
    try:
        stages = yaml.safe_load(dvc_yaml.read_text(encoding="utf-8"))["stages"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as err:
        raise ValueError(f"{dvc_yaml}: cannot read its stages ({err})") from err
    return {name: body.get("do", body) for name, body in stages.items()}


def _param_names(entries: list) -> list[str]:
    names = []
    for entry in entries or []:
        if isinstance(entry, dict):  # `params.yaml: [a, b]` or `other.yaml: [...]`
            for keys in entry.values():
                names.extend(keys or [])
        else:
            names.append(entry)
    return [str(n) for n in names]


def check_stage(name: str, body: dict, root: Path, graph: dict[str, set[str]]) -> list[Problem]:
    """Problems of one stage of ``dvc.yaml`` (the ``do`` body of a ``foreach`` stage)."""
    cmd = " ".join(str(body.get("cmd", "")).split()) + " "
    match = _CMD_NOTEBOOK.search(cmd)
    if not match:  # not a notebook stage (e.g. the book): nothing to derive deps from
        return []
    notebook = root / match.group(1)
    problems = []
    deps = [str(d) for d in body.get("deps", [])]
    if match.group(1) not in deps:
        problems.append(Problem(name, f"deps do not list its notebook {match.group(1)}"))
    imported = notebook_imports(notebook)
    # `from foramlib.io.atomic import write_csv` yields the candidate `atomic.write_csv`: a
    # name inside a known module, not a module; an unknown first part is still an error
    roots = {m for m in imported if m in graph or m.split(".")[0] not in graph}
    used = closure(roots, graph) | runner_modules(root, graph)
    names = _module_names(root / PACKAGE)
    needed = {f"{PACKAGE}/{names[m].relative_to(root / PACKAGE).as_posix()}" for m in used}
    declared = {d for d in deps if d.startswith(PACKAGE + "/") and d.endswith(".py")}
    covered = {n for n in needed if any(n.startswith(d.rstrip("/") + "/") for d in deps)}
    for path in sorted(needed - declared - covered):
        problems.append(Problem(name, f"runs {path} but its deps do not list it", add=path))
    for path in sorted(declared - needed):
        problems.append(
            Problem(name, f"deps list {path}, which the stage does not import", drop=path)
        )

    passed = set(_CMD_PARAM.findall(cmd))
    accepted = notebook_parameters(notebook)
    for param in sorted(passed - accepted):
        problems.append(Problem(name, f"-p {param} is not a parameter of {match.group(1)}"))
    for param in sorted(accepted - passed):
        problems.append(Problem(name, f"{match.group(1)} parameter {param!r} is never passed "
                                      "with -p, so its notebook default wins"))  # fmt: skip
    listed = _param_names(body.get("params"))
    for var in sorted(set(_CMD_VAR.findall(cmd))):
        if var == "key" or var.startswith("item."):  # foreach variables, not params
            continue
        key = re.sub(r"\[\d+\]", "", var)
        if not any(key == p or key.startswith(p + ".") for p in listed):
            problems.append(Problem(name, f"cmd reads ${{{var}}} but params do not list {key}"))
    return problems


_CMD_PARAM_VALUE = re.compile(r"-p\s+([A-Za-z_][A-Za-z0-9_]*)\s+(\"[^\"]*\"|\S+)")
_INDEX_SUFFIX = re.compile(r"(\[\d+\])+$")


def check_stage_config(name: str, body: dict) -> list[Problem]:
    """Problems between a stage's ``foramlib.pipeline`` configuration and ``dvc.yaml``.

    Every configuration field that comes from ``params.yaml`` must be passed by a ``-p``
    of the same name reading the same key (``-p max_k ${ensemble.max_k}``), or be read
    from the parameter file the stage passes as ``-p params_file``; either way the key
    must be under the stage's ``params`` so that changing it reruns the stage.
    """
    from foramlib.pipeline import STAGES, stage_config

    if name not in STAGES:
        return []
    cls = stage_config(name)
    cmd = " ".join(str(body.get("cmd", "")).split()) + " "
    # -p NAME VALUE, VALUE a ${key}, or a quoted text built from ${key[0]}, ${key[1]}...
    passed = {
        field: {_INDEX_SUFFIX.sub("", v) for v in _CMD_VAR.findall(value)}
        for field, value in _CMD_PARAM_VALUE.findall(cmd)
    }
    # a foreach stage lists `train.backbones.${key}`; its configuration says `{key}`
    listed = [n.replace("${key}", "{key}") for n in _param_names(body.get("params"))]
    reads_file = "params_file" in set(_CMD_PARAM.findall(cmd))
    problems = []
    for field, key in cls.params_keys().items():
        where = f"{cls.__name__}.{field} (params key {key})"
        if field in passed and passed[field] != {key}:
            reads = ", ".join(f"${{{v}}}" for v in sorted(passed[field])) or "a literal value"
            problems.append(Problem(name, f"-p {field} reads {reads} but {where}"))
        elif field not in passed and not reads_file:
            problems.append(Problem(name, f"{where} is never passed: add -p {field} ${{{key}}}"))
        if not any(key == n or key.startswith(n + ".") for n in listed):
            problems.append(Problem(name, f"{where} is not under the stage's params"))
    return problems


def check_dvc_yaml(root: str | Path = ".") -> list[Problem]:
    """Compare every notebook stage of ``root/dvc.yaml`` with the code it runs.

    Parameters
    ----------
    root : str or Path
        Project root holding ``dvc.yaml``, the notebooks and ``foramlib/``.

    Returns
    -------
    list of Problem
        Empty when every stage's deps, ``-p`` flags and params agree with its code.
    """
    root = Path(root)
    graph = module_imports(root / PACKAGE)
    problems = []
    for name, body in _stage_bodies(root / "dvc.yaml").items():
        problems.extend(check_stage(name, body, root, graph))
        problems.extend(check_stage_config(name, body))
    return problems


def _edit_stage_deps(text: str, stage: str, add: set[str], drop: set[str]) -> str:
    """`text` (a ``dvc.yaml``) with `add` appended to and `drop` removed from the deps
    of top-level stage `stage`, every other line (comments, order) kept."""
    lines = text.split("\n")
    header = re.compile(rf"^  {re.escape(stage)}:\s*(#.*)?$")
    start = next((i for i, line in enumerate(lines) if header.match(line)), None)
    if start is None:
        raise ValueError(f"dvc.yaml: no top-level stage {stage!r} to fix")
    end = next(
        (i for i in range(start + 1, len(lines)) if re.match(r"^ {0,2}\S", lines[i])), len(lines)
    )
    deps_at = next((i for i in range(start + 1, end) if re.match(r"^\s+deps:\s*$", lines[i])), None)
    if deps_at is None:
        raise ValueError(f"dvc.yaml: stage {stage!r} has no block-style deps list to fix")
    items = []  # indices of the deps list's "- item" lines
    for i in range(deps_at + 1, end):
        if re.match(r"^\s+- ", lines[i]):
            items.append(i)
        elif lines[i].strip() and not lines[i].lstrip().startswith("#"):
            break
    if not items:
        raise ValueError(f"dvc.yaml: stage {stage!r} has an empty deps list")
    indent = lines[items[0]][: len(lines[items[0]]) - len(lines[items[0]].lstrip())]
    code = [i for i in items if lines[i].strip()[2:].startswith(PACKAGE + "/")]
    after = (code or items)[-1]
    new = [f"{indent}- {path}" for path in sorted(add)]
    out = []
    for i, line in enumerate(lines):
        if not (i in items and line.strip()[2:].strip() in drop):
            out.append(line)
        if i == after:
            out.extend(new)
    return "\n".join(out)


def fix_dvc_yaml(root: str | Path = ".") -> tuple[list[Problem], list[Problem]]:
    """Rewrite the deps of ``root/dvc.yaml`` to the code each stage runs.

    Adds every module file a stage runs but does not list and removes every one it
    lists but does not run (the import closure of :func:`check_dvc_yaml`); the rest of
    the file is kept as written. The file is replaced atomically.

    Returns
    -------
    fixed, remaining : list of Problem
        The problems fixed, and those left for a person (``-p`` flags and params).
    """
    from foramlib.io.atomic import write_text

    path = Path(root) / "dvc.yaml"
    problems = check_dvc_yaml(root)
    fixable = [p for p in problems if p.add or p.drop]
    if fixable:
        text = path.read_text(encoding="utf-8")
        for stage in dict.fromkeys(p.stage for p in fixable):
            mine = [p for p in fixable if p.stage == stage]
            text = _edit_stage_deps(
                text, stage, {p.add for p in mine if p.add}, {p.drop for p in mine if p.drop}
            )
        write_text(path, text)
    return fixable, [p for p in problems if not (p.add or p.drop)]
