"""The EPT forward pass: a frozen backbone with its prompt source(s), and the inputs it runs the model on.

    source()                          -> PromptParts(P_r [s, d], H [n, d] or None, g [k] or None)
    PromptedModel(backbone, sources)(batch) -> PromptedInputs
        inputs_embeds   [b, S, d]  each row [P ; E + H[pos]], right-padded (S = longest s + text of the batch)
        attention_mask  [b, S]
        prompt_len      [b]        where each row's text starts
        prompt [s, d], text [b, L, d], text_mask [b, L]: the same inputs before the prompt is joined to the text

Every family's loss, label scoring and generation (``causal``, ``seq2seq``, ``encoder``) call this forward and then
only run the frozen model on what it returns; nothing else composes prompt, offset and text. The causal family's
shared prompt prefix runs ``prompt`` once and ``text`` after it, so the joined layout is built only when read.

``H[pos]``: each token's offset is the row of H at its position within its own text, so left and right padding give
the same result; pads, and answers appended for causal training, get none (generated tokens never have one).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import Protocol

import torch

from eptctl.core.errors import EptctlError
from eptctl.methods.prompt import PromptParts


class PromptSource(Protocol):
    """An EPTAdapter (training) or a MaterializedAdapter (inference): called, it returns its ``PromptParts``."""

    def __call__(self) -> PromptParts: ...


class PromptedInputs:
    """What :meth:`PromptedModel.forward` returns for a batch of ``b`` rows of ``L`` text columns.

    ``text`` [b, L, d] float32: E + H[pos]; ``text_mask`` [b, L]; ``prompts``: each source's P_r [s_a, d];
    ``index`` [b]: each row's source in a mixed-task batch, None with one source. The joined layout
    (``inputs_embeds`` in the backbone dtype, ``attention_mask``, ``prompt_len``) is computed on first read.
    """

    def __init__(self, text: torch.Tensor, text_mask: torch.Tensor, prompts: list[torch.Tensor],
                 index: torch.Tensor | None, dtype: torch.dtype):
        self.text = text
        self.text_mask = text_mask
        self.prompts = prompts
        self.index = index
        self.dtype = dtype

    @property
    def prompt(self) -> torch.Tensor | None:
        """[s, d] float: the prompt every row shares (one source); None in a mixed-task batch."""
        return self.prompts[0] if self.index is None else None

    @property
    def inputs_embeds(self) -> torch.Tensor:
        """[b, S, d] in the backbone dtype: each row ``[P ; E + H[pos]]``, right-padded."""
        return self._joined[0]

    @property
    def attention_mask(self) -> torch.Tensor:
        """[b, S]: ones over each row's prompt and text."""
        return self._joined[1]

    @property
    def prompt_len(self) -> torch.Tensor:
        """[b] long: each row's prompt rows, i.e. the index of its first text position."""
        return self._joined[2]

    @cached_property
    def _joined(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        text, mask = self.text, self.text_mask
        b = text.shape[0]
        if self.index is None:
            prompt = self.prompts[0]
            s = prompt.shape[0]
            embeds = torch.cat([prompt.unsqueeze(0).expand(b, -1, -1).to(text.dtype), text], dim=1)
            full_mask = torch.cat([mask.new_ones(b, s), mask], dim=1)
            prompt_len = torch.full((b,), s, dtype=torch.long, device=mask.device)
            return embeds.to(self.dtype), full_mask, prompt_len
        # Mixed-task batch: each row its own prompt (lengths may differ), still one backbone pass.
        index = self.index
        lengths = mask.sum(dim=1)
        prompt_len = torch.tensor([self.prompts[int(a)].shape[0] for a in index], device=mask.device)
        total = int((prompt_len + lengths).max())
        embeds = torch.zeros(b, total, text.shape[-1], device=mask.device)
        full_mask = torch.zeros(b, total, dtype=mask.dtype, device=mask.device)
        for i in range(b):
            s, n = int(prompt_len[i]), int(lengths[i])
            embeds[i, :s] = self.prompts[int(index[i])]
            embeds[i, s: s + n] = text[i, :n]
            full_mask[i, : s + n] = 1
        return embeds.to(self.dtype), full_mask, prompt_len


class PromptedModel:
    """A frozen ``Backbone`` with one prompt source, or several for a mixed-task batch (rows pick theirs through
    ``batch.adapter_index``). ``prompted(batch)`` is the EPT forward pass; see the module docstring."""

    def __init__(self, backbone, sources: Sequence[PromptSource]):
        self.backbone = backbone
        self.sources = list(sources)

    def __call__(self, batch) -> PromptedInputs:
        return self.forward(batch)

    def forward(self, batch) -> PromptedInputs:
        """``PromptedInputs`` of ``batch`` (a ``base.Batch``: ``input_ids`` [b, L], ``attention_mask`` [b, L],
        ``answer_start`` [b] or None, ``adapter_index`` [b] or None). Each source runs once per call.

        Raises ``EptctlError`` for several sources without ``adapter_index``, or for rows longer than an offset.
        """
        ids, mask = batch.input_ids, batch.attention_mask
        if len(self.sources) == 1:  # every row has the same prompt; adapter_index is not needed
            prompt, offset, _ = self.sources[0]()
            text = self._text_embeddings(ids, mask, offset, batch.answer_start)
            return PromptedInputs(text, mask, [prompt], None, self.backbone.dtype)
        index = batch.adapter_index
        if index is None:
            raise EptctlError("a mixed-task batch needs adapter_index", hint="collate with adapter_index=")
        parts = [source() for source in self.sources]
        text = torch.zeros(*ids.shape, self.backbone.width, device=ids.device)
        for a, (_, offset, _) in enumerate(parts):
            rows = (index == a).nonzero(as_tuple=True)[0]
            if len(rows):
                start = None if batch.answer_start is None else batch.answer_start[rows]
                text[rows] = self._text_embeddings(ids[rows], mask[rows], offset, start)
        return PromptedInputs(text, mask, [prompt for prompt, _, _ in parts], index, self.backbone.dtype)

    def _text_embeddings(self, input_ids: torch.Tensor, mask: torch.Tensor, offset: torch.Tensor | None,
                         answer_start: torch.Tensor | None = None) -> torch.Tensor:
        """[b, L, d] float: frozen token embeddings plus the offset H at each input token's position. Answer tokens
        appended for causal training (from ``answer_start`` on) get no offset: generated tokens never have one."""
        emb = self.backbone.model.get_input_embeddings()(input_ids).float()  # [b, L, d] frozen
        if offset is None:
            return emb
        inputs = mask
        if answer_start is not None:
            columns = torch.arange(mask.shape[1], device=mask.device)
            inputs = mask * (columns.unsqueeze(0) < answer_start.to(mask.device).unsqueeze(1))
        longest = int(inputs.sum(dim=1).max()) if inputs.numel() else 0
        if longest > offset.shape[0]:
            raise EptctlError(
                f"batch has {longest} input tokens but the adapter's offset covers {offset.shape[0]}",
                hint="inputs must be truncated to the adapter's max length",
            )
        pos = (inputs.cumsum(dim=1) - 1).clamp(min=0, max=offset.shape[0] - 1)  # each token's place in its text
        return emb + offset[pos] * inputs.unsqueeze(-1).to(emb.dtype)  # E' = E + H[pos]; pads, answers get nothing
