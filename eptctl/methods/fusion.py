"""Prompt fusion: the short prompt attends over the rows of the task-level offset H and adds what it reads.

P_f = P_s + softmax(Q K^T / sqrt(d_a)) V W_o, with Q = P_s W_q, K = H W_k, V = H W_v (per head).
Keys are the offset, not the batch, so the fused prompt is a function of the adapter alone and can be materialized.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class PromptFusion(nn.Module):
    def __init__(self, width: int, fusion_dim: int, heads: int = 1):
        super().__init__()
        self.fusion_dim = fusion_dim
        self.heads = heads
        if fusion_dim:
            # No biases: with B = 0 at init, H = 0 makes V = 0 exactly, so P_f = P_s at step 0.
            self.w_q = nn.Linear(width, fusion_dim, bias=False)
            self.w_k = nn.Linear(width, fusion_dim, bias=False)
            self.w_v = nn.Linear(width, fusion_dim, bias=False)
            self.w_o = nn.Linear(fusion_dim, width, bias=False)  # not zero: B = 0 already zeroes the branch
        else:
            # Parameter-free attention; one learned scalar so the branch can be weighed (starts at 1, not 0,
            # since 0 together with H = 0 would leave both without gradient).
            self.out_scale = nn.Parameter(torch.ones(()))

    def forward(self, prompt: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        """P_s [s, d], H [n, d] -> P_f [s, d]: one step of ``EPTAdapter.forward``, not a forward pass of its own."""
        if not self.fusion_dim:
            attn = torch.softmax(prompt @ offset.T / math.sqrt(prompt.shape[-1]), dim=-1)  # [s, n]
            return prompt + self.out_scale * (attn @ offset)
        s, n, h = prompt.shape[0], offset.shape[0], self.heads
        q = self.w_q(prompt).view(s, h, -1).transpose(0, 1)  # [h, s, d_a/h]
        k = self.w_k(offset).view(n, h, -1).transpose(0, 1)  # [h, n, d_a/h]
        v = self.w_v(offset).view(n, h, -1).transpose(0, 1)  # [h, n, d_a/h]
        attn = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(q.shape[-1]), dim=-1)  # [h, s, n]
        read = (attn @ v).transpose(0, 1).reshape(s, self.fusion_dim)  # [s, d_a]
        return prompt + self.w_o(read)
