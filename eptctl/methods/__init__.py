"""The EPT method family: pt, dept and ept as switches of one module. Pure torch, no I/O."""

from eptctl.methods.budget import GROUPS, choose_short_and_rank, count_parameters
from eptctl.methods.config import METHODS, EPTConfig
from eptctl.methods.prompt import EPTAdapter, MaterializedAdapter, initial_prompt, prompt_length_of

__all__ = [
    "GROUPS",
    "METHODS",
    "EPTAdapter",
    "EPTConfig",
    "MaterializedAdapter",
    "choose_short_and_rank",
    "count_parameters",
    "initial_prompt",
    "prompt_length_of",
]
