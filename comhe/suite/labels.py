"""Where a profile makes a table's row or column label misstate what ran: the notes that say so.

The smoke profile of table 8 trains the column "64/128/256" (MHE's t = 4) at width 1 to stay fast; its table must
not let the label speak for the run. ``notes(exp)`` compares, for each label, the config keys its layer sets under
the paper profile and under ``exp``'s profile, and writes one note per label whose keys differ. The stand-in data
(a profile's ``datasets``) and the schedule it gives every cell (its ``config``) are the profile's premise, said in
every table's header, and are not repeated per label unless the profile also sets them for that label.
"""
from __future__ import annotations

import copy
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from . import experiments as experiments_lib
from . import overrides as overrides_lib
from .experiments import Column, Experiment, Row


def _dotted(cfg: Mapping[str, Any], keys: Sequence[str]) -> Dict[str, Any]:
    """``{"model_options.width": 4}`` for the dotted keys ``keys`` (``overrides.layout_keys``' spelling) of ``cfg``."""
    out = {}
    for key in keys:
        head, _, sub = key.partition(".")
        section = cfg.get(head)
        if sub and isinstance(section, Mapping) and sub in section:
            out[key] = section[sub]
        elif not sub and head in cfg:
            out[key] = cfg[head]
    return out


def notes(exp: Experiment) -> List[str]:
    """Where a profile other than the paper's changes what a row or column label says (smoke trains the column
    "64/128/256", t = 4, at width 1): one note per changed label, so that the table never claims a setting it did
    not run."""
    if exp.profile == "paper":
        return []
    paper = copy.copy(exp)
    paper.profile_spec = {}
    spec = exp.profile_spec
    # The stand-in data (``datasets``) and the schedule every cell gets (``config``) are the profile's premise, said
    # in its header; what it sets for one label (``columns`` / ``rows``) is what a label can then misstate.
    premise = set(overrides_lib.layout_keys_of(spec.get("config"))) | {"dataset", "data"}
    changed: Dict[str, List[str]] = {}
    labelled: List[Tuple[str, Optional[Column], Any, Optional[Row], Any]] = [
        (f"column {c.name}", c, c.config, None, (spec.get("columns") or {}).get(c.name)) for c in exp.columns]
    labelled += [(f"row {r.name}", None, r.config, r, (spec.get("rows") or {}).get(r.name))
                 for r in exp.rows if r.config is not None]
    for label, column, layer_cfg, row, own in labelled:
        targeted = set(overrides_lib.layout_keys_of(own))
        keys = [k for k in overrides_lib.layout_keys_of(layer_cfg)
                if k in targeted or (k not in premise and k.partition(".")[0] not in premise)]
        for r in [row] if row else exp.rows:
            for c in [column] if column else exp.columns:
                if exp.layout_text(r, c) is not None:
                    continue
                ours = _dotted(experiments_lib.cell_config(exp, r, c), keys)
                theirs = _dotted(experiments_lib.cell_config(paper, r, c), keys)
                for key, value in theirs.items():
                    if key in ours and ours[key] != value:
                        text = f"{key}={ours[key]} (the paper's {value})"
                        if text not in changed.setdefault(label, []):
                            changed[label].append(text)
    return [f"Profile {exp.profile}: {label} ran with {', '.join(texts)}, not the setting its label names."
            for label, texts in changed.items()]


# Data sets that stand in for another under an override, with the words every table and figure made on them must
# carry (issue 21: a number from the export is never shown as a CIFAR-10 number). comhe/data/cifar_export.py.
STAND_IN_DATA = {"cifar10_jpeg_export": "CIFAR-10 JPEG export (JPEG-recompressed CIFAR-10 images, not CIFAR-10)"}


def stand_in_data(exp: Experiment) -> str:
    """``"data: CIFAR-10 JPEG export (...)"`` when an override trains ``exp`` on a stand-in data set, else ``''``."""
    names = [o.split("=", 1)[1].strip() for o in exp.overrides if o.split("=", 1)[0].strip() == "dataset"]
    said = [STAND_IN_DATA[n] for n in names if n in STAND_IN_DATA]
    return "data: " + "; ".join(said) if said else ""
