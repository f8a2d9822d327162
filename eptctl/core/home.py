"""Where eptctl keeps its state: ``$EPTCTL_HOME`` (default ``~/.eptctl``), and the model cache that every home on
the machine shares: ``$EPTCTL_MODELS`` (default ``$XDG_CACHE_HOME/eptctl/models``, i.e. ``~/.cache/eptctl/models``,
as Hugging Face keeps its hub cache under ``~/.cache/huggingface``)."""

from __future__ import annotations

import os
from pathlib import Path

from eptctl.core.errors import EptctlError


def _folder(path: Path, variable: str, what: str) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise EptctlError(f"cannot create the {what} {path}: {err.strerror}",
                          hint=f"set ${variable} to a writable folder") from None
    return path


def eptctl_home() -> Path:
    """The state folder (registry database, artifacts, run checkpoints), created if missing.

    Raises ``EptctlError`` if it is missing and cannot be created (a read-only file system, no permission)."""
    home = Path(os.environ.get("EPTCTL_HOME") or Path.home() / ".eptctl").expanduser()
    return _folder(home, "EPTCTL_HOME", "eptctl home")


def models_dir(create: bool = True) -> Path:
    """The machine's cache of converted models, shared by every ``$EPTCTL_HOME``: ``$EPTCTL_MODELS``, else
    ``$XDG_CACHE_HOME/eptctl/models`` (``~/.cache/eptctl/models``). Created if missing and ``create``; raises
    ``EptctlError`` when it cannot be."""
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    path = Path(os.environ.get("EPTCTL_MODELS") or Path(cache) / "eptctl" / "models").expanduser()
    return _folder(path, "EPTCTL_MODELS", "model cache") if create else path
