"""The EPT method family: pt, dept and ept as switches of one module. Pure torch, no I/O; may import only
``eptctl.core``.

The config and the budget rule are importable without torch (the CLI builds its options from them); the modules load
on first use.
"""

from eptctl.methods.budget import GROUPS, choose_short_and_rank, count_parameters
from eptctl.methods.config import METHODS, EPTConfig

_LAZY = {"EPTAdapter", "MaterializedAdapter", "PromptParts", "initial_prompt", "prompt_length_of"}

__all__ = ["GROUPS", "METHODS", "EPTConfig", "choose_short_and_rank", "count_parameters", *sorted(_LAZY)]


def __getattr__(name: str):
    if name in _LAZY:
        from eptctl.methods import prompt

        return getattr(prompt, name)
    raise AttributeError(f"module 'eptctl.methods' has no attribute {name!r}")
