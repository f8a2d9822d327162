"""The composed EPT prompt module and its materialized (servable) form.

``EPTAdapter.forward()`` is the adapter side of the EPT forward pass; the fusion, projection and mixture modules are
its steps, not forward passes of their own:
              P_s, A, B --(offset)--> H [n, d]
              P_s, H   --(fusion)---> P_f [s, d]
              P_f      --(spaces)---> P_r [s, d], gate g [k]
              P_r      --(mixture)--> P_r [s, d]   (transfer by attention only)
The backbone side, ``[P_r ; E + H[pos]]`` for a batch, is ``eptctl.backbones.prompted.PromptedModel.forward``.
Inference uses MaterializedAdapter: P_r, H and g computed once, no fusion or projection work per batch; calling it
returns the same ``PromptParts`` as calling the adapter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from eptctl.core.errors import EptctlError
from eptctl.methods.budget import GROUPS, count_parameters
from eptctl.methods.config import EPTConfig
from eptctl.methods.decomposition import Decomposition
from eptctl.methods.fusion import PromptFusion
from eptctl.methods.mixture import SourceMixture
from eptctl.methods.projection import MultiSpaceProjection


def prompt_length_of(cfg: EPTConfig) -> int:
    """s: the prompt rows the adapter prepends (the short length where there is an offset, else the full length)."""
    return cfg.short_length if cfg.has_offset else cfg.prompt_length


class PromptParts(NamedTuple):
    """What a prompt source (an ``EPTAdapter`` or a ``MaterializedAdapter``) returns when called; unpacks as a
    tuple ``prompt, offset, gate``."""

    prompt: torch.Tensor  # P_r [s, d]
    offset: torch.Tensor | None  # H [n, d]; None without a low-rank offset (pt)
    gate: torch.Tensor | None  # g [k]; None without projection


class EPTAdapter(nn.Module):
    """Every trainable tensor of one adapter: prompt, low-rank offset, fusion, projection + gate, optional head.

    ``adapter()`` (``forward``) composes them into ``PromptParts``; the backbone attaches those to a batch
    (``eptctl.backbones.prompted.PromptedModel``). Raises ``EptctlError`` when ``init_prompt`` is not [s, d].
    """

    def __init__(self, cfg: EPTConfig, width: int, init_prompt: torch.Tensor, num_labels: int | None = None):
        super().__init__()
        if cfg.has_offset and (cfg.short_length is None or cfg.rank is None):
            cfg = cfg.resolved(width)
        length = prompt_length_of(cfg)
        if tuple(init_prompt.shape) != (length, width):
            raise EptctlError(
                f"initial prompt has shape {tuple(init_prompt.shape)}, expected ({length}, {width})",
                hint="the init tensors must match the prompt length and the backbone width",
            )
        self.cfg = cfg
        self.width = width
        rank = cfg.rank if cfg.has_offset else 0
        self.decomposition = Decomposition(init_prompt, cfg.max_length, rank, cfg.alpha)
        self.fusion = PromptFusion(width, cfg.fusion_dim, cfg.fusion_heads) if cfg.uses_fusion else None
        self.projection = MultiSpaceProjection(width, cfg.spaces, cfg.space_rank) if cfg.uses_projection else None
        self.mixture = SourceMixture(width, cfg.source_prompts, length) if cfg.source_prompts else None
        self.head = nn.Linear(width, num_labels) if num_labels else None
        self.num_labels = num_labels

    # --- the forward pass --------------------------------------------------------------------------------------------
    def _reconstruct(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(P_r before any source mixture, H or None, gate or None): decomposition -> fusion -> projection."""
        prompt = self.decomposition.prompt
        offset = self.decomposition.offset()
        if self.fusion is not None:
            prompt = self.fusion(prompt, offset)
        gate = None
        if self.projection is not None:
            prompt, gate = self.projection(prompt)
        return prompt, offset, gate

    def forward(self) -> PromptParts:
        """The whole adapter-side computation: ``PromptParts(P_r [s, d], H [n, d] or None, gate [k] or None)``.

        It takes no batch: fusion keys are the offset, not the inputs, so the result is a function of the adapter
        alone and can be materialized."""
        prompt, offset, gate = self._reconstruct()
        if self.mixture is not None:
            prompt = self.mixture(prompt)
        return PromptParts(prompt, offset, gate)

    @torch.no_grad()
    def source_weights(self) -> list[float] | None:
        """Attention weights over the frozen source prompts (transfer by attention), or None."""
        if self.mixture is None:
            return None
        prompt, _, _ = self._reconstruct()
        return [float(w) for w in self.mixture.weights(prompt)]

    @torch.no_grad()
    def materialize(self) -> "MaterializedAdapter":
        """The forward pass computed once, detached: what the servable artifact stores."""
        prompt, offset, gate = self()
        return MaterializedAdapter(
            prompt=prompt.detach().clone(),
            offset=None if offset is None else offset.detach().clone(),
            gate=None if gate is None else gate.detach().clone(),
            head_weight=None if self.head is None else self.head.weight.detach().clone(),
            head_bias=None if self.head is None else self.head.bias.detach().clone(),
        )

    # --- parameters -------------------------------------------------------------------------------------------------
    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        groups: dict[str, list[nn.Parameter]] = {g: [] for g in GROUPS}
        groups["prompt"].append(self.decomposition.prompt)
        if self.decomposition.rank:
            groups["low_rank"] += [self.decomposition.lora_a, self.decomposition.lora_b]
        if self.fusion is not None:
            groups["fusion"] += list(self.fusion.parameters())
        if self.projection is not None:
            groups["projection"] += [self.projection.space_u, self.projection.space_v]
            groups["gate"] += list(self.projection.gate.parameters())
        if self.mixture is not None:
            groups["transfer"] += [self.mixture.attention, self.mixture.balance]
        if self.head is not None:
            groups["head"] += list(self.head.parameters())
        return groups

    def params_by_group(self) -> dict[str, int]:
        counts = {g: sum(p.numel() for p in ps) for g, ps in self.parameter_groups().items()}
        counts["total"] = sum(counts[g] for g in GROUPS)
        return counts

    def expected_params(self) -> dict[str, int]:
        return count_parameters(self.cfg, self.width, self.num_labels)


