"""Safe extraction of downloaded archives (tar, zip): nothing is written outside the target folder."""
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


def extract_zip(archive: Path, to: Path) -> None:
    """Extract a zip archive into ``to``, refusing it whole if any member would land outside ``to`` (absolute path,
    ``..``, a drive letter) or is a symbolic link: every member is checked before anything is written (``zipfile``
    itself strips such names silently instead of refusing, and an archive that needs it is not the one we expect)."""
    import stat
    import zipfile
    to = Path(to)
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            root = to.resolve()
            for member in members:
                name = member.filename
                target = (to / name).resolve()
                if (name.startswith(("/", "\\")) or ":" in name or ".." in Path(name).parts
                        or not (target == root or target.is_relative_to(root))):
                    raise ValueError(f"unsafe member {name!r} (outside the target folder)")
                if stat.S_ISLNK(member.external_attr >> 16):
                    raise ValueError(f"unsafe member {name!r} (a symbolic link)")
            zf.extractall(to, members=members)
    except (zipfile.BadZipFile, ValueError, OSError) as err:
        raise DatasetUnavailable(f"{archive} was not extracted: {err}; delete it and download it again") from None
