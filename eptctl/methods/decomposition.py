"""Decomposition (DePT): a short prompt P_s plus a low-rank offset H = alpha/sqrt(r) * A @ B of the input embeddings."""

from __future__ import annotations

import math

import torch
from torch import nn


class Decomposition(nn.Module):
    """Holds ``P_s [s, d]`` and, when ``rank > 0``, ``A [n, r]`` and ``B [r, d]``.

    ``B`` starts at zero so that ``E' = E`` at step 0 (DePT's init); ``A`` is Kaiming-uniform.
    """

    def __init__(self, init_prompt: torch.Tensor, max_length: int = 0, rank: int = 0, alpha: float = 1.0):
        super().__init__()
        self.prompt = nn.Parameter(init_prompt.detach().clone().float())  # [s, d]
        self.rank = rank
        self.scale = alpha / math.sqrt(rank) if rank else 0.0
        if rank:
            width = init_prompt.shape[1]
            self.lora_a = nn.Parameter(torch.empty(max_length, rank))  # A [n, r]
            nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
            self.lora_b = nn.Parameter(torch.zeros(rank, width))  # B [r, d]

    def offset(self) -> torch.Tensor | None:
        """The full offset ``H [n, d]``, or None for plain prompt tuning."""
        if not self.rank:
            return None
        return self.scale * (self.lora_a @ self.lora_b)
