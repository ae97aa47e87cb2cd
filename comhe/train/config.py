"""Run configuration: every option declared once, with its unit and the official value; typed ``key=value`` overrides.

A run config is a YAML mapping merged onto ``DEFAULTS``. Overrides (``python -m comhe.train cfg.yaml lr=0.05
reg.proj_dim=30``) are parsed as YAML scalars and must match the type of the default they replace; an unknown key
fails with the closest valid keys. ``reg.*``, ``model_options.*`` and ``data.*`` are checked against the options the
chosen regulariser, model and dataset accept. YAML is only ever read with ``inputs.BoundedLoader`` (``yaml.SafeLoader``
without aliases, its depth bounded); numbers are checked finite and in range before any registry (torch) is imported.
"""
from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional

import yaml

from . import inputs, signatures

DEFAULTS: Dict[str, Any] = {
    # --- what is trained
    "dataset": "cifar100",      # registry name: cifar10, cifar100, imagenet, fashion_mnist, synthetic, ...
    "data_root": "",            # "" -> $COMHE_DATA, else ./data
    "data": {},                 # dataset options, e.g. {num_classes: 100} for synthetic
    "model": "cnn9",            # registry name: cnn6/9/15, resnet20/32/56/110, resnet18/34/50
    "model_options": {},        # e.g. {width: 4} (MHE Table 2's t)
    "regularizer": "none",      # none, mhe, hs_mhe, rp_comhe, ap_comhe, adv_comhe, g_comhe, orthogonal, ...
    "reg": {},                  # regulariser options (s, lambda_hidden, proj_dim, num_proj, ...); defaults = official
    # --- optimisation (docs/reference.md §2: the official CoMHE protocol)
    "iterations": 75000,        # SGD steps; the MHE code used 42500
    "milestones": [30000, 50000, 65000],  # LR x lr_decay once `iteration` reaches each (MHE: 20000/30000/37500)
    "lr": 0.1,
    "lr_decay": 0.1,
    "momentum": 0.9,
    "nesterov": False,
    "weight_decay": 5e-4,       # on every parameter, BN included, as the official code
    "wd_exclude_bn": False,     # true: no decay on BN and bias parameters (common practice, not official)
    "batch_size": 128,          # global batch (split over DDP ranks)
    "loss": "official",         # official: CE of log(softmax + 1e-4) with label smoothing; cross_entropy: standard
    "label_smoothing": 0.01,    # official: targets 0.99 one-hot + 0.01 / classes
    "augment": True,            # official CIFAR: symmetric pad 4, random crop, flip
    "early_stopping": 0,        # node classification: stop when the val loss exceeds the mean of this many epochs
                                # before it (tkipf/gcn: 10); 0 = off. An iteration is then an epoch
    # --- optimiser and schedules by name (train/optim.py); the defaults are the CIFAR protocol above
    "optimizer": "sgd",         # sgd (momentum, nesterov) | adam (betas 0.9/0.999: PointNet, PointNet++)
    "lr_schedule": "milestones",  # milestones | staircase: max(lr_min, lr * lr_decay ** (i // lr_decay_every))
    "lr_decay_every": 0,        # staircase period in iterations (PointNet: 200,000 samples / 32 = 6,250)
    "lr_min": 0.0,              # floor of the staircase LR (PointNet: 1e-5)
    "warmup_iterations": 0,     # linear LR ramp over the first updates (not official; CPU CIFAR runs: 200)
    "bn_schedule": "constant",  # constant: the model's BN momentum | staircase at lr_decay_every (PointNet)
    "bn_momentum_start": 0.5,   # staircase BN momentum (PyTorch's, = 1 - TF decay): start, factor, floor
    "bn_momentum_decay": 0.5,
    "bn_momentum_min": 0.01,
    "monitor_exclude": [],      # fnmatch patterns of layers the energy monitor skips (metrics.csv energy/*)
    # --- evaluation and records
    "eval_every": 500,          # iterations between full test-set evaluations (and metrics rows)
    "eval_batch_size": 1000,
    "checkpoint_every": 5000,   # iterations between checkpoints (atomic, checksummed; the last two are kept)
    "seed": 0,                  # seeds Python, NumPy, torch, the data order and the RP-CoMHE projections
    "deterministic": False,     # torch.use_deterministic_algorithms: bitwise-repeatable, slower on GPU
    # --- speed (PAPER protocol unaffected)
    "device": "auto",           # auto: cuda if available, else cpu
    "amp": "auto",              # auto: bf16 autocast on CUDA (BN and the regulariser stay fp32); off; bf16
    "channels_last": "auto",    # auto: on for CUDA
    "compile": False,           # torch.compile the model and the regulariser's energy (first steps pay the compile)
    "cuda_graph": "auto",       # capture the step (optimiser included) in CUDA graphs; auto: on single-process CUDA
                                # runs, self-checked against the eager step first (steps.py; false: eager)
    "workers": "auto",          # DataLoader workers per process (ImageNet only; CIFAR lives on the device); auto: the
                                # cores over the runs at once, less one per run (data.loader_workers)
    "threads": 0,               # CPU threads for torch (0: auto, train/cpu.py: 1 for a graph run, else torch's default)
    "flush_subnormals": True,   # flush subnormal floats to zero on the CPU (x86 computes them tens of times
                                # slower; train/cpu.py, docs/speed.md); false keeps them, PyTorch's default
    # --- observing a run (not part of its identity)
    "tensorboard": False,       # log every metrics row to <run dir>/tensorboard/ (train/tracking.py)
}

