"""The option names of the registered regularisers, models and datasets, read from their source without importing it.

Config validation knows the options of ``reg.*``, ``model_options.*`` and ``data.*`` from the constructors'
signatures (``regularizers.option_defaults`` and its peers), and those modules import torch: seconds, tens of seconds
on a busy machine. So that a misspelt option (``reg.projdim=30``) or registry name (``regularizer=rp_comhe2``) is
refused at once, this module reads the same signatures from the syntax trees of ``comhe/regularizers/``,
``comhe/models/`` and ``comhe/data/``:

* regularisers: the ``{name: Class}`` table of ``regularizers/__init__.py``; a class's keyword-only ``__init__``
  parameters (its own, else the nearest base class's), less ``LIBRARY_ONLY``;
* models: the keyword-only parameters of each ``@MODELS.register("name")`` function;
* datasets: the parameters with defaults after ``(root, device, download)`` of each ``@DATASETS.register("name")``
  function, less ``workers`` (datasets registered under computed names, the Planetoid graphs, are not read here).

Only names: the values are checked by the full validation, after torch is imported. An entry this reader cannot
resolve is left out (``None``), never guessed; ``tests/suite/test_fast_answers.py`` checks that every entry it does
give equals what the imported registries say.
"""
from __future__ import annotations

import ast
import difflib
import functools
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

PACKAGE = Path(__file__).resolve().parents[1]


def _trees(folder: str) -> Iterator[ast.Module]:
    for path in sorted((PACKAGE / folder).glob("*.py")):
        yield ast.parse(path.read_text(encoding="utf-8"), str(path))


def _registered(tree: ast.Module, registry: str) -> Iterator[tuple]:
    """``(name, function)`` for each top-level ``@<registry>.register("name")`` function of ``tree``."""
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef):
            continue
        for deco in node.decorator_list:
            if (isinstance(deco, ast.Call) and isinstance(deco.func, ast.Attribute) and deco.func.attr == "register"
                    and isinstance(deco.func.value, ast.Name) and deco.func.value.id == registry and deco.args
                    and isinstance(deco.args[0], ast.Constant) and isinstance(deco.args[0].value, str)):
                yield deco.args[0].value, node


def _keyword_only(fn: ast.FunctionDef) -> List[str]:
    return [a.arg for a in fn.args.kwonlyargs]


def _models() -> Dict[str, Tuple[str, ...]]:
    return {name: tuple(_keyword_only(fn)) for tree in _trees("models") for name, fn in _registered(tree, "MODELS")}


def _datasets() -> Dict[str, Tuple[str, ...]]:
    out = {}
    for tree in _trees("data"):
        for name, fn in _registered(tree, "DATASETS"):
            positional = fn.args.posonlyargs + fn.args.args
            with_default = [a.arg for a in positional[len(positional) - len(fn.args.defaults):]]
            with_default += [a.arg for a, d in zip(fn.args.kwonlyargs, fn.args.kw_defaults) if d is not None]
            after = {a.arg for a in positional[3:]} | {a.arg for a in fn.args.kwonlyargs}
            out[name] = tuple(a for a in with_default if a in after and a != "workers")
    return out


def _regularizers() -> Dict[str, Tuple[str, ...]]:
    init = ast.parse((PACKAGE / "regularizers" / "__init__.py").read_text(encoding="utf-8"))
    table: Dict[str, str] = {}
    library_only: Tuple[str, ...] = ()
    for node in ast.walk(init):
        if isinstance(node, ast.Dict):
            pairs = [(k.value, v.id) for k, v in zip(node.keys, node.values)
                     if isinstance(k, ast.Constant) and isinstance(k.value, str) and isinstance(v, ast.Name)]
            if pairs and len(pairs) == len(node.keys):  # a {"name": Class, ...} table
                table.update(pairs)
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "LIBRARY_ONLY"
                                                for t in node.targets):
            library_only = tuple(ast.literal_eval(node.value))
    classes: Dict[str, ast.ClassDef] = {node.name: node for tree in _trees("regularizers") for node in tree.body
                                        if isinstance(node, ast.ClassDef)}

    def options(name: str) -> Optional[List[str]]:
        cls = classes.get(name)
        while cls is not None:
            init_fn = next((n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
            if init_fn is not None:
                return _keyword_only(init_fn)
            bases = [b.id for b in cls.bases if isinstance(b, ast.Name)]
            cls = classes.get(bases[0]) if bases else None
        return None

    out = {}
    for name, cls_name in table.items():
        found = options(cls_name)
        if found is not None:
            out[name] = tuple(k for k in found if k not in library_only)
    return out


@functools.lru_cache(maxsize=None)
def table(section: str) -> Dict[str, Tuple[str, ...]]:
    """Registry name -> option names (in signature order), for ``section`` ``reg``, ``model_options`` or ``data``."""
    return {"reg": _regularizers, "model_options": _models, "data": _datasets}[section]()


def options(section: str, name: str) -> Optional[Tuple[str, ...]]:
    """The option names of registry entry ``name`` for ``section``; None where this reader does not know it."""
    return table(section).get(name)


OWNERS = {"reg": ("regularizer", "regulariser"), "model_options": ("model", "model"), "data": ("dataset", "dataset")}


def _closest(key: str, valid) -> str:  # config.closest's wording (config imports this module)
    close = difflib.get_close_matches(key, list(valid), n=3, cutoff=0.5)
    return f" (closest: {', '.join(close)})" if close else f"; valid: {', '.join(valid) or '(none)'}"


def problem(cfg: Mapping[str, Any]) -> Optional[str]:
    """The first misspelt regulariser or model name, or option of ``reg`` / ``model_options`` / ``data``, in a
    config (DEFAULTS merged), in the words of the full validation; None when none is found (module docstring)."""
    for section, (owner, kind) in OWNERS.items():
        name = cfg.get(owner)
        known = table(section)
        if name not in known:
            if section == "data":  # datasets registered under computed names are not read: say nothing
                continue
            close = difflib.get_close_matches(str(name), list(known), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            return f"unknown {kind} {name!r}{hint}; valid: {', '.join(known)}"
        for key in cfg.get(section) or {}:
            if key not in known[name]:
                return f"unknown option {section}.{key} for {name!r}{_closest(key, known[name])}"
    return None
