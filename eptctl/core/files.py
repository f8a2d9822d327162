"""The one way eptctl writes a file or a folder: atomically and durably.

Every writer in the project goes through :func:`write_bytes_atomic` (a file) or :func:`staged_folder` (a folder):
the bytes go to a temp name in the same folder, are fsynced, renamed over the target, and the folder is fsynced, so
a crash or a full disk never leaves a partial file or folder under the name a reader looks for, and the rename
survives a power cut. The user-facing helpers (:func:`write_atomic`, :func:`write_folder`) check the target before
any slow work starts and turn OS errors into one-line :class:`~eptctl.core.errors.EptctlError` messages.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from eptctl.core.errors import EptctlError


def fsync_dir(path: str | Path) -> None:
    """Make a rename in folder ``path`` durable: it survives a power cut only once the folder itself is synced."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes_atomic(path: str | Path, data: bytes, *, tmp_prefix: str | None = None, tmp_suffix: str = ".tmp",
                       mode: int | None = None) -> Path:
    """Write ``data`` to ``path``: temp file in the same folder, fsync, rename, fsync of the folder.

    ``mode`` sets the file's permission bits (``mkstemp`` makes 0600); ``tmp_prefix`` names the temp file (the
    artifact store's garbage collector recognises its own by prefix). Raises ``OSError`` as the OS reports it; the
    temp file is removed on any failure, and the previous file at ``path`` stays intact.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=tmp_prefix if tmp_prefix is not None else f".{path.name}.",
                               suffix=tmp_suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)  # atomic: readers see the old file or the whole new one, never a part
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


@contextmanager
def staged_folder(path: str | Path, *, replace: bool = False, mode: int = 0o755) -> Iterator[Path]:
    """Yield a staging folder beside ``path``; fill it, and on a clean exit it becomes ``path`` whole.

    Every file in the staging folder is fsynced, then the folder is renamed into place and the parent fsynced. An
    existing ``path`` is moved aside first and removed only after the rename when ``replace`` is true (it is put back
    if the rename fails); otherwise an existing ``path`` makes the staged copy be discarded (another writer won the
    race) and ``FileExistsError`` is raised. On any error the staging folder is removed. Raises ``OSError``.
    """
    path = Path(path)
    parent = path.absolute().parent
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent))
    old = None
    try:
        yield staging
        for item in sorted(staging.rglob("*")):
            if item.is_file():
                with open(item, "rb+") as f:
                    os.fsync(f.fileno())
        staging.chmod(mode)  # mkdtemp makes it private; these folders are meant to be shared
        fsync_dir(staging)
        if path.exists():
            if not replace:
                raise FileExistsError(path)
            old = parent / f".{path.name}.{uuid.uuid4().hex[:8]}.old"  # rename() cannot replace a non-empty folder
            os.rename(path, old)
        os.rename(staging, path)
        fsync_dir(parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if old is not None and not path.exists():
            os.rename(old, path)  # put the previous folder back rather than lose it
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_only_reason(path: str | Path) -> str | None:
    """Why ``path`` (a file or a folder; if missing, the nearest folder that would hold it) cannot be written, as a
    phrase for an error message, or None if it can. ``os.access`` sees a read-only file system even for root."""
    probe = Path(path).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if os.access(probe, os.W_OK):
        return None
    return f"{probe} is on a read-only file system" if on_read_only_fs(probe) else \
        f"{probe} is not writable (permission denied)"


def on_read_only_fs(path: str | Path) -> bool:
    """True if ``path`` (which exists) lies on a file system mounted read-only: no process can change it."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


# --- files and folders a user names (plots, reports, exports) -----------------------------------------------------
def check_writable(path: str | Path, suffixes: tuple[str, ...] = ()) -> Path:
    """The output file path, resolved, or a one-line error; called before the (slow) rendering starts.

    Raises ``EptctlError`` when ``path`` is a folder, has another suffix than ``suffixes``, lies in a missing folder,
    or cannot be written.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise EptctlError(f"cannot write {path}: it is a folder", hint="name a file inside it")
    if suffixes and path.suffix.lower() not in suffixes:
        raise EptctlError(f"cannot write {path}: the file name must end in {' or '.join(suffixes)}",
                          hint=f"e.g. --out {path.with_suffix(suffixes[0]).name}")
    parent = path.parent
    if not parent.is_dir():
        raise EptctlError(f"cannot write {path}: folder {parent} does not exist", hint="create the folder first")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise EptctlError(f"cannot write {path}: permission denied", hint="choose a path you can write to")
    return path


def write_atomic(path: str | Path, data: bytes) -> Path:
    """Write a user's output file atomically (see :func:`write_bytes_atomic`); keeps the mode of a file it replaces.

    Raises ``EptctlError`` (one line, with a hint) for a bad target or an OS error such as a full disk.
    """
    path = check_writable(path)
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    try:
        return write_bytes_atomic(path, data, mode=mode)
    except OSError as err:
        raise EptctlError(f"cannot write {path}: {err.strerror}", hint="check the free space and permissions") from None


def check_target(path: str | Path, force: bool = False) -> Path:
    """The target folder, or a one-line error: it must be new, empty, or replaced on purpose (``force``).

    Raises ``EptctlError`` when ``path`` is a file, a non-empty folder without ``force``, lies in a missing folder,
    or cannot be written.
    """
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise EptctlError(f"cannot write to {path}: it is a file", hint="name a new folder")
    if path.is_dir() and any(path.iterdir()) and not force:
        raise EptctlError(f"{path} is not empty", hint="name a new folder, or pass --force to replace this one")
    parent = path.absolute().parent
    if not parent.is_dir():
        raise EptctlError(f"cannot write to {path}: folder {parent} does not exist", hint="create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise EptctlError(f"cannot write to {path}: permission denied", hint="choose a folder you can write to")
    return path


def write_folder(path: str | Path, files: dict[str, bytes], force: bool = False) -> Path:
    """Write ``files`` (name -> bytes) as the whole content of folder ``path``; an existing folder is replaced only
    when ``force`` (or when it is empty). Raises ``EptctlError`` for a bad target or an OS error."""
    path = check_target(path, force)
    try:
        with staged_folder(path, replace=True) as staging:
            for name, data in files.items():
                (staging / name).write_bytes(data)
    except OSError as err:
        raise EptctlError(f"cannot write to {path}: {err.strerror}",
                          hint="check the free space and permissions") from None
    return path
