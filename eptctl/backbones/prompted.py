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
                 index: torch.Tensor | None, dtype: torch.dtype, rows=None):
        self.text = text
        self.text_mask = text_mask
        self.prompts = prompts
        self.index = index
        self.dtype = dtype
        self.rows = rows  # base.HostRows of the batch: host ints for the mixed layout (read from the mask if None)

    @property
    def prompt_lengths(self) -> list[int]:
        """[b] host ints: each row's prompt rows (``prompt_len`` without reading the device)."""
        b = self.text.shape[0]
        if self.index is None:
            return [self.prompts[0].shape[0]] * b
        sources = self.rows.sources if self.rows is not None else self.index.tolist()
        return [self.prompts[a].shape[0] for a in sources]

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
        # Host ints from collate: the per-row copies below slice with Python numbers, never read the device.
        lengths = self.rows.lengths if self.rows is not None else mask.sum(dim=1).tolist()
        sources = self.rows.sources if self.rows is not None else self.index.tolist()
        prompt_lengths = self.prompt_lengths
        total = max(s + n for s, n in zip(prompt_lengths, lengths))
        embeds = torch.zeros(b, total, text.shape[-1], device=mask.device)
        full_mask = torch.zeros(b, total, dtype=mask.dtype, device=mask.device)
        for i, (a, s, n) in enumerate(zip(sources, prompt_lengths, lengths)):
            embeds[i, :s] = self.prompts[a]
            embeds[i, s: s + n] = text[i, :n]
            full_mask[i, : s + n] = 1
        prompt_len = torch.tensor(prompt_lengths).to(mask.device, non_blocking=True)
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
            longest = max(batch.rows().inputs, default=0) if offset is not None else 0
            text = self._text_embeddings(ids, mask, offset, batch.answer_start, longest)
            return PromptedInputs(text, mask, [prompt], None, self.backbone.dtype, batch.rows())
        index = batch.adapter_index
        if index is None:
            raise EptctlError("a mixed-task batch needs adapter_index", hint="collate with adapter_index=")
        rows = batch.rows()
        parts = [source() for source in self.sources]
        text = torch.zeros(*ids.shape, self.backbone.width, device=ids.device)
        for a, (_, offset, _) in enumerate(parts):
            mine = [n for n, k in zip(rows.inputs, rows.sources) if k == a]
            if mine:
                # Every row through this source's offset, kept where the row is this source's: a mask, not a
                # nonzero; rows are independent, so each kept row is what its own sub-batch gave.
                own = self._text_embeddings(ids, mask, offset, batch.answer_start, max(mine))
                text = torch.where((index == a).view(-1, 1, 1), own, text)
        return PromptedInputs(text, mask, [prompt for prompt, _, _ in parts], index, self.backbone.dtype, rows)

    def _text_embeddings(self, input_ids: torch.Tensor, mask: torch.Tensor, offset: torch.Tensor | None,
                         answer_start: torch.Tensor | None, longest: int) -> torch.Tensor:
        """[b, L, d] float: frozen token embeddings plus the offset H at each input token's position. Answer tokens
        appended for causal training (from ``answer_start`` on) get no offset: generated tokens never have one.
        ``longest``: the most input tokens of a row that takes this offset (a host int from ``collate``)."""
        emb = self.backbone.model.get_input_embeddings()(input_ids).float()  # [b, L, d] frozen
        if offset is None:
            return emb
        inputs = mask
        if answer_start is not None:
            columns = torch.arange(mask.shape[1], device=mask.device)
            inputs = mask * (columns.unsqueeze(0) < answer_start.to(mask.device).unsqueeze(1))
        if longest > offset.shape[0]:
            raise EptctlError(
                f"batch has {longest} input tokens but the adapter's offset covers {offset.shape[0]}",
                hint="inputs must be truncated to the adapter's max length",
            )
        pos = (inputs.cumsum(dim=1) - 1).clamp(min=0, max=offset.shape[0] - 1)  # each token's place in its text
        return emb + offset[pos] * inputs.unsqueeze(-1).to(emb.dtype)  # E' = E + H[pos]; pads, answers get nothing
