"""Files eptctl writes for the user (plots, reports): checked before any work, written atomically."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from eptctl.errors import EptctlError


def check_writable(path: str | Path, suffixes: tuple[str, ...] = ()) -> Path:
    """The output path, resolved, or a one-line error; called before the (slow) rendering starts."""
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
    """Temp file in the same folder, fsync, rename: a crash or a full disk never leaves a partial file where a good
    one was."""
    path = check_writable(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise EptctlError(f"cannot write {path}: {err.strerror}", hint="choose a path you can write to") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes 0600; keep the mode of the file replaced, else the usual one of a shared document
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise EptctlError(f"cannot write {path}: {err.strerror}", hint="check the free space and permissions") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