# Keys added to DEFAULTS after run names were pinned (tests/suite/golden/run_names.json). At their default they are
# left out of a run's hash (``records.config_hash``), so adding a key never renames, and so never retrains, a run.
ADDED_KEYS: tuple = ("early_stopping", "tensorboard",
                     "optimizer", "lr_schedule", "lr_decay_every", "lr_min", "bn_schedule", "bn_momentum_start",
                     "bn_momentum_decay", "bn_momentum_min", "monitor_exclude",  # the last nine: train/optim.py
                     "warmup_iterations")
# Keys of the minibatch image loop that a full-batch node run (comhe/train/node_engine.py: Adam on the whole graph)
# has no use for: set away from their defaults for a graph dataset, they are refused rather than ignored.
IMAGE_ONLY = ("batch_size", "momentum", "nesterov", "wd_exclude_bn", "augment", "compile", "cuda_graph",
              "optimizer", "lr_schedule", "lr_decay_every", "lr_min", "bn_schedule", "monitor_exclude",
              "warmup_iterations")

CHOICES = {"loss": ("official", "cross_entropy"), "amp": ("auto", "off", "bf16"),
           "channels_last": ("auto", True, False), "cuda_graph": ("auto", True, False)}
OPEN_SECTIONS = ("data", "model_options", "reg")  # dict-valued: keys depend on the chosen dataset/model/regulariser


class ConfigError(ValueError):
    """A bad config or override; the message names the key and how to fix it."""


def closest(key: str, valid: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(valid), n=3, cutoff=0.5)
    return f" (closest: {', '.join(close)})" if close else f"; valid: {', '.join(valid) or '(none)'}"


def _type_ok(value: Any, default: Any) -> bool:
    if default is None:
        return True
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    if isinstance(default, list):
        return isinstance(value, list) and all(_type_ok(v, default[0]) for v in value) if default else \
            isinstance(value, list)
    return isinstance(value, type(default))


def section_types(cfg: Mapping[str, Any], section: str) -> Dict[str, type]:
    """The annotated types of an open section's options (used where the default is ``None``)."""
    from ..registry import keyword_types
    if section == "reg":
        from .. import regularizers
        return keyword_types(regularizers.REGULARIZERS.get(cfg["regularizer"]).__init__)
    if section == "model_options":
        from .. import models
        return keyword_types(models.MODELS.get(cfg["model"]))
    from .. import data
    return keyword_types(data.DATASETS.get(cfg["dataset"]))


_SAMPLE = {bool: False, int: 0, float: 0.0, str: ""}  # a value of each type, for ``_type_ok``
_BUILDABLE: set = set()  # the (model, regulariser) settings ``_check_buildable`` has already built
_CHECK_MODELS: Dict[str, Any] = {}  # the models it built, by model settings


def _check_buildable(cfg: Mapping[str, Any]) -> None:
    """Build the model and the regulariser once on the CPU (~0.05 s; ResNet-50 ~0.5 s) so that an option the
    constructors reject (``reg.proj_dim=0``, ``model_options.width=-1``) fails when the config is read, not after the
    runs planned before it have trained for hours. The dataset's true class count and image shape are only known
    once it is loaded; the model's defaults stand in for them here."""
    import torch
    from .. import data, models, regularizers
    from ..layers import find_layers
    from .cpu import one_thread
    num_classes = data.declared_num_classes(cfg["dataset"], cfg["data"])
    model_key = repr((cfg["model"], sorted(cfg["model_options"].items()), num_classes))
    key = model_key + repr((cfg["regularizer"], sorted(cfg["reg"].items()), cfg["monitor_exclude"]))
    if key in _BUILDABLE:
        return
    what = f"model {cfg['model']!r}"
    try:  # fork_rng: the weight init draws must not move the caller's global RNG (a config read after seeding)
        # one_thread: no intra-op threads before the run sets its subnormal mode (train/cpu.py)
        with torch.random.fork_rng(devices=[]), torch.device("cpu"), one_thread():
            if model_key not in _CHECK_MODELS:  # regularisers only read the model: one build serves them all
                _CHECK_MODELS[model_key] = models.build(cfg["model"], num_classes, **cfg["model_options"])
            what = f"regularizer {cfg['regularizer']!r}"
            regularizers.build(cfg["regularizer"], _CHECK_MODELS[model_key], **cfg["reg"])
            what = "monitor_exclude"
            find_layers(_CHECK_MODELS[model_key], exclude=cfg["monitor_exclude"], warn=False)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{what}: {err}") from None
    _BUILDABLE.add(key)


