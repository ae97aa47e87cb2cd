"""Untrusted text input (config files, experiment files, ``key=value`` overrides): read within bounds, refused in one
line, before anything is planned, trained or written. Pure Python and PyYAML: no torch, so a bad input is refused
within a second of the command starting.

    raw = inputs.read_yaml(path, ConfigError)        # UTF-8, <= MAX_FILE_BYTES, <= MAX_DEPTH levels, no aliases
    inputs.check_values(cfg, ConfigError)            # finite numbers in range, seeds, class counts

Why each bound exists (each was an attack that got through, issue 19):

* a non-UTF-8 byte made ``read_text`` raise ``UnicodeDecodeError`` with a traceback;
* ``data:`` nested 5,000 levels deep made PyYAML's recursive composer raise ``RecursionError``;
* YAML aliases (``&a [*b, *b, ...]`` nine times) build a document of a few hundred bytes that expands to billions of
  nodes as soon as anything walks it (a deep copy, a dump): aliases are refused, the shipped files use none;
* ``.nan`` passes every ``x < 0`` check, so every float must first be finite;
* ``seeds: 1000000000000`` is a list of 10^12 runs, and ``data: {num_classes: 100000000}`` a graph no machine holds.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, Type, Union

import yaml

if TYPE_CHECKING:  # typing.TypeGuard needs Python >= 3.10; postponed annotations never evaluate it at run time
    from typing import TypeGuard

MAX_FILE_BYTES = 1 << 20   # 1 MiB: the largest shipped experiment file is ~10 kB
MAX_DEPTH = 32             # nesting levels of a YAML document (the shipped files use at most 7)
MAX_SEEDS = 1000           # seeds of one experiment (the paper reports 3 to 5)
MAX_SEED = 2**32 - 1       # NumPy's legacy seeding takes 32 bits (train/seeding.py)
MAX_CLASSES = 100_000      # ImageNet-21k has 21,841 classes
# Other integer data options: upper bounds far above any real use, so a typo or an attack cannot ask for a dataset
# no machine holds (sizes of the synthetic sets, points per cloud, image sizes).
DATA_BOUNDS = {"num_classes": MAX_CLASSES, "train_per_class": 100_000, "test_per_class": 100_000,
               "per_class": 100_000, "num_features": 1_000_000, "num_test": 1_000_000, "isolated": 1_000_000,
               "num_points": 100_000, "image_size": 4096, "size": 4096, "workers": 1024}
MAX_SYNTHETIC_BYTES = 2 << 30  # a synthetic dataset is written and held in memory: at most 2 GiB of it


def _synthetic_bytes(dataset: str, data: Mapping[str, Any]) -> float:
    """About how many bytes the synthetic dataset ``dataset`` with options ``data`` holds (0: not synthetic). Options
    left out count 1: their defaults are small (3 to 40 classes, tens of samples a class)."""
    get = {k: v for k, v in data.items() if _number(v) and v > 0}
    classes = get.get("num_classes", 1)
    if dataset == "synthetic":                 # CIFAR batches: 3,072 bytes an image
        return classes * (get.get("train_per_class", 1) + get.get("test_per_class", 1)) * 3072
    if dataset == "synthetic_imagenet":        # decoded size of the JPEGs, train and val
        return 2 * classes * get.get("per_class", 1) * get.get("size", 1) ** 2 * 3
    if dataset == "synthetic_modelnet40":      # 2,048 points of 3 float32 a shape
        return classes * (get.get("train_per_class", 1) + get.get("test_per_class", 1)) * 2048 * 12
    if dataset == "synthetic_planetoid":       # dense features and one-hot labels, 4 bytes each, per node
        nodes = classes * get.get("train_per_class", 1) + get.get("num_test", 1) + get.get("isolated", 0) + 540
        return nodes * (get.get("num_features", 1) + classes) * 4
    return 0


class _Refused(yaml.MarkedYAMLError):
    """A YAML construct this project refuses (an alias, nesting past ``MAX_DEPTH``); printed without "not valid"."""


class BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses aliases and documents nested deeper than ``MAX_DEPTH``, both checked while
    composing (before the recursive composer could overflow the stack or an alias be expanded)."""

    depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _Refused(None, None, f"uses the alias *{event.anchor}: YAML anchors and aliases are refused (an "
                           "alias can expand a small file into billions of values); write the value out",
                           event.start_mark)
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise _Refused(None, None, f"nests deeper than {MAX_DEPTH} levels", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def yaml_error(path: Any, err: yaml.YAMLError) -> str:
    """One line: the file, the line and column, and what the parser expected (or why the construct is refused)."""
    mark = getattr(err, "problem_mark", None)
    where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    if isinstance(err, _Refused):
        return f"{path}:{where} {err.problem}"
    return f"{path}:{where} is not valid YAML ({getattr(err, 'problem', None) or err})"


def parse_yaml(text: str, where: Any, error: Type[Exception]) -> Any:
    """``text`` parsed by ``BoundedLoader``; every failure is ``error`` with one line naming ``where``."""
    loader = BoundedLoader(text)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as err:
        raise error(yaml_error(where, err)) from None
    except (ValueError, RecursionError) as err:  # e.g. an integer of more than 4,300 digits (int's own limit)
        raise error(f"{where}: holds a value that cannot be read ({type(err).__name__}: {err})") from None
    finally:
        loader.dispose()


def read_text(path: Path, error: Type[Exception], what: str = "file") -> str:
    """The file as UTF-8 text, at most ``MAX_FILE_BYTES``; ``error`` with one line otherwise."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            payload = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist") from None
    except OSError as err:
        raise error(f"cannot read {what} {path} ({err.strerror or err})") from None
    if len(payload) > MAX_FILE_BYTES:
        raise error(f"{path} is larger than {MAX_FILE_BYTES // 1024} KiB: not a {what} this project writes")
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError as err:
        line = payload[:err.start].count(b"\n") + 1
        raise error(f"{path}: line {line}: byte 0x{payload[err.start]:02x} is not UTF-8 text; save the file as "
                    "UTF-8") from None


def read_yaml(path: Path, error: Type[Exception], what: str = "file") -> Any:
    """``read_text`` then ``parse_yaml``."""
    return parse_yaml(read_text(path, error, what), path, error)


def _number(value: Any) -> TypeGuard[Union[int, float]]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_finite(value: Any, key: str, error: Type[Exception]) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise error(f"{key} must be a finite number, got {value}")


def check_values(cfg: Mapping[str, Any], error: Type[Exception]) -> None:
    """The range checks that need no registry (so no torch): every float finite, wherever it is (top-level keys and
    the ``reg`` / ``model_options`` / ``data`` sections); ``reg.lambda_*`` >= 0; ``label_smoothing`` in [0, 1);
    ``seed`` in [0, 2^32); integer data options within ``DATA_BOUNDS``. The other ranges (``lr`` > 0, ...) follow in
    ``config.validate``, on values known to be finite."""
    for key, value in cfg.items():
        if isinstance(value, Mapping):
            for sub, inner in value.items():
                check_finite(inner, f"{key}.{sub}", error)
        elif isinstance(value, list):
            for inner in value:
                check_finite(inner, key, error)
        else:
            check_finite(value, key, error)
    for sub, value in (cfg.get("reg") or {}).items():
        if str(sub).startswith("lambda") and _number(value) and value < 0:
            raise error(f"reg.{sub} must be >= 0 (0 switches that term off), got {value}")
    smoothing = cfg.get("label_smoothing")
    if _number(smoothing) and not 0 <= smoothing < 1:
        raise error(f"label_smoothing must be in [0, 1), got {smoothing}")
    seed = cfg.get("seed")
    if _number(seed) and not 0 <= seed <= MAX_SEED:
        raise error(f"seed must be in [0, {MAX_SEED}], got {seed}")
    for sub, value in (cfg.get("data") or {}).items():
        bound = DATA_BOUNDS.get(sub)
        if bound is not None and _number(value) and value > bound:
            raise error(f"data.{sub} must be <= {bound:,}, got {value:,}")
    size = _synthetic_bytes(str(cfg.get("dataset")), cfg.get("data") or {})
    if size > MAX_SYNTHETIC_BYTES:
        raise error(f"data: {dict(cfg['data'])} makes a synthetic dataset of ~{size / 2**30:,.0f} GiB, more than "
                    f"the {MAX_SYNTHETIC_BYTES >> 30} GiB allowed (it is written to disk and held in memory)")


def check_seed_list(seeds: list, error: Type[Exception], given: Optional[Any] = None) -> list:
    """Seeds distinct, each in [0, 2^32), at most ``MAX_SEEDS`` of them."""
    shown = seeds if given is None else given
    if len(seeds) > MAX_SEEDS:
        raise error(f"seeds: at most {MAX_SEEDS} seeds, got {len(seeds)}")
    bad = [s for s in seeds if not 0 <= s <= MAX_SEED]
    if bad:
        raise error(f"seeds must be in [0, {MAX_SEED}], got {bad[0]} (in {shown!r})")
    return seeds
