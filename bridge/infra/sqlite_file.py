"""What the journal and the settings file share: a SQLite file someone may delete or replace underneath.

Each keeps the (device, inode) of the file it opened, notices when the path no longer names it,
moves a foreign file aside (with its -wal/-shm) and writes what it holds into a fresh file.
"""

from __future__ import annotations

import contextlib
import os
import time


def reason(exc: BaseException) -> str:
    """An OS or SQLite error as the short text a log line or a one-line error carries."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def identity(path: str) -> tuple[int, int] | None:
    """Which file `path` names now (device, inode), or None when there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def set_aside(path: str) -> str:
    """`path` no longer names the file we opened: move a foreign one aside; what happened, for the log.

    OSError when a foreign file cannot be moved.
    """
    if identity(path) is None:
        return "deleted"
    foreign = f"{path}.replaced-{int(time.time())}"
    os.replace(path, foreign)
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(OSError):
            os.replace(path + suffix, foreign + suffix)
    return f"replaced (the other file was moved to {foreign})"
