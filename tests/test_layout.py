"""The package layout: each folder is one layer and imports point down only.

    library   comhe/*.py, comhe/regularizers/   torch only
    data      comhe/data/                        the library
    models    comhe/models/                      the library
    train     comhe/train/                       library, data, models
    suite     comhe/suite/                       library, data, models, train
    bench     comhe/bench/                       library, data, models, train

Every import is read from the syntax trees, the lazy ones inside functions included. ``comhe/run.py`` is the
entry point of ``python -m comhe.run`` and the one module allowed to import the suite from the top folder.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "comhe"
ENTRY_POINTS = {"comhe.run"}
# layer -> the layers it may import (besides itself)
MAY_IMPORT = {"library": set(), "data": {"library"}, "models": {"library"},
              "train": {"library", "data", "models"}, "suite": {"library", "data", "models", "train"},
              "bench": {"library", "data", "models", "train"}}
SUITE_ONLY = ("torchvision", "yaml", "pandas", "matplotlib", "seaborn", "tqdm", "submitit", "PIL", "h5py")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in MAY_IMPORT and parts[1] != "library":
        return parts[1]
    return "library"


def imports(path: Path, top_level_only: bool = False) -> Iterator[str]:
    """The ``comhe`` modules ``path`` imports, relative imports resolved (``from . import x``: the submodule x where
    it exists)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.split(".")[0] == "comhe")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            if base.split(".")[0] != "comhe":
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield sub if _exists(sub) else base


def _exists(module: str) -> bool:
    rel = Path(*module.split("."))
    return (PACKAGE.parent / rel.with_suffix(".py")).is_file() or (PACKAGE.parent / rel / "__init__.py").is_file()


def violations(edges: Dict[str, Set[str]]) -> List[Tuple[str, str]]:
    """(importer, imported) pairs that point up or sideways across layers."""
    bad = []
    for source, targets in edges.items():
        if source in ENTRY_POINTS:
            continue
        for target in targets:
            a, b = layer_of(source), layer_of(target)
            if a != b and b not in MAY_IMPORT[a]:
                bad.append((source, target))
    return sorted(bad)


def cycle(edges: Dict[str, Set[str]]) -> List[str]:
    """One import cycle among the module-level imports, or []."""
    state: Dict[str, int] = {}
    stack: List[str] = []

    def visit(node: str) -> List[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(edges):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return []


def all_edges(top_level_only: bool = False) -> Dict[str, Set[str]]:
    return {module_name(p): set(imports(p, top_level_only)) - {module_name(p)} for p in PACKAGE.rglob("*.py")}


def test_imports_point_down_only():
    assert violations(all_edges()) == []


def test_no_module_level_import_cycle():
    assert cycle(all_edges(top_level_only=True)) == []


def test_no_import_cycle_through_lazy_imports_either():
    """A cycle through imports inside functions works at run time but ties the two modules together all the same
    (issue 20: ``suite/experiments.py`` <-> ``suite/overrides.py``)."""
    assert cycle(all_edges()) == []


def test_the_checks_catch_a_planted_upward_import_and_cycle():
    edges = all_edges()
    assert violations({**edges, "comhe.energy": {"comhe.train.config"}}) == [("comhe.energy", "comhe.train.config")]
    assert violations({"comhe.data.cifar": {"comhe.models.factory"}}) == [("comhe.data.cifar", "comhe.models.factory")]
    assert violations({"comhe.bench.gpu": {"comhe.suite.runner"}}) == [("comhe.bench.gpu", "comhe.suite.runner")]
    assert cycle({"comhe.regularizers": {"comhe.regularizers.orthogonality"},
                  "comhe.regularizers.orthogonality": {"comhe.regularizers"}})


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_every_module_belongs_to_a_layer(path):
    assert layer_of(module_name(path)) in MAY_IMPORT


def test_importing_the_library_imports_torch_and_nothing_else():
    """Beyond what ``import torch`` itself loads (torch 2.14 loads tqdm, for one), ``import comhe`` and
    ``comhe.regularizers`` load only library modules of comhe and the standard library: no suite dependency, no
    data / models / train / suite code."""
    code = ("import sys, torch\n"
            "before = set(sys.modules)\n"
            "import comhe, comhe.regularizers\n"
            "print(sorted(set(sys.modules) - before))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent).stdout
    added = ast.literal_eval(out)
    assert "comhe.regularizers.mhe" in added
    others = [m for m in added if m.split(".")[0] != "comhe" and m.split(".")[0] not in sys.stdlib_module_names]
    assert others == []
    assert [m for m in added if m.split(".")[0] == "comhe" and layer_of(m) != "library"] == []
    for heavy in SUITE_ONLY:
        assert heavy not in added
