"""The digest of a file, read in blocks (run-record seals, the decoded-image cache, downloaded releases).
Standard library only: importable before torch, from every layer."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Union

BLOCK = 1 << 22  # 4 MiB reads: a release of hundreds of MB never sits in memory whole


def file_digest(path: Union[str, Path], algorithm: str = "sha256") -> str:
    """Hex digest of ``path``'s bytes under ``algorithm`` (any ``hashlib`` name: ``sha256``, ``md5``)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()
