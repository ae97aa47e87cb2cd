"""Experiment definitions: one YAML per paper table or figure (``experiments/*.yaml``) -> the runs that fill it.

    exp = experiments.load("table1", profile="smoke")     # or a path to a YAML file
    cells = experiments.plan(exp, overrides=["lr=0.05"])   # one CellRun per (row, column, seed)

A YAML file holds the paper's layout: ``rows`` (methods) x ``columns`` (datasets, architectures, settings), each a
mapping of config keys (``comhe/train/config.py`` is the single list of keys). The config of a cell is, in this order::

    base <- column.config <- row.config <- row.cells[column]               the paper protocol
         <- profile.datasets[dataset] <- profile.config <- profile.columns[column] <- profile.rows[row]
         <- ${var} substitution (column.vars) <- command-line overrides <- seed

A row without ``config`` is a reference-only row (a number quoted by the paper, never trained here). A
``row.cells[column]`` of ``"N/A"`` or ``""`` takes the cell out of the layout (rendered as written). A value that is
exactly ``${name}`` is replaced by the column's ``vars[name]``, keeping its YAML type (``lambda_output: ${lam}``).
A ``null`` for ``reg``, ``model_options`` or ``data`` clears the section before the next layer. Command-line
overrides of ``reg.*`` / ``model_options.*`` / ``data.*`` apply to the cells whose regulariser / model / dataset has
that option (``reg.proj_dim=30`` changes RP- and AP-CoMHE, not the baseline); one that no cell accepts fails.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

from ..train import config as config_lib
from ..train import inputs
from ..train.records import run_name
from . import overrides as overrides_lib

EXPERIMENTS_DIR = Path(__file__).resolve().parents[2] / "experiments"
PROFILES = ("paper", "quick", "smoke")
TOP_KEYS = {"name", "title", "source", "kind", "metric", "base", "rows", "columns", "seeds", "references", "claims",
            "figures", "profiles", "notes", "select", "selected_by"}
PROFILE_KEYS = {"seeds", "config", "datasets", "columns", "rows", "keep_weights"}
VAR = overrides_lib.VAR  # ``${name}``: a column variable (its one definition is in overrides.py)
SAFE_NAME = re.compile(r"\w[\w. +-]{0,99}")  # ``name``: a file name under RESULTS, never a path
class Metric(NamedTuple):
    """What a cell reports: its label, printed decimals, and which way is better (claims, figures).

    ``complement``: a final.json key ``c`` such that this metric is ``100 - c`` when final.json lacks it (the image
    engine records test error; its accuracy follows)."""
    label: str
    digits: int
    higher_is_better: bool = False
    complement: Optional[str] = None


# The CIFAR / ImageNet tables report test error % (lower is better); the point-cloud and graph tables accuracy %.
METRICS = {"final_test_error": Metric("final test error %", 2),
           "best_test_error": Metric("best test error %", 2),
           "final_test_accuracy": Metric("final test accuracy %", 2, True, "final_test_error"),
           "best_test_accuracy": Metric("best test accuracy %", 2, True, "best_test_error"),
           "final_hidden_energy": Metric("hidden-layer energy (sum of full-space s=2 pair means)", 3),
           "final_val_accuracy": Metric("final validation accuracy %", 2, True)}  # node runs: at the stopping epoch


class ExperimentError(ValueError):
    """A malformed experiment file; the message names the file and the entry."""


@dataclass
class Column:
    name: str
    config: Dict[str, Any]
    vars: Dict[str, Any]
    metric: str
    x: Optional[float] = None     # position on a sweep figure's x axis (fig2's lambda)


@dataclass
class Row:
    name: str
    config: Optional[Dict[str, Any]]                 # None: reference-only row
    cells: Dict[str, Any] = field(default_factory=dict)


@dataclass
class Reference:
    label: str
    source: str
    values: Dict[str, Dict[str, Any]]                # row -> column -> number, "N/C" or "N/A"

    def get(self, row: str, column: str) -> Any:
        return (self.values.get(row) or {}).get(column)


@dataclass
class Experiment:
    name: str
    title: str
    source: str
    kind: str
    metric: str
    path: Path
    base: Dict[str, Any]
    rows: List[Row]
    columns: List[Column]
    seeds: List[int]
    references: List[Reference]
    claims: List[Dict[str, Any]]
    figures: List[Dict[str, Any]]
    notes: List[str]
    profile: str
    profile_spec: Dict[str, Any]
    keep_weights: bool
    select: Optional[Dict[str, Any]] = None     # a sweep: {metric: ...}, per row the column with the best mean
    selected_by: Optional[str] = None           # the sweep (experiment name) this table's settings come from
    not_run: Dict[str, str] = field(default_factory=dict)   # column -> why it is not planned (``restrict``)
    overrides: List[str] = field(default_factory=list)   # set by plan: the overrides that change the protocol
    seeds_given: bool = False                            # the seeds came from the command line, not the file
    columns_given: List[str] = field(default_factory=list)  # COLUMNS= / --columns as given (``restrict``)
    results_given: str = ""                              # --results, where not the profile's default folder

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)

    def layout_text(self, row: Row, column: Column) -> Optional[str]:
        """``None`` for a cell that is trained; else the text the paper prints there (``"N/A"``, ``""``)."""
        if row.config is None:
            return ""
        cell = row.cells.get(column.name)
        return cell if isinstance(cell, str) else None


@dataclass
class CellRun:
    """One seed of one cell: the resolved config and the run directory name it maps to."""
    experiment: str
    row: str
    column: str
    seed: int
    cfg: Dict[str, Any]
    name: str


def names() -> List[str]:
    """The experiments shipped in ``experiments/``, tables first, then figures, then the demo."""
    found = [p.stem for p in EXPERIMENTS_DIR.glob("*.yaml")]
    order = {"table": 0, "fig": 1}
    return sorted(found, key=lambda n: (order.get(re.sub(r"\d+$", "", n), 2), int(re.sub(r"\D", "", n) or 0), n))


def find(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    candidate = EXPERIMENTS_DIR / f"{name_or_path}.yaml"
    if candidate.is_file():
        return candidate
    raise ExperimentError(f"no experiment {str(name_or_path)!r}: valid names are {', '.join(names())} "
                          f"(or a path to a YAML file)")


def _require(cond: bool, path: Path, message: str) -> None:
    if not cond:
        raise ExperimentError(f"{path}: {message}")


def layer(base: Mapping[str, Any], update: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """``update`` onto ``base``: open sections merge key by key, ``null`` clears one, other keys are replaced."""
    out = copy.deepcopy(dict(base))
    for key, value in (update or {}).items():
        if key in config_lib.OPEN_SECTIONS:
            out[key] = {} if value is None else {**(out.get(key) or {}), **copy.deepcopy(value)}
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_seeds(value: Any) -> List[int]:
    """``3`` -> [0, 1, 2]; ``"0,4,5"`` or ``[0, 4, 5]`` -> those seeds (each in [0, 2^32), at most
    ``inputs.MAX_SEEDS`` of them)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise ExperimentError(f"seeds must be >= 1, got {value}")
        if value > inputs.MAX_SEEDS:  # before range(): 10^12 seeds would exhaust the memory
            raise ExperimentError(f"seeds: at most {inputs.MAX_SEEDS} seeds, got a count of {value}")
        return list(range(value))
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            return parse_seeds(int(text))
        value = [v for v in text.split(",") if v.strip()]
    try:
        if not isinstance(value, (list, tuple)) or any(isinstance(v, (bool, float)) for v in value):
            raise TypeError
        seeds = [int(v) for v in value[:inputs.MAX_SEEDS + 1]]
    except (TypeError, ValueError):
        raise ExperimentError(f"seeds must be a count (3) or a list (0,4,5), got {value!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ExperimentError(f"seeds must be distinct and non-empty, got {value!r}")
    return inputs.check_seed_list(seeds, ExperimentError, value)


def load(name_or_path: str | Path, profile: str = "paper", seeds: Any = None) -> Experiment:
    """Read and check one experiment file for ``profile``; ``seeds`` (count or list) overrides the file's."""
    path = find(name_or_path)
    raw = inputs.read_yaml(path, ExperimentError, "experiment file") or {}  # UTF-8, bounded depth, no aliases
    _require(isinstance(raw, Mapping), path, "must hold a mapping")
    _check_shapes(raw, path)
    for section in ("rows", "columns"):
        entries = raw.get(section) or []
        _require(isinstance(entries, list) and all(isinstance(e, Mapping) and "name" in e for e in entries), path,
                 f"{section} must be a list of mappings, each with a name")
    unknown = set(raw) - TOP_KEYS
    _require(not unknown, path, f"unknown key(s) {sorted(unknown)}; valid: {sorted(TOP_KEYS)}")
    _require(profile in PROFILES, path, f"profile must be one of {', '.join(PROFILES)}, got {profile!r}")
    profiles = raw.get("profiles") or {}
    _require(set(profiles) <= set(PROFILES), path, f"profiles must be among {PROFILES}, got {sorted(profiles)}")
    for name, other in [("file", raw)] + list(profiles.items()):  # every profile, as its own run would check it:
        other = other or {}                                         # smoke must not hide a mistake of the paper's
        _require(isinstance(other, Mapping), path, f"profile {name} must be a mapping, got {other!r}")
        _require(name == "file" or set(other) <= PROFILE_KEYS, path,
                 f"profile {name}: unknown key(s) {sorted(set(other) - PROFILE_KEYS)}; valid: {sorted(PROFILE_KEYS)}")
        try:
            parse_seeds(other.get("seeds", 3))
        except ExperimentError as err:
            raise ExperimentError(f"{path}: {'' if name == 'file' else f'profile {name}: '}{err}") from None
    spec = profiles.get(profile) or {}
    metric = raw.get("metric", "final_test_error")
    columns = [Column(c["name"], c.get("config") or {}, c.get("vars") or {}, c.get("metric", metric), c.get("x"))
               for c in raw.get("columns") or []]
    rows = [Row(r["name"], r["config"] if "config" in r else None, r.get("cells") or {}) for r in raw.get("rows") or []]
    references = [Reference(r["label"], r.get("source", ""), r.get("values") or {})
                  for r in raw.get("references") or []]
    exp = Experiment(
        name=raw.get("name", path.stem), title=raw.get("title", path.stem), source=raw.get("source", ""),
        kind=raw.get("kind", "table"), metric=metric, path=path, base=raw.get("base") or {}, rows=rows,
        columns=columns,
        seeds=parse_seeds(seeds if seeds not in (None, "") else spec.get("seeds", raw.get("seeds", 3))),
        references=references, claims=raw.get("claims") or [], figures=raw.get("figures") or [{"kind": "bars"}],
        notes=raw.get("notes") or [], profile=profile, profile_spec=spec, keep_weights=spec.get("keep_weights", True),
        select=raw.get("select"), selected_by=raw.get("selected_by"), seeds_given=seeds not in (None, ""))
    _check(exp)
    return exp


# The type of each top-level key, and of each entry's keys (``None`` is accepted where a key may be left out): a
# value of another type is refused in one line here, not as a TypeError wherever it is first used.
_STR, _MAP, _LIST, _NUM = (str,), (Mapping,), (list,), (int, float)
TOP_TYPES = {"name": _STR, "title": _STR, "source": _STR, "kind": _STR, "metric": _STR, "base": _MAP, "rows": _LIST,
             "columns": _LIST, "references": _LIST, "claims": _LIST, "figures": _LIST, "notes": _LIST,
             "select": _MAP, "selected_by": _STR, "profiles": _MAP}
ENTRY_TYPES: Dict[str, Dict[str, Tuple[type, ...]]] = {
    "rows": {"name": _STR, "config": _MAP, "cells": _MAP},
    "columns": {"name": _STR, "config": _MAP, "vars": _MAP, "metric": _STR, "x": _NUM},
    "references": {"label": _STR, "source": _STR, "values": _MAP},
    "claims": {"text": _STR, "order": _LIST, "better": _LIST, "than": _STR, "columns": _LIST, "cells": _LIST},
    "figures": {"kind": _STR}}
_TYPE_NAMES = {_STR: "text", _MAP: "a mapping", _LIST: "a list", _NUM: "a number", (bool,): "true or false"}
PROFILE_TYPES = {"config": _MAP, "datasets": _MAP, "columns": _MAP, "rows": _MAP, "keep_weights": (bool,)}


def _check_types(mapping: Mapping, types: Mapping[str, tuple], where: str, path: Path) -> None:
    for key, allowed in types.items():
        value = mapping.get(key)
        ok = value is None or (isinstance(value, allowed) and not (allowed is _NUM and isinstance(value, bool)))
        _require(ok, path, f"{where}{key} must be {_TYPE_NAMES[allowed]}, got {value!r:.60}")


def _check_shapes(raw: Mapping, path: Path) -> None:
    """The types of the file's keys and of its entries' keys (``TOP_TYPES``, ``ENTRY_TYPES``, ``PROFILE_TYPES``)."""
    _check_types(raw, TOP_TYPES, "", path)
    for section, types in ENTRY_TYPES.items():
        for i, entry in enumerate(raw.get(section) or []):
            _require(isinstance(entry, Mapping), path, f"{section}[{i}] must be a mapping, got {entry!r:.60}")
            _check_types(entry, types, f"{section}[{i}].", path)
    for i, note in enumerate(raw.get("notes") or []):
        _require(isinstance(note, str), path, f"notes[{i}] must be text, got {note!r:.60}")
    for name, spec in (raw.get("profiles") or {}).items():
        _require(spec is None or isinstance(spec, Mapping), path, f"profiles.{name} must be a mapping")
        _check_types(spec or {}, PROFILE_TYPES, f"profiles.{name}.", path)


def _is_experiment(name_or_path: str) -> bool:
    try:
        find(name_or_path)
    except (ExperimentError, OSError, ValueError):  # ValueError: a NUL byte in the path
        return False
    return True


def _check(exp: Experiment) -> None:
    path = exp.path
    if exp.select is not None:
        _require(isinstance(exp.select, Mapping) and exp.select.get("metric") in METRICS, path,
                 f"select must be {{metric: <one of {list(METRICS)}>}}, got {exp.select!r}")
    _require(isinstance(exp.name, str) and SAFE_NAME.fullmatch(exp.name) is not None, path,
             f"name must be a plain file name (letters, digits, ' _-.+', no folder), got {exp.name!r}: the "
             "tables are written as <results>/<name>.csv")
    if exp.selected_by is not None:
        _require(isinstance(exp.selected_by, str) and exp.selected_by != exp.name, path,
                 f"selected_by must name another experiment (a sweep with select:), got {exp.selected_by!r}")
        _require(_is_experiment(exp.selected_by), path, f"selected_by {exp.selected_by!r} is neither a shipped "
                 f"experiment ({', '.join(names())}) nor an existing .yaml file")
    _require(bool(exp.rows) and bool(exp.columns), path, "needs rows and columns")
    row_names, col_names = [r.name for r in exp.rows], [c.name for c in exp.columns]
    _require(len(set(row_names)) == len(row_names) and len(set(col_names)) == len(col_names), path,
             "row and column names must be unique")
    for c in exp.columns:
        _require(c.metric in METRICS, path, f"column {c.name}: metric {c.metric!r} is not one of {list(METRICS)}")
    for r in exp.rows:
        bad = set(r.cells) - set(col_names)
        _require(not bad, path, f"row {r.name}: cells name unknown column(s) {sorted(bad)}")
    for ref in exp.references:
        for row, values in ref.values.items():
            _require(row in row_names, path, f"reference {ref.label}: unknown row {row!r}")
            bad = set(values or {}) - set(col_names)
            _require(not bad, path, f"reference {ref.label}, row {row}: unknown column(s) {sorted(bad)}")
    for section in ("rows", "columns"):
        bad = set(exp.profile_spec.get(section) or {}) - set(row_names if section == "rows" else col_names)
        _require(not bad, path, f"profile {exp.profile}: {section} names unknown {sorted(bad)}")
    for claim in exp.claims:
        cells = [tuple(c) for c in claim.get("cells") or []]
        named = list(claim.get("order") or []) + list(claim.get("better") or []) + [r for r, _ in cells]
        named += [claim["than"]] if "than" in claim else []
        bad = (set(named) - set(row_names)) | (set(claim.get("columns") or []) | {c for _, c in cells}) - set(col_names)
        _require(not bad and "text" in claim and bool(named), path,
                 f"claim {claim.get('text')!r}: needs text and order, better/than or cells; unknown {sorted(bad)}")
        if cells:  # a chain across columns compares one metric: "better" must mean the same on both sides
            directions = {METRICS[exp.column(c).metric].higher_is_better for _, c in cells}
            _require(len(directions) == 1, path, f"claim {claim['text']!r} chains cells whose metrics disagree on "
                     "which way is better (error vs accuracy)")


def _substitute(value: Any, variables: Mapping[str, Any], where: str) -> Any:
    if isinstance(value, Mapping):
        return {k: _substitute(v, variables, where) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, variables, where) for v in value]
    match = VAR.match(value) if isinstance(value, str) else None
    if match:
        if match.group(1) not in variables:
            raise ExperimentError(f"{where}: ${{{match.group(1)}}} is not a variable of this column "
                                  f"(vars: {', '.join(variables) or 'none'})")
        return copy.deepcopy(variables[match.group(1)])
    return value


