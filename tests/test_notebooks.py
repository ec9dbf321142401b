"""The notebooks run top to bottom on a fresh install, and each draws its pictures."""

from __future__ import annotations

import ast
import importlib.metadata
import pathlib
import re
import sys
import tomllib

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
NAMES = ["quickstart.ipynb", "cluster.ipynb"]


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs(tmp_path, name):
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(notebook, kernel_name="python3", timeout=300,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    # The quick start draws the mask over the slide, a region, the OME-Zarr levels and its
    # timings; the cluster notebook its timings and a region of the SEG it wrote.
    pictures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pictures) >= 2


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _top_level_imports(notebook) -> set[str]:
    modules = set()
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        source = "\n".join(line for line in cell.source.splitlines() if not line.startswith("%"))
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                modules.add(node.module.split(".")[0])
    return modules


@pytest.mark.parametrize("name", NAMES)
def test_the_notebook_extra_installs_what_the_notebook_imports(name):
    """`make notebooks` installs daskseg[notebook]: each module a notebook imports comes from
    a core dependency or that extra (a fresh install once lacked matplotlib)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {
        _normalize(re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0])
        for requirement in project["dependencies"] + project["optional-dependencies"]["notebook"]
    }
    distributions = importlib.metadata.packages_distributions()
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    missing = {}
    for module in _top_level_imports(notebook) - set(sys.stdlib_module_names) - {"daskseg"}:
        provided_by = {_normalize(d) for d in distributions.get(module, [module])}
        if not provided_by & declared:
            missing[module] = sorted(provided_by)
    assert not missing, f"{name} imports modules that daskseg[notebook] does not install: {missing}"
