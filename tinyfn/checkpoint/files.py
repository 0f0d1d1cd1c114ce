"""The files around a checkpoint: :func:`atomic_write`, which :func:`~tinyfn.checkpoint.save`
writes with, and its details: permissions, the machine's name in temporary file names, the
removal of temporary files that killed saves left, and syncing the folder after the rename."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import secrets
import stat

_O_BINARY = getattr(os, "O_BINARY", 0)  # Windows: no newline translation
# The machine's short name, as it appears in temporary file names (letters, digits, "-")
_HOST = re.sub(r"[^A-Za-z0-9-]", "", platform.node().split(".")[0])[:32] or "host"


def atomic_write(path, write) -> None:
    """Make the file ``path`` hold what ``write(f)`` writes to the binary file ``f``, atomically.

    What :func:`~tinyfn.checkpoint.save` does with a checkpoint's bytes, for any file format
    (tinyfn.export writes its files with it): ``write`` fills a temporary file
    ``.NAME.HOST.PID.RANDOM.tmp`` beside ``path``, which is flushed, fsynced and renamed to
    ``path``. If ``write`` raises or the process is interrupted, ``path`` keeps its previous
    content and the temporary file is removed (a killed process's is removed by the next
    write of ``path`` on this machine). An existing file's permission bits are kept, and a
    symbolic link is written through to the file it names.
    """
    target = os.path.realpath(path)
    folder, name = os.path.split(target)
    _remove_stale_temporaries(folder, name)
    mode = _permission_bits(target)
    temporary = os.path.join(folder, f".{name}.{_HOST}.{os.getpid()}.{secrets.token_hex(6)}.tmp")
    # created private when it will get an existing file's mode, so it is never wider in between
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_BINARY, 0o666 if mode is None else 0o600)
    try:
        with open(fd, "wb") as f:
            if mode is not None:
                os.chmod(temporary, mode)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        raise
    _fsync_folder(folder)


def _permission_bits(path: str) -> int | None:
    """The permission bits of the file ``path``, or None if there is none."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode) & 0o777
    except FileNotFoundError:
        return None


def _remove_stale_temporaries(folder: str, name: str) -> None:
    """Delete the temporary files that saves of ``name`` on this machine left behind when their
    process was killed: ``.NAME.HOST.PID.RANDOM.tmp`` whose process PID no longer runs. Files
    of running processes, and of other machines sharing the folder, stay. Best effort: a file
    that cannot be removed is left."""
    if os.name != "posix":  # on Windows, os.kill(pid, 0) would end the process, not probe it
        return
    pattern = re.compile(rf"\.{re.escape(name)}\.{re.escape(_HOST)}\.([1-9][0-9]{{0,9}})\.[0-9a-f]{{12}}\.tmp")
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for entry in entries:
            match = pattern.fullmatch(entry.name)
            if match and entry.is_file(follow_symlinks=False) and not _running(int(match[1])):
                with contextlib.suppress(OSError):
                    os.remove(entry.path)


def _running(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine (POSIX)."""
    try:
        os.kill(pid, 0)  # signal 0 only checks that the process exists
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # it exists, and belongs to someone else
        return True
    return True


def _fsync_folder(folder: str) -> None:
    """Make the rename itself durable (POSIX; Windows cannot open a folder for syncing)."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
