"""The package's layers import downward only: bottom < data < students < training < serving < stages < cli.

The bottom layer is what every layer may read: ``params``, ``paths``, ``errors`` and ``data.tasks`` (the task
vocabulary ``params`` validates task definitions with; it imports nothing above the bottom). The import graph is read
from the source (``tests.import_closure``: every runtime import, nested ones included, ``if TYPE_CHECKING:`` blocks
excluded), so an upward import, and with it any cycle between layers, fails here with the edge that makes it.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.import_closure import imported_modules, module_file

LAYERS = ("bottom", "data", "students", "training", "serving", "stages", "cli")
BOTTOM = {"pipeline.params", "pipeline.paths", "pipeline.errors", "pipeline.data.tasks"}
SUBPACKAGES = {"data": "data", "students": "students", "training": "training", "serving": "serving"}
TOP = {"pipeline.cli": "cli", "pipeline.__main__": "cli"}


def layer(module: str) -> int:
    """The layer of a ``pipeline.*`` module (``bench``, the benchmark commands, sits with the stages)."""
    if module in BOTTOM:
        return LAYERS.index("bottom")
    if module in TOP:
        return LAYERS.index(TOP[module])
    part = module.split(".")[1]
    if part in SUBPACKAGES:
        return LAYERS.index(SUBPACKAGES[part])
    if part in {"stages", "bench"}:
        return LAYERS.index("stages")
    raise AssertionError(f"{module}: no layer assigned; add it to tests/test_layers.py")


def modules(root: Path) -> dict[str, Path]:
    """Every module of the package (``pipeline.x.y``) with its file; packages' ``__init__`` files excluded."""
    return {
        ".".join(path.relative_to(root).with_suffix("").parts): path
        for path in sorted((root / "pipeline").rglob("*.py"))
        if path.name != "__init__.py"
    }


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports at run time (packages themselves left out)."""
    graph = {}
    for module, path in modules(root).items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = imported_modules(tree, root, module)
        graph[module] = {
            name
            for name in imported
            if name != module and (file := module_file(root, name)) is not None and file.name != "__init__.py"
        }
    return graph


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{module} ({LAYERS[layer(module)]}) imports {target} ({LAYERS[layer(target)]})"
        for module, targets in graph.items()
        for target in targets
        if layer(target) > layer(module)
    )


def test_layers_import_downward_only():
    assert upward_imports(import_graph(REPO_ROOT)) == []


@pytest.mark.parametrize(
    ("source", "importer", "line"),
    [
        ("pipeline/students/architectures.py", "pipeline.students.architectures", "from pipeline.training import fit"),
        ("pipeline/data/tasks.py", "pipeline.data.tasks", "from pipeline.data.glue import read_glue_tsv"),
        ("pipeline/training/fit.py", "pipeline.training.fit", "    from pipeline.serving.teacher import tokenize"),
    ],
)
def test_an_upward_import_is_found(tmp_path: Path, source: str, importer: str, line: str):
    """The check sees an upward import at module level and inside a function."""
    copy = tmp_path / "pipeline"
    shutil.copytree(REPO_ROOT / "pipeline", copy, ignore=lambda *_: ["__pycache__"])
    path = tmp_path / source
    if line.startswith(" "):
        path.write_text(path.read_text(encoding="utf-8") + f"\n\ndef _added() -> None:\n{line}\n", encoding="utf-8")
    else:
        path.write_text(f"{line}\n" + path.read_text(encoding="utf-8"), encoding="utf-8")
    found = upward_imports(import_graph(tmp_path))
    assert len(found) == 1 and found[0].startswith(f"{importer} (")