def cell_config(exp: Experiment, row: Row, column: Column) -> Dict[str, Any]:
    """The cell's config before command-line overrides and seed (a plain mapping of config keys)."""
    extra = row.cells.get(column.name)
    cfg = layer(layer(layer(exp.base, column.config), row.config), extra if isinstance(extra, Mapping) else None)
    spec = exp.profile_spec
    replacement = (spec.get("datasets") or {}).get(cfg.get("dataset", config_lib.DEFAULTS["dataset"]))
    if replacement:  # the profile's stand-in for this dataset (smoke: synthetic data in the same format)
        cfg = layer({k: v for k, v in cfg.items() if k != "data"}, replacement)
    cfg = layer(cfg, spec.get("config"))
    cfg = layer(cfg, (spec.get("columns") or {}).get(column.name))
    cfg = layer(cfg, (spec.get("rows") or {}).get(row.name))
    return _substitute(cfg, column.vars, f"{exp.path}: row {row.name}, column {column.name}")


def _options(cfg: Mapping[str, Any], section: str) -> Dict[str, Any]:
    try:
        return config_lib.section_defaults(cfg, section)
    except ValueError:  # an unknown registry name: validation reports it
        return {}


def _accepts(cfg: Mapping[str, Any], section: str, key: str) -> bool:
    return key in _options(cfg, section)


