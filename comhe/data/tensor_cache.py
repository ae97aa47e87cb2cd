"""A checked cache of decoded arrays in the data root: ``<data root>/decoded/<name>-<key hash>.{npz,json}``.

Decoding 60,000 small JPEG files takes tens of seconds; reading them back as one ``.npz`` about a second. The
``.json`` beside it records what was decoded (``key``: folder, splits, classes, ...), the folder's ``fingerprint``
(every image file's path, size and modification time) and the ``.npz``'s sha256. The cache is used only when all
three match, so editing, adding or removing an image, or a damaged or half-written cache file, rebuilds it. It is
written in its own folder of the data root, never inside the image folder (which is the user's, or read-only).

Written aside and renamed into place under a lock file, so two processes never decode at once or read half a file.
Where the data root cannot be written, the arrays are decoded on every use, with one warning.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Callable, Dict, Mapping, Sequence, Tuple

import numpy as np

from ..digests import file_digest

FORMAT = 1
FOLDER = "decoded"


def fingerprint(top: Path, files: Mapping[str, Sequence[Tuple[str, int]]]) -> str:
    """sha256 over every listed file's relative path, label, size and modification time (ns)."""
    h = hashlib.sha256()
    for split in sorted(files):
        for rel, label in files[split]:
            st = os.stat(top / rel)
            h.update(f"{rel}\0{label}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _sha256(path: Path) -> str:
    return file_digest(path, "sha256")


def paths(root: Path, name: str, key: Mapping) -> Tuple[Path, Path]:
    """The ``.npz`` and ``.json`` of this key in ``root``."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    stem = Path(root) / FOLDER / f"{name}-{digest}"
    return stem.with_suffix(".npz"), stem.with_suffix(".json")


def _read(npz: Path, manifest: Path, key: Mapping, print_: str):
    """The arrays if the manifest matches ``key`` and ``print_`` and the file its sha256, else None."""
    try:
        meta = json.loads(manifest.read_text())
        if (meta.get("format") != FORMAT or meta.get("key") != json.loads(json.dumps(key))
                or meta.get("fingerprint") != print_ or meta.get("sha256") != _sha256(npz)):
            return None
        with np.load(npz, allow_pickle=False) as f:
            return {name: f[name] for name in f.files}
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def _locked(path: Path):
    with open(path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def cached(root: Path, name: str, key: Mapping, print_: str,
           build: Callable[[], Dict[str, np.ndarray]]) -> Dict[str, np.ndarray]:
    """The arrays ``build()`` makes for ``key``, from the cache when it matches ``print_``, else built and cached."""
    npz, manifest = paths(root, name, key)
    found = _read(npz, manifest, key, print_) if manifest.is_file() and npz.is_file() else None
    if found is not None:
        return found
    try:
        npz.parent.mkdir(exist_ok=True)
    except OSError as err:
        print(f"warning: cannot write the decoded-image cache in {npz.parent} ({err.strerror}): decoding on every "
              "use", file=sys.stderr)
        return build()
    with _locked(npz.with_suffix(".lock")):
        found = _read(npz, manifest, key, print_) if manifest.is_file() and npz.is_file() else None
        if found is not None:  # another process built it while we waited
            return found
        arrays = build()
        manifest.unlink(missing_ok=True)  # from here until the new manifest is in place, no reader trusts the npz
        partial = npz.with_name(f".{npz.stem}.partial{os.getpid()}.npz")
        try:
            np.savez(partial, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds like allow_pickle
            meta = {"format": FORMAT, "key": key, "fingerprint": print_, "sha256": _sha256(partial),
                    "arrays": {k: list(v.shape) for k, v in arrays.items()}}
            os.replace(partial, npz)
            part_manifest = manifest.with_name(f".{manifest.name}.partial{os.getpid()}")
            part_manifest.write_text(json.dumps(meta, indent=1))
            os.replace(part_manifest, manifest)
        finally:
            partial.unlink(missing_ok=True)
        return arrays
