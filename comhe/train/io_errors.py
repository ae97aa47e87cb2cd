"""I/O errors of the disk during a run or a render (full, over quota, read-only, failing, file too large): one
``error:`` line and exit 2 from both command lines, never a traceback. A run stopped this way resumes from its last
checkpoint when the same command is run again (checkpoints and records are written aside and renamed into place, so
a failed write leaves the previous ones whole)."""
from __future__ import annotations

import errno
from typing import Optional

# ENOSPC: disk full; EDQUOT: over quota; EIO: a failing disk or network share; EROFS: remounted read-only;
# EFBIG: a file over the size limit (RLIMIT_FSIZE, the file system's own).
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EFBIG})
RESUME = "free space (or fix the disk) and rerun the same command: finished runs are kept, the others resume"


class DiskFailure(Exception):
    """A run stopped on a disk error (``disk_error``'s line); raised by the suite once its runs have stopped."""


def disk_error(err: BaseException) -> Optional[str]:
    """The one line for a disk ``OSError`` (``DISK_ERRNOS``), or None for any other error."""
    if not isinstance(err, OSError) or err.errno not in DISK_ERRNOS:
        return None
    where = f" writing {err.filename}" if err.filename else ""
    return f"I/O error{where}: {err.strerror or err}; {RESUME}"