def apply_overrides(cfgs: Sequence[Dict[str, Any]], overrides: Sequence[str]) -> List[Dict[str, Any]]:
    """Command-line ``key=value`` onto every cell; dotted open-section keys only where the option exists."""
    out = [copy.deepcopy(c) for c in cfgs]
    for text in overrides:
        key, _ = config_lib.parse_override(text)
        head, _, sub = key.partition(".")
        targets = [c for c in out if not sub or head not in config_lib.OPEN_SECTIONS
                   or _accepts(config_lib.merge(config_lib.DEFAULTS, c), head, sub)]
        if not targets:
            valid = sorted({k for c in out for k in _options(config_lib.merge(config_lib.DEFAULTS, c), head)})
            raise config_lib.ConfigError(f"override {text!r}: no run of this experiment has the option {key}"
                                         f"{config_lib.closest(sub, valid)}")
        for c in targets:
            c.update(config_lib.apply_overrides(c, [text]))
    return out


def restrict(exp: Experiment, columns: Sequence[str]) -> None:
    """Plan only ``columns`` of ``exp`` (``COLUMNS=Cora``); the others render as not run, with the reason."""
    names = [c.name for c in exp.columns]
    chosen = [n for n in names if n.lower() in {c.strip().lower() for c in columns}]
    _require(bool(chosen), exp.path, f"COLUMNS={','.join(columns)} names none of its columns ({', '.join(names)})")
    exp.not_run = {n: f"not selected (COLUMNS={','.join(columns)})" for n in names if n not in chosen}
    exp.columns_given = chosen


