"""Command-line overrides against an experiment's layout: what a table may be told, and what it must then say.

A table's rows and columns *are* settings: table 1's columns set ``model`` (CNN-6 / 9 / 15), its rows
``regularizer``. An override of such a key (``make table1 model=cnn9``) would train cnn9 runs under the labels
"CNN-6" and "CNN-15" next to the paper's CNN-6 numbers, so it is refused with one line (``layout_conflict``). The
seed is set per run by the seed list, so ``seed=`` is refused too (``SEEDS=`` says it).

Any other override that changes what some run computes (``lr=0.05``, ``model_options.width=1``) is a change of
protocol: ``protocol_changes`` names them, and the tables (md, tex) and figures print them in their header. An
override that changes no run (``reg.proj_dim=40``, RP-CoMHE's default; ``threads=1``, how a run is executed, not what
it computes) is not a change of protocol and is not printed.
"""
from __future__ import annotations

import re
from typing import Any, Dict, List, Mapping, Optional, Sequence

from ..train import config as config_lib
from ..train.records import RUN_ID_IGNORES

# A value that is exactly ``${name}``: a column variable. ``experiments`` substitutes it; here it marks a key every
# column sets. Defined here, below ``experiments``, so that the two modules do not import each other.
VAR = re.compile(r"^\$\{(\w+)\}$")


def _keys(mapping: Optional[Mapping[str, Any]]) -> List[str]:
    """The config keys a layer of the layout sets: ``lr``, and ``reg.proj_dim`` for open sections (a section set to
    ``null`` or as a whole counts as the section, ``reg``)."""
    out = []
    for key, value in (mapping or {}).items():
        if key in config_lib.OPEN_SECTIONS and isinstance(value, Mapping) and value:
            out += [f"{key}.{sub}" for sub in value]
        else:
            out.append(key)
    return out


def layout_keys_of(mapping: Optional[Mapping[str, Any]]) -> List[str]:
    """The config keys one layer of the layout sets (``lr``, ``model_options.width``)."""
    return _keys(mapping)


def _var_keys(mapping: Optional[Mapping[str, Any]], prefix: str = "") -> List[str]:
    """Keys whose value is a column variable (``${lam}``): each column sets them."""
    out = []
    for key, value in (mapping or {}).items():
        if isinstance(value, Mapping):
            out += _var_keys(value, f"{prefix}{key}.")
        elif isinstance(value, str) and VAR.match(value):
            out.append(f"{prefix}{key}")
    return out


def layout_keys(exp) -> Dict[str, List[str]]:
    """Config key -> the rows and columns that set it (``{"model": ["column CNN-6", "column CNN-9", ...]}``)."""
    spec = exp.profile_spec
    layers = [(f"column {c.name}", c.config) for c in exp.columns]
    layers += [(f"row {r.name}", r.config) for r in exp.rows]
    layers += [(f"row {r.name} in column {col}", cell) for r in exp.rows for col, cell in r.cells.items()
               if isinstance(cell, Mapping)]
    layers += [(f"column {name} (profile {exp.profile})", cfg) for name, cfg in (spec.get("columns") or {}).items()]
    layers += [(f"row {name} (profile {exp.profile})", cfg) for name, cfg in (spec.get("rows") or {}).items()]
    out: Dict[str, List[str]] = {}
    for where, mapping in layers:
        for key in _keys(mapping):
            out.setdefault(key, []).append(where)
    variables = sorted({v for c in exp.columns for v in c.vars})
    for _where, mapping in [("base", exp.base)] + [(w, m) for w, m in layers]:
        for key in _var_keys(mapping):
            out.setdefault(key, []).append(f"every column (${{{', '.join(variables)}}})")
    return out


def layout_conflict(exp, text: str) -> Optional[str]:
    """The one-line refusal of override ``text`` (``key=value``) for ``exp``, or None when the layout allows it."""
    key, _ = config_lib.parse_override(text)
    if key == "seed":
        return (f"override {text!r}: each run's seed comes from the seed list; use SEEDS=0,4,5 (make) or "
                "--seeds 0,4,5 (python -m comhe.run)")
    keys = layout_keys(exp)
    hits = [k for k in keys if k == key or k.startswith(key + ".") or key.startswith(k + ".")]
    if not hits:
        return None
    where = list(dict.fromkeys(w for k in hits for w in keys[k]))
    shown = ", ".join(where[:4]) + (f" and {len(where) - 4} more" if len(where) > 4 else "")
    return (f"override {text!r}: {exp.name} sets {hits[0]} in its layout ({shown}), so its labels and the paper's "
            f"numbers would describe other runs; write your own experiment YAML for that (docs/reference.md §7) or "
            f"train one run with python -m comhe.train")


def _value(cfg: Mapping[str, Any], key: str) -> Any:
    """The value of ``key`` (``lr``, ``reg.proj_dim``) in a cell config, defaults filled in."""
    full = config_lib.merge(config_lib.DEFAULTS, cfg)
    head, _, sub = key.partition(".")
    if not sub:
        return full.get(head)
    section = full.get(head) or {}
    if sub in section:
        return section[sub]
    try:
        return config_lib.section_defaults(full, head).get(sub)
    except ValueError:
        return None


def _same(a: Any, b: Any) -> bool:
    return a == b and type(a) is type(b) or (isinstance(a, (int, float)) and isinstance(b, (int, float))
                                             and not isinstance(a, bool) and not isinstance(b, bool) and a == b)


def protocol_changes(before: Sequence[Mapping[str, Any]], after: Sequence[Mapping[str, Any]],
                     overrides: Sequence[str]) -> List[str]:
    """The overrides that change what at least one cell computes (``before`` / ``after``: the cells' configs
    without and with the overrides), in the order given; execution-only keys (``threads``, ``device``) never do."""
    out, last = [], {config_lib.parse_override(text)[0]: text for text in overrides}  # a repeated key: the last wins
    for text in overrides:
        key, _ = config_lib.parse_override(text)
        if key.partition(".")[0] in RUN_ID_IGNORES or last[key] is not text:
            continue
        if any(not _same(_value(b, key), _value(a, key)) for b, a in zip(before, after)):
            out.append(text)
    return out
