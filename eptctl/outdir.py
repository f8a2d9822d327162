"""Folders eptctl writes for the user (export bundles, PEFT adapters): checked before any work, written whole.

The files go to a temp folder beside the target, are fsynced, and the folder is renamed into place, so a crash or a
full disk never leaves a half-written folder under the name a reader looks for.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

from eptctl.errors import EptctlError


def check_target(path: str | Path, force: bool = False) -> Path:
    """The target folder, or a one-line error: it must be new, empty, or replaced on purpose (``force``)."""
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
    when ``force`` (or when it is empty)."""
    from registry.store import fsync_dir  # the artifact store's durability step; imported here, not at CLI start

    path = check_target(path, force)
    parent = path.absolute().parent
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent))
    except OSError as err:
        raise EptctlError(f"cannot write to {path}: {err.strerror}", hint="choose a folder you can write to") from None
    old = None
    try:
        for name, data in files.items():
            with open(staging / name, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        staging.chmod(0o755)  # mkdtemp makes it private; an export is meant to be shared
        fsync_dir(staging)
        if path.exists():  # rename() cannot replace a non-empty folder: move the old one aside first
            old = parent / f".{path.name}.{uuid.uuid4().hex[:8]}.old"
            os.rename(path, old)
        os.rename(staging, path)
        fsync_dir(parent)
    except OSError as err:
        shutil.rmtree(staging, ignore_errors=True)
        if old is not None and not path.exists():
            os.rename(old, path)  # put the previous folder back rather than lose it
        raise EptctlError(f"cannot write to {path}: {err.strerror}",
                          hint="check the free space and permissions") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return path