def _data_status(exp: Experiment, overrides: Sequence[str]) -> None:
    """Add to each not-run column's reason whether its data is there (``data.probe``: node datasets only)."""
    from .. import data
    for column in exp.columns:
        if column.name not in exp.not_run:
            continue
        row = next((r for r in exp.rows if exp.layout_text(r, column) is None), None)
        if row is None:
            continue
        try:
            cfg = config_lib.merge(config_lib.DEFAULTS, apply_overrides([cell_config(exp, row, column)], overrides)[0])
        except (config_lib.ConfigError, ExperimentError):
            continue
        why = data.probe(cfg["dataset"], cfg["data_root"] or None, **cfg["data"])
        if why:  # after the reason ``restrict`` gave (planning again does not repeat it)
            exp.not_run[column.name] = f"{exp.not_run[column.name].split('; ')[0]}; {why}"


def plan(exp: Experiment, overrides: Sequence[str] = ()) -> List[CellRun]:
    """Every (row, column, seed) the layout trains, with its validated config and run directory name; columns in
    ``exp.not_run`` (``restrict``) are left out."""
    cells: List[Tuple[Row, Column]] = [(r, c) for r in exp.rows for c in exp.columns
                                       if exp.layout_text(r, c) is None and c.name not in exp.not_run]
    for text in overrides:  # a key the rows or columns set would be mislabelled (suite/overrides.py)
        refusal = overrides_lib.layout_conflict(exp, text)
        if refusal:
            raise config_lib.ConfigError(refusal)
    _data_status(exp, overrides)
    before = [cell_config(exp, r, c) for r, c in cells]
    raw = apply_overrides(before, overrides)
    out = []
    for (row, column), cfg in zip(cells, raw):
        for seed in exp.seeds:
            try:
                resolved = config_lib.resolve(base={**cfg, "seed": seed})  # normalized: see config.normalize
            except config_lib.ConfigError as err:
                raise config_lib.ConfigError(f"{exp.path.name}, row {row.name}, column {column.name}: {err}") from None
            out.append(CellRun(exp.name, row.name, column.name, seed, resolved, run_name(resolved)))
    config_lib.forget_checked_models()
    exp.overrides = overrides_lib.protocol_changes(before, raw, overrides)
    return out
