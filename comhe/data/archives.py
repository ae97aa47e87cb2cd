"""Safe extraction of downloaded archives: nothing is written outside the target folder."""
from __future__ import annotations

from pathlib import Path

from .bundle import DatasetUnavailable


def extract_tar(archive: Path, to: Path) -> None:
    """Extract a tar archive into ``to``, refusing it whole if any member would land outside ``to`` (absolute
    path, ``..``, a link pointing out) or is a device: Python's ``filter="data"`` checks, applied to every member
    before anything is written. torchvision's ``extract_archive`` calls ``extractall`` unfiltered, which on Python <
    3.14 writes wherever the member names say.
    """
    import tarfile
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member, to)
            tar.extractall(to, members=members, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    except (tarfile.TarError, ValueError) as err:
        raise DatasetUnavailable(f"{archive} was not extracted: {err}; delete it and download it again") from None


def _check_member(member, to: Path) -> None:
    import tarfile
    if hasattr(tarfile, "data_filter"):  # Python >= 3.12, 3.11.4, 3.10.12, 3.9.17
        tarfile.data_filter(member, str(to))  # raises tarfile.FilterError (a TarError) naming the member
        return
    target = (to / member.name).resolve()  # older Pythons: regular files and folders inside ``to`` only
    if not (member.isfile() or member.isdir()) or not target.is_relative_to(to.resolve()):
        raise ValueError(f"unsafe member {member.name!r}")
