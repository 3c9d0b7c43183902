"""Writing files so that a failed or interrupted write leaves the old file or the new one, never a part."""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from loramix.errors import OutputError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it onto `path`, on any failure remove it.

    The temporary file is created (empty, honouring the umask) before the caller writes to it, so an
    unwritable destination fails here, before any work is done.
    """
    target = Path(path)
    if target.is_dir():
        raise OutputError(f"{target}: is a directory, not a file")
    folder = target.parent
    if not folder.is_dir():
        raise OutputError(f"{target}: folder {folder} does not exist")
    _remove_leftovers_of_dead_writers(target)
    temp = folder / f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        temp.open("xb").close()
    except OSError as e:
        raise OutputError(f"{target}: cannot write there ({e.strerror})") from None
    mode = temp.stat().st_mode  # what the umask gives a new file; some writers (safetensors) recreate it 0600
    try:
        yield temp
        os.chmod(temp, mode)
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _remove_leftovers_of_dead_writers(target: Path) -> None:
    """A writer killed outright (SIGKILL, power loss) leaves its `.NAME.PID.HEX.tmp` behind; the next write
    of NAME removes those whose process is gone. A live one may still be writing, so it stays."""
    prefix = f".{target.name}."
    for leftover in target.parent.glob(f"{glob.escape(prefix)}*.tmp"):
        pid = leftover.name[len(prefix):].split(".")[0]
        if pid.isdigit() and not _running(int(pid)):
            leftover.unlink(missing_ok=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it takes `path`'s place (an old folder there is
    removed only once the new one is complete), on any failure it is removed."""
    import shutil

    target = Path(path)
    if target.exists() and not target.is_dir():
        raise OutputError(f"{target}: is a file, not a folder")
    if not target.parent.is_dir():
        raise OutputError(f"{target}: folder {target.parent} does not exist")
    temp = target.parent / f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        temp.mkdir()
    except OSError as e:
        raise OutputError(f"{target}: cannot write there ({e.strerror})") from None
    try:
        yield temp
        if target.exists():
            old = target.parent / f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.old"
            os.replace(target, old)
            os.replace(temp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(temp, target)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