@dataclass
class MaterializedAdapter:
    """What inference needs, computed once: the reconstructed prompt, the full offset, the gate, the head."""

    prompt: torch.Tensor  # [s, d]
    offset: torch.Tensor | None = None  # [n, d]
    gate: torch.Tensor | None = None  # [k]
    head_weight: torch.Tensor | None = None  # [c, d]
    head_bias: torch.Tensor | None = None  # [c]

    def forward(self) -> PromptParts:
        """The stored ``PromptParts``: what ``EPTAdapter.forward`` returned when the adapter was materialized."""
        return PromptParts(self.prompt, self.offset, self.gate)

    __call__ = forward  # a prompt source is called, like the nn.Module it replaces at inference

    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(pooled, self.head_weight, self.head_bias)

    @property
    def has_head(self) -> bool:
        return self.head_weight is not None

    def to(self, device: torch.device | str) -> "MaterializedAdapter":
        moved = {k: (None if v is None else v.to(device)) for k, v in self.tensors().items()}
        return MaterializedAdapter(**moved)

    def tensors(self) -> dict[str, torch.Tensor]:
        names = ("prompt", "offset", "gate", "head_weight", "head_bias")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> "MaterializedAdapter":
        if "prompt" not in tensors:
            raise EptctlError("servable artifact has no 'prompt' tensor", hint="the file is not an eptctl adapter")
        return cls(**{k: tensors.get(k) for k in ("prompt", "offset", "gate", "head_weight", "head_bias")})


def initial_prompt(
    cfg: EPTConfig,
    embeddings: torch.Tensor,
    length: int,
    *,
    token_ids: list[int] | None = None,
    tensors: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    sample_from: int = 5000,
) -> torch.Tensor:
    """DePT's init: embeddings of real vocabulary tokens, sampled or from an init text; or given tensors."""
    if cfg.prompt_init == "tensors":
        if tensors is None:
            raise EptctlError("prompt init 'tensors' needs the tensors", hint="pass tensors=... or use vocab")
        return tensors.detach().float().clone()
    if cfg.prompt_init == "text":
        if not token_ids:
            raise EptctlError("--init-text produced no tokens", hint="give a non-empty --init-text")
        ids = [token_ids[i % len(token_ids)] for i in range(length)]  # repeat the text to fill the prompt
    else:
        # Frequent tokens (low ids in BPE vocabularies) make better starting points than rare ones (DePT/Lester).
        upper = min(sample_from, embeddings.shape[0])
        ids = torch.randint(0, upper, (length,), generator=generator).tolist()
    return embeddings[torch.tensor(ids)].detach().float().clone()
