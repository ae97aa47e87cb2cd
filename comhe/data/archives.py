"""Safe extraction of downloaded archives (tar, zip): nothing is written outside the target folder."""
from __future__ import annotations

import errno
import functools
from pathlib import Path
from typing import IO, Any, Callable, List, NoReturn, Optional, Tuple

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
            if hasattr(tarfile, "data_filter"):
                tar.extractall(to, members=members, filter="data")
            else:
                tar.extractall(to, members=members)
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


# --- a release: one folder, bounded, extracted aside and moved into place ----------------------------------------

DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EFBIG}
MAX_RATIO = 50  # declared size over compressed size: real data (floats, JPEGs) compresses < 5x, a zip bomb > 1,000x


# (name, size, compressed size or None, kind, opener) of one member
Member = Tuple[str, int, Optional[int], str, Callable[[], IO[bytes]]]


def _members(archive: Path) -> Tuple[Any, List[Member]]:
    """The open archive and ``(name, size, compressed size or None, kind, opener)`` of every member; ``kind``: file,
    dir or other."""
    import tarfile
    import zipfile
    out: List[Member] = []
    if zipfile.is_zipfile(archive):
        import stat
        zf = zipfile.ZipFile(archive)
        for info in zf.infolist():
            mode = info.external_attr >> 16
            kind_bits = stat.S_IFMT(mode)  # 0 when the zip records no type (zipfile.writestr): a plain file
            kind = "dir" if info.is_dir() else "file" if kind_bits in (0, stat.S_IFREG) else "other"
            out.append((info.filename, info.file_size, info.compress_size, kind,
                        functools.partial(zf.open, info)))
        return zf, out
    tar = tarfile.open(archive)

    def opener(member: tarfile.TarInfo) -> Callable[[], IO[bytes]]:
        def open_member() -> IO[bytes]:
            source = tar.extractfile(member)
            if source is None:  # (only regular files are opened: the kinds are checked first)
                raise ValueError(f"'{member.name}' is not a regular file")
            return source
        return open_member

    out = [(m.name, m.size, None, "file" if m.isfile() else "dir" if m.isdir() else "other", opener(m))
           for m in tar.getmembers()]
    return tar, out


def _relative(name: str, folder: str) -> Path:
    """The member's path inside ``folder`` (``folder/a/b`` -> ``a/b``), or ``ValueError`` naming why it may not be
    written: an absolute name, ``..``, a drive, or a place outside the release's own folder."""
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if name.startswith(("/", "\\")) or ":" in name or ".." in parts or not parts or parts[0] != folder:
        raise ValueError(f"'{name}' would be extracted to {name}, outside {folder}/, the release's own folder "
                         f"(unsafe member {name!r})")
    return Path(*parts[1:]) if len(parts) > 1 else Path(".")


def extract_release(archive: Path, root: Path, folder: str, max_members: int, max_bytes: int,
                    required: tuple = ()) -> Path:
    """Extract ``archive`` (tar or zip), whose every member lies in ``folder/``, to ``root/folder``; return it.

    Before anything is written, every member is checked: a regular file or folder inside ``folder/`` (no absolute
    name, no ``..``, no link or device), at most ``max_members`` of them, their declared sizes together at most
    ``max_bytes`` (what the release can be) and at most ``MAX_RATIO`` times their compressed size, and the disk has
    room for them. The members are then written, counting the bytes actually read (a member longer than declared is
    refused), into a fresh temporary folder inside ``root``; the ``required`` files are checked there; only then is
    the folder moved to ``root/folder`` (replacing an incomplete one there). Nothing else under ``root`` is created
    or replaced, and a refusal (``DatasetUnavailable``, one line) leaves ``root`` as it was."""
    import shutil
    import tempfile
    archive, root = Path(archive), Path(root)

    def refuse(why: str) -> NoReturn:
        raise DatasetUnavailable(f"{archive} was not extracted: {why}; delete it and download it again")

    try:
        handle, members = _members(archive)
    except Exception as err:  # noqa: BLE001 - zipfile/tarfile raise many types for a damaged archive
        refuse(f"not a readable archive ({type(err).__name__}: {err})")
    with handle:
        try:
            plan = [(_relative(name, folder), size, packed, kind, opener)
                    for name, size, packed, kind, opener in members]
        except ValueError as err:
            refuse(str(err))
        bad = [name for name, *_, kind, _ in members if kind == "other"]
        total = sum(size for _, size, *_ in plan)
        if bad:
            refuse(f"'{bad[0]}' is a link or a device, not a file")
        if len(plan) > max_members:
            refuse(f"{len(plan)} members, more than the {max_members} this release can have")
        if total > max_bytes:
            refuse(f"its members declare {total:,} bytes, more than the {max_bytes:,} this release can be")
        packed = sum(p for _, _, p, _, _ in plan if p is not None) if all(p is not None for *_, p, _, _ in plan) \
            else archive.stat().st_size
        if total > MAX_RATIO * packed + (1 << 20):
            refuse(f"its members declare {total:,} bytes from {packed:,} compressed (over {MAX_RATIO}x: a zip bomb)")
        root.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(root).free
        if total > free:
            refuse(f"it needs {total:,} bytes and {root} has {free:,} free")
        scratch = Path(tempfile.mkdtemp(prefix=f".{folder}.extracting-", dir=root))
        try:
            target = scratch / folder
            target.mkdir()
            for relative, size, _, kind, opener in plan:
                path = target / relative
                if kind == "dir":
                    path.mkdir(parents=True, exist_ok=True)
                    continue
                path.parent.mkdir(parents=True, exist_ok=True)
                written = 0
                with opener() as source, open(path, "wb") as out:
                    for block in iter(lambda: source.read(1 << 20), b""):
                        written += len(block)
                        if written > size:
                            refuse(f"'{relative}' holds more bytes than it declares ({size:,})")
                        out.write(block)
            missing = [name for name in required if not (target / name).is_file()]
            if missing:
                refuse(f"it holds no {folder}/{missing[0]}: not the {folder} release")
            final = root / folder
            if final.exists() or final.is_symlink():  # an incomplete earlier copy: replaced as a whole
                final.rename(scratch / "replaced")
            target.rename(final)
            return final
        except DatasetUnavailable:
            raise
        except Exception as err:  # noqa: BLE001 - a damaged member (CRC, truncated stream) or a full disk
            if isinstance(err, OSError) and err.errno in DISK_ERRNOS:
                raise  # the disk itself: an I/O error the command lines report as such (exit 2)
            refuse(f"{type(err).__name__}: {err}")
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
