"""The checks of a whole ``python -m comhe.run`` command that need no torch, run before anything imports it.

Planning (``experiments.plan``) validates every cell completely, and that reads the registries of models,
regularisers and datasets, so it imports torch: 3-4 s on a quiet machine, 10-50 s on a loaded one. A mistyped target,
experiment file, override or value must not wait for that. ``check`` reads every requested experiment file (under the
paper profile too: a smoke run must not pass a file the paper run would refuse), every override against the config
keys, and every planned cell's top-level keys, types and ranges (``config.validate(..., registries=False)``).
The option names of ``reg.*`` / ``model_options.*`` / ``data.*`` and the registry names are read from the source
(``train/signatures.py``). What is left for planning: the option values' types and the constructors' own checks
(``reg.proj_dim=0``), which need the registries, and the Planetoid graphs' ``data.*`` options.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Sequence

from ..train import config as config_lib
from ..train import signatures
from . import experiments as experiments_lib
from . import overrides as overrides_lib
from .experiments import Experiment, ExperimentError


def _top_level(overrides: Sequence[str]) -> List[str]:
    """The overrides of top-level keys (``lr=0.05``); dotted ones (``reg.proj_dim=30``) apply per cell, where the
    cell's regulariser / model / dataset has the option, which only the registries know."""
    out = []
    for text in overrides:
        key, _ = config_lib.parse_override(text)
        if key.isupper():  # config keys are lower-case: this is an environment or make variable put after the target
            raise config_lib.ConfigError(
                f"{text!r} is not a config key (those are lower-case, e.g. data_root=DIR): {key} is an environment "
                f"variable; write {text} python -m comhe.run ..., or make <target> {text}")
        head, _, sub = key.partition(".")
        if sub and head not in config_lib.OPEN_SECTIONS:
            config_lib.apply_overrides({}, [text])  # raises: only open sections take dotted keys
        if not sub:
            out.append(text)
    return out


def _check_dotted(cfgs: Sequence[dict], overrides: Sequence[str]) -> None:
    """A ``reg.*`` / ``model_options.*`` / ``data.*`` override must be an option of some cell's regulariser / model /
    dataset (``experiments.apply_overrides``' rule), judged from the source (``signatures``) where every cell's
    entry is known there."""
    for text in overrides:
        key, _ = config_lib.parse_override(text)
        head, _, sub = key.partition(".")
        if not sub or head not in config_lib.OPEN_SECTIONS:
            continue
        owner = signatures.OWNERS[head][0]
        known = [signatures.options(head, cfg[owner]) for cfg in cfgs]
        if not cfgs or any(k is None for k in known) or any(sub in k for k in known if k is not None):
            continue
        valid = sorted({o for k in known if k is not None for o in k})
        raise config_lib.ConfigError(f"override {text!r}: no run of this experiment has the option {key}"
                                     f"{config_lib.closest(sub, valid)}")


def check_cells(exp: Experiment, overrides: Sequence[str]) -> None:
    """Every trained cell of ``exp`` (its columns not excluded by ``COLUMNS``) with the top-level overrides: keys,
    types, ranges and option names. Raises ``ConfigError`` naming the file, row and column."""
    top = _top_level(overrides)
    cfgs = []
    for row in exp.rows:
        for column in exp.columns:
            if exp.layout_text(row, column) is not None or column.name in exp.not_run:
                continue
            where = f"{exp.path.name}, row {row.name}, column {column.name}"
            try:
                cfg = experiments_lib.cell_config(exp, row, column)
                cfg = config_lib.apply_overrides(config_lib.merge(config_lib.DEFAULTS, cfg), top)
                config_lib.validate(cfg, registries=False)
            except config_lib.ConfigError as err:
                raise config_lib.ConfigError(f"{where}: {err}") from None
            check_data_root(cfg["data_root"], where)
            cfgs.append(cfg)
    _check_dotted(cfgs, overrides)


def check_data_root(data_root: str, where: str = "") -> None:
    """A data root given (``data_root=``, ``$COMHE_DATA``) whose parent folder does not exist is a typo: refused at
    once, as ``data.locate`` would refuse it before training (it creates the root only inside an existing folder)."""
    given = data_root or os.environ.get("COMHE_DATA", "")  # data.data_root's rule (data/ imports torch)
    if not given:
        return
    path = Path(given).expanduser()
    source = "data_root" if data_root else "$COMHE_DATA"
    prefix = f"{where}: " if where else ""
    if path.exists() and not path.is_dir():
        raise config_lib.ConfigError(f"{prefix}data root {path} exists and is not a directory (from {source})")
    if not path.exists() and not path.parent.is_dir():
        raise config_lib.ConfigError(f"{prefix}data root {path} does not exist, nor does {path.parent}: nothing was "
                                     f"created; fix {source}, or create it (mkdir -p {path})")


def check_data_root_exists(data_root: str) -> None:
    """When every run is finished nothing creates or reads the data root, so a given one that does not exist (a
    typo: ``COMHE_DATA=/data/planetiod``) would go unnoticed: refused."""
    given = data_root or os.environ.get("COMHE_DATA", "")
    if given and not Path(given).expanduser().is_dir():
        source = "data_root" if data_root else "$COMHE_DATA"
        raise config_lib.ConfigError(f"data root {given} does not exist (from {source}; every run is finished, so "
                                     f"nothing would read it: a typo?); fix or drop {source}")


def check(targets: Sequence[str], profile: str, seeds, overrides: Sequence[str], columns: Sequence[str]) -> None:
    """Everything about a ``python -m comhe.run`` command that can be checked without torch (module docstring);
    ``targets``: experiment names or paths (``runner.targets`` expands ``all``). Raises ``ExperimentError`` or
    ``ConfigError`` with one line."""
    for name in targets:
        profiles = [profile] + (["paper"] if profile != "paper" else [])
        for which in profiles:  # the paper profile's cells too: their keys must be valid whatever smoke sets
            exp = experiments_lib.load(name, which, seeds)
            if columns:
                experiments_lib.restrict(exp, columns)
            for text in overrides:
                refusal = overrides_lib.layout_conflict(exp, text)
                if refusal:
                    raise config_lib.ConfigError(refusal)
            try:
                check_cells(exp, overrides if which == profile else ())
            except config_lib.ConfigError as err:
                if which == profile:
                    raise
                raise ExperimentError(f"{err} (under the paper profile; {profile} runs too must come from a valid "
                                      "file)") from None