def forget_checked_models() -> None:
    """Free the models ``_check_buildable`` keeps while a plan is checked (an ImageNet ResNet-50 is ~100 MB)."""
    _CHECK_MODELS.clear()


def section_defaults(cfg: Mapping[str, Any], section: str) -> Dict[str, Any]:
    """The options of an open section for the chosen registry entry (imported lazily: config stays light)."""
    if section == "reg":
        from .. import regularizers
        return regularizers.option_defaults(cfg["regularizer"])
    if section == "model_options":
        from .. import models
        return models.option_defaults(cfg["model"])
    from .. import data
    return data.option_defaults(cfg["dataset"])


def merge(base: Mapping[str, Any], update: Mapping[str, Any], where: str = "") -> Dict[str, Any]:
    """``update`` onto ``base``; unknown top-level keys and wrong types raise ``ConfigError``."""
    out = copy.deepcopy(dict(base))
    for key, value in update.items():
        if key not in DEFAULTS:
            raise ConfigError(f"unknown config key {key!r}{where}{closest(key, DEFAULTS)}")
        if key in OPEN_SECTIONS:
            if not isinstance(value, Mapping):
                raise ConfigError(f"{key}{where} must be a mapping, got {value!r}")
            out[key] = {**out.get(key, {}), **value}
        elif key in CHOICES or key == "workers":  # e.g. channels_last: auto / true / false: checked in validate
            out[key] = value
        else:
            if not _type_ok(value, DEFAULTS[key]):
                raise ConfigError(f"{key}{where} must be {type(DEFAULTS[key]).__name__}, got {value!r}")
            out[key] = value
    return out


def parse_override(text: str) -> tuple:
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not key=value (e.g. lr=0.05 or reg.proj_dim=30)")
    key, raw = text.split("=", 1)
    try:  # the bounded loader: no aliases, bounded depth (inputs.py)
        value = inputs.parse_yaml(raw, "value", ValueError) if raw.strip() else ""
    except ValueError as err:
        raise ConfigError(f"override {key}: cannot parse {raw!r} ({err})") from None
    return key.strip(), value


def apply_overrides(cfg: Mapping[str, Any], overrides: Iterable[str]) -> Dict[str, Any]:
    """``["lr=0.05", "reg.proj_dim=30"]`` onto ``cfg``, type-checked against the defaults."""
    out = copy.deepcopy(dict(cfg))
    for text in overrides:
        key, value = parse_override(text)
        head, _, sub = key.partition(".")
        if sub:
            if head not in OPEN_SECTIONS:
                raise ConfigError(f"unknown config key {key!r}: only {', '.join(OPEN_SECTIONS)} take dotted keys"
                                  f"{closest(head, OPEN_SECTIONS)}")
            out[head] = {**out.get(head, {}), sub: value}
        else:
            out = merge(out, {key: value}, " (override)")
    return out


