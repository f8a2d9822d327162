"""What a launcher (``torchrun``, ``accelerate launch``) tells a process through its environment."""

from __future__ import annotations

import os

LAUNCH_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")  # what torchrun (and accelerate launch) set


def launched() -> bool:
    """Whether a launcher started this process as one rank of a group."""
    return all(k in os.environ for k in LAUNCH_ENV)


def local_rank() -> int:
    """This process's index on its node (0 without a launcher)."""
    return int(os.environ.get("LOCAL_RANK", "0"))
