"""Where eptctl keeps its state: ``$EPTCTL_HOME`` (default ``~/.eptctl``)."""

from __future__ import annotations

import os
from pathlib import Path

from eptctl.core.errors import EptctlError


def eptctl_home() -> Path:
    """The state folder (registry database, artifacts, model caches, run checkpoints), created if missing.

    Raises ``EptctlError`` if it is missing and cannot be created (a read-only file system, no permission)."""
    home = Path(os.environ.get("EPTCTL_HOME") or Path.home() / ".eptctl").expanduser()
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise EptctlError(f"cannot create the eptctl home {home}: {err.strerror}",
                          hint="set $EPTCTL_HOME to a writable folder") from None
    return home
