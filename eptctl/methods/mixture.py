"""Attention over frozen source prompts (ATTEMPT-style transfer), at task level so it stays materializable.

a = softmax((mean_rows(P) W) · (mean_rows(P_j) W)ᵀ / sqrt(m_a))   over the t frozen source prompts P_j [s, d]
P_out = (1 - β) P + β Σ_j a_j P_j,   β = sigmoid(b), b = 0 at init (an even blend)
Only W [d, m_a] and b are trained; the sources are buffers saved with the adapter, so it is self-contained.
"""

from __future__ import annotations

import math

import torch
from torch import nn

MIXTURE_DIM = 16


class SourceMixture(nn.Module):
    def __init__(self, width: int, sources: int, length: int):
        super().__init__()
        self.register_buffer("sources", torch.zeros(sources, length, width))  # filled by load_state_dict
        self.attention = nn.Parameter(torch.empty(width, MIXTURE_DIM))
        nn.init.normal_(self.attention, std=1.0 / math.sqrt(width))
        self.balance = nn.Parameter(torch.zeros(()))

    def weights(self, prompt: torch.Tensor) -> torch.Tensor:
        query = prompt.mean(dim=0) @ self.attention  # [m_a]
        keys = self.sources.mean(dim=1) @ self.attention  # [t, m_a]
        return torch.softmax(keys @ query / math.sqrt(MIXTURE_DIM), dim=0)  # [t]

    def forward(self, prompt: torch.Tensor) -> torch.Tensor:
        """P_r [s, d] -> [s, d] blended with the sources: the last step of ``EPTAdapter.forward``."""
        mixed = torch.einsum("t,tsd->sd", self.weights(prompt), self.sources)
        beta = torch.sigmoid(self.balance)
        return (1 - beta) * prompt + beta * mixed
