"""Choosing the next token of rows that each decode with their own settings (a serving batch mixes requests).

Every row has a temperature (0: greedy), a top-k (0: all tokens), a nucleus top-p and a uniform number drawn from the
row's own generator, so a row's choice depends on its logits and its seed only, never on the rows beside it. The
order of the filters is the one Hugging Face's ``generate`` applies (temperature, then top-k, then top-p on what
top-k kept; ``TopKLogitsWarper``, ``TopPLogitsWarper``): nucleus sampling keeps the smallest set of most likely
tokens whose probability reaches ``top_p`` (Holtzman et al. 2020, "The Curious Case of Neural Text Degeneration").
The draw is inverse-transform sampling: the first token whose cumulative probability exceeds ``u * total``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RowSettings:
    """Per-row decoding settings as device tensors: ``temperature`` [b] float (0: greedy), ``top_k`` [b] long
    (0: every token), ``top_p`` [b] float in (0, 1], ``uniform`` [b] float in [0, 1) (this step's draw per row).
    ``sampled``: whether any row samples (a host bool: all-greedy batches skip the sort)."""

    temperature: torch.Tensor
    top_k: torch.Tensor
    top_p: torch.Tensor
    uniform: torch.Tensor
    sampled: bool


def choose(logits: torch.Tensor, rows: RowSettings) -> torch.Tensor:
    """[b] token ids chosen from ``logits`` [b, V] (float32) under each row's settings; greedy rows take the arg-max."""
    greedy = logits.argmax(dim=-1)
    if not rows.sampled:
        return greedy
    scores = logits / rows.temperature.clamp(min=1e-6).unsqueeze(1)
    ordered, order = scores.sort(dim=-1, descending=True)  # [b, V] best first
    ranks = torch.arange(ordered.shape[1], device=ordered.device).unsqueeze(0)
    k = rows.top_k.unsqueeze(1)
    ordered = ordered.masked_fill((k > 0) & (ranks >= k), float("-inf"))
    probs = torch.softmax(ordered, dim=-1)
    before = probs.cumsum(dim=-1) - probs  # mass of the better tokens: keep a token while that is below top_p
    probs = probs * (before < rows.top_p.unsqueeze(1))
    cdf = probs.cumsum(dim=-1)
    target = (rows.uniform * cdf[:, -1]).unsqueeze(1)
    pick = torch.searchsorted(cdf, target, right=True).clamp(max=cdf.shape[1] - 1)
    sampled = order.gather(1, pick).squeeze(1)
    return torch.where(rows.temperature > 0, sampled, greedy)


def logprobs(logits: torch.Tensor, chosen: torch.Tensor, top: int) -> tuple[torch.Tensor, torch.Tensor | None,
                                                                             torch.Tensor | None]:
    """Raw log-probabilities (log-softmax of ``logits`` [b, V] before any temperature, as vLLM reports them):
    ``(chosen [b], top values [b, top] or None, top ids [b, top] or None)``, the alternatives best first."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    picked = logp.gather(1, chosen.unsqueeze(1)).squeeze(1)
    if top < 1:
        return picked, None, None
    values, ids = logp.topk(min(top, logp.shape[1]), dim=-1)
    return picked, values, ids
