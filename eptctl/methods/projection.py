"""Multi-space projection: k low-rank maps f_i(X) = X U_i V_i, mixed by a gate that sees only the prompt.

g = softmax(W_g mean_rows(P_f) + b_g) in R^k;  P_r = P_f + sum_i g_i f_i(P_f).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class MultiSpaceProjection(nn.Module):
    def __init__(self, width: int, spaces: int, space_rank: int):
        super().__init__()
        self.space_u = nn.Parameter(torch.empty(spaces, width, space_rank))  # U [k, d, m]
        nn.init.normal_(self.space_u, std=1.0 / math.sqrt(width))
        self.space_v = nn.Parameter(torch.zeros(spaces, space_rank, width))  # V [k, m, d]; zero: P_r = P_f at init
        self.gate = nn.Linear(width, spaces)  # W_g [k, d], b_g [k]
        nn.init.zeros_(self.gate.weight)  # uniform mixture at init
        nn.init.zeros_(self.gate.bias)

    def gate_weights(self, fused: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.gate(fused.mean(dim=0)), dim=-1)  # [k]

    def forward(self, fused: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """P_f [s, d] -> (P_r [s, d], gate [k]): one step of ``EPTAdapter.forward``, not a forward pass of its own."""
        gate = self.gate_weights(fused)
        per_space = torch.einsum("sd,kdm,kme->kse", fused, self.space_u, self.space_v)  # [k, s, d]
        return fused + torch.einsum("k,kse->se", gate, per_space), gate