def validate(cfg: Mapping[str, Any], registries: bool = True) -> None:
    """Range checks and the open sections' keys and types. Raises ``ConfigError`` with one clear line.

    ``registries=False``: only the checks that need no registry (so no torch): the command lines run them on every
    cell first, so that a bad value is reported in a fraction of a second, not after torch's import."""
    inputs.check_values(cfg, ConfigError)  # first, and without torch: finite numbers, seeds, class counts
    def positive(key: str, allow_zero: bool = False) -> None:
        value = cfg[key]
        if value < 0 or (value == 0 and not allow_zero):
            raise ConfigError(f"{key} must be {'>= 0' if allow_zero else '> 0'}, got {value}")

    for key in ("iterations", "lr", "batch_size", "eval_every", "eval_batch_size", "checkpoint_every"):
        positive(key)
    for key in ("weight_decay", "momentum", "label_smoothing", "threads", "early_stopping"):
        positive(key, allow_zero=True)
    if cfg["workers"] != "auto" and (type(cfg["workers"]) is not int or cfg["workers"] < 0):
        raise ConfigError(f"workers must be auto or an integer >= 0, got {cfg['workers']!r}")
    if not 0 < cfg["lr_decay"] <= 1:
        raise ConfigError(f"lr_decay must be in (0, 1], got {cfg['lr_decay']}")
    if list(cfg["milestones"]) != sorted(cfg["milestones"]) or any(m <= 0 for m in cfg["milestones"]):
        raise ConfigError(f"milestones must be increasing positive iterations, got {cfg['milestones']}")
    for key, choices in CHOICES.items():  # by value and type: 1 is not True
        if not any(cfg[key] == c and type(cfg[key]) is type(c) for c in choices):
            raise ConfigError(f"{key} must be one of {', '.join(map(str, choices))}, got {cfg[key]!r}")
    misspelt = signatures.problem(cfg)  # option and registry names, read from the source: no torch yet
    if misspelt:
        raise ConfigError(misspelt)
    if not registries:  # what follows reads the registries (models, regularisers, datasets, optimisers): torch
        return
    from . import optim
    try:
        optim.check(cfg)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    for section in OPEN_SECTIONS:
        try:
            valid = section_defaults(cfg, section)
        except ValueError as err:  # unknown model / dataset / regulariser name
            raise ConfigError(str(err)) from None
        for key, value in cfg[section].items():
            if key not in valid:
                raise ConfigError(f"unknown option {section}.{key} for {cfg[_SECTION_OWNER[section]]!r}"
                                  f"{closest(key, valid)}")
            if section == "reg" and key == "s":  # the power is an int (0, 1, 2) or a string (a0, a1, a2)
                from ..energy import canonical_power
                try:
                    canonical_power(value)
                except ValueError as err:
                    raise ConfigError(f"reg.s: {err}") from None
            else:
                default = valid[key]
                if default is None and value is not None:  # "decided from other options": check the annotation
                    annotated = section_types(cfg, section).get(key)
                    default = None if annotated is None else _SAMPLE.get(annotated)
                if not _type_ok(value, default):
                    raise ConfigError(f"{section}.{key} must be {type(default).__name__}, got {value!r}")
    _check_task_keys(cfg)
    _check_buildable(cfg)


def _check_task_keys(cfg: Mapping[str, Any]) -> None:
    """Keys that only one trainer reads are refused where the other would silently ignore them."""
    from .. import data
    if data.task(cfg["dataset"]) == "node":
        bad = [k for k in IMAGE_ONLY if cfg[k] != DEFAULTS[k]] + (["amp"] if cfg["amp"] == "bf16" else [])
        if bad:
            raise ConfigError(f"{', '.join(bad)}: not used by full-batch node classification (dataset "
                              f"{cfg['dataset']!r}: Adam on the whole graph, float32); leave at the default")
    elif cfg["early_stopping"]:
        raise ConfigError(f"early_stopping applies to node classification (graph datasets), not to "
                          f"{cfg['dataset']!r}")


_SECTION_OWNER = {"reg": "regularizer", "model_options": "model", "data": "dataset"}


yaml_error = inputs.yaml_error  # one line: the file, the line and column, and what the parser expected


def load(path: str | Path, overrides: Iterable[str] = ()) -> Dict[str, Any]:
    """DEFAULTS <- the YAML file <- overrides, validated and normalized."""
    path = Path(path)
    raw = inputs.read_yaml(path, ConfigError, "config file") or {}  # UTF-8, bounded size and depth, no aliases
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path} must hold a mapping of config keys, got {type(raw).__name__}")
    cfg = apply_overrides(merge(DEFAULTS, raw, f" in {path}"), overrides)
    validate(cfg)
    return normalize(cfg)


def resolve(overrides: Iterable[str] = (), base: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """DEFAULTS (or ``base``) <- overrides, validated and normalized (for code and tests without a YAML file)."""
    cfg = apply_overrides(merge(DEFAULTS, base or {}), overrides)
    validate(cfg)
    return normalize(cfg)


def normalize(cfg: Mapping[str, Any]) -> Dict[str, Any]:
    """Remove open-section options set to their default (``reg: {layers: both}`` is ``reg: {}``), for a validated
    config. The run's hash (``records.run_name``) must not depend on whether a default was spelled out, or identical
    runs would get two directories: two tables sharing a run, or ``comhe.train`` and ``comhe.run`` naming one run.
    ``load`` and ``resolve`` return normalized configs; the value types must match too (``1`` is not ``1.0``)."""
    out = dict(cfg)
    for section in OPEN_SECTIONS:
        defaults = section_defaults(out, section)
        out[section] = {k: v for k, v in out[section].items()
                        if not (k in defaults and type(v) is type(defaults[k]) and v == defaults[k])}
    return out


def dump(cfg: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(cfg), sort_keys=False)
