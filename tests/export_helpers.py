"""The CIFAR-10 JPEG export beside the checkout (``../shared/data/cifar10-images/``), for the tests that read it.

It is extracted and decoded once per test session into a temporary data root (about 10 s on an idle core), shared by
every test that asks for it; absent, those tests skip with the reason.
"""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-images" / "cifar10-images.tar.xz"
_ROOT = {}


def export_root(tmp_path_factory) -> Path:
    """A data root holding the extracted export and its decoded cache (built on the first call of the session)."""
    if not ARCHIVE.is_file():
        pytest.skip(f"the CIFAR-10 JPEG export is not beside the checkout ({ARCHIVE} absent)")
    if "root" not in _ROOT:
        from comhe import data
        root = tmp_path_factory.mktemp("cifar10-export")
        data.build("cifar10_jpeg_export", root=root, archive=str(ARCHIVE))  # extracts and decodes both splits
        _ROOT["root"] = root
    return _ROOT["root"]
