"""Where eptctl keeps its state: ``$EPTCTL_HOME`` (default ``~/.eptctl``)."""

from __future__ import annotations

import os
from pathlib import Path


def eptctl_home() -> Path:
    """The state folder (registry database, artifacts, model caches, run checkpoints), created if missing."""
    home = Path(os.environ.get("EPTCTL_HOME") or Path.home() / ".eptctl").expanduser()
    home.mkdir(parents=True, exist_ok=True)
    return home
