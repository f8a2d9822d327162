"""Step-level decoding for a server: rows come and go between steps (continuous batching).

``backbones.decoding.decode`` runs one batch from its first token to its last. A server instead keeps a running batch
whose rows belong to different requests and adapters: a new request is *prefilled* (its ``[P ; E + H[pos]]`` run
once, giving its key/value cache and its first logits) and *merged* into the running batch at the next step; every
*step* feeds one token per row; a finished or abandoned row is *selected* out (``index_select`` on the batch
dimension of every cache tensor).

Causal layout: every row's cache is left-padded to the batch's common width ``T``; host ints ``lengths`` [b] say how
many of the last columns are real, which gives each step's attention mask and position ids (positions count from each
row's first real token, as in ``CausalBackbone.generate`` and in training). Leading columns no row uses any more are
trimmed after a row leaves. A single row prefilled alone runs exactly what ``CausalBackbone.generate`` runs for it.

Seq2seq (T5) decodes per cohort: the rows prefilled together run to their ends together (finished rows leave, none
joins), because joining would need the decoder's self-attention caches padded and the encoder states re-padded;
``can_join`` says which applies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from eptctl.backbones import decoding
from eptctl.backbones.base import Batch, EncodedExample, HostRows
from eptctl.backbones.causal import left_align
from eptctl.backbones.prompted import PromptedModel, PromptSource


@dataclass
class StepState:
    """The running rows' model state: ``cache`` (a transformers cache; causal: every layer's keys and values
    [b, heads, T, head_dim], left-padded), ``lengths`` [b] host ints (causal: real cache positions per row, i.e. the
    next position id), and for seq2seq ``encoder`` (BaseModelOutput, [b, S, d]) and ``encoder_mask`` [b, S]."""

    cache: object
    lengths: list[int]
    encoder: object = None
    encoder_mask: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.lengths)


def _prompted(backbone, sources: Sequence[PromptSource], rows: Sequence[Sequence[int]], index: Sequence[int]):
    """The EPT forward pass over ``rows`` (token ids after the prompt) where row ``i`` uses ``sources[index[i]]``:
    ``PromptedInputs`` of a right-padded batch on the backbone's device."""
    encoded = [EncodedExample(list(ids), 0) for ids in rows]
    mixed = list(index) if len(sources) > 1 else None
    batch = backbone.collate(encoded, None, train=False, adapter_index=mixed).to(backbone.device)
    return PromptedModel(backbone, sources)(batch)


class CausalStepper:
    """Prefill, step, select and merge for a decoder-only backbone (``backbones.causal.CausalBackbone``)."""

    can_join = True

    def __init__(self, backbone):
        self.backbone = backbone
        self.model = backbone.model
        self.cache_kw = decoding.cache_argument(self.model.base_model)

    def _run(self, embeds, mask, positions, cache) -> torch.Tensor:
        """Next-token logits [b, V] float32 after ``embeds`` [b, t, d]; ``cache`` grows in place."""
        out = self.model.base_model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True,
                                    **{self.cache_kw: cache})
        return self.model.get_output_embeddings()(out.last_hidden_state[:, -1]).float()

    def _new_cache(self, layers=None):
        from transformers import DynamicCache  # here, not at import: the CLI starts without transformers

        return DynamicCache(ddp_cache_data=layers, config=self.model.config)

    @torch.no_grad()
    def prefill(self, sources: Sequence[PromptSource], rows: Sequence[Sequence[int]], index: Sequence[int]
                ) -> tuple[StepState, torch.Tensor]:
        """Run ``rows`` (k rows of token ids; row ``i`` with ``sources[index[i]]``) once: their left-aligned state and
        the logits of their first generated token [k, V] float32."""
        inputs = _prompted(self.backbone, sources, rows, index)
        left, mask = left_align(inputs.inputs_embeds, inputs.attention_mask)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        cache = self._new_cache()
        logits = self._run(left, mask, positions, cache)
        lengths = [s + len(ids) for s, ids in zip(inputs.prompt_lengths, rows)]
        return StepState(cache, lengths), logits

    @torch.no_grad()
    def step(self, state: StepState, ids: torch.Tensor) -> torch.Tensor:
        """Feed ``ids`` [b] (one token per row, on the device) and return the next logits [b, V] float32. Generated
        tokens get no offset, as in training; each row's mask covers its last ``lengths[i] + 1`` columns."""
        width = state.cache.get_seq_length()
        lengths = torch.tensor(state.lengths).to(ids.device, non_blocking=True)  # host ints, copied without a wait
        columns = torch.arange(width + 1, device=ids.device).unsqueeze(0)
        mask = (columns >= (width - lengths).unsqueeze(1)).long()  # [b, T + 1]
        embeds = self.model.get_input_embeddings()(ids.unsqueeze(1)).to(self.backbone.dtype)
        logits = self._run(embeds, mask, lengths.unsqueeze(1), state.cache)
        state.lengths = [n + 1 for n in state.lengths]
        return logits

    def select(self, state: StepState, keep: Sequence[int]) -> StepState:
        """The state of rows ``keep`` (host ints, in that order), with the leading columns none of them uses cut."""
        index = torch.tensor(list(keep), dtype=torch.long).to(self.backbone.device, non_blocking=True)
        lengths = [state.lengths[i] for i in keep]
        width = state.cache.get_seq_length()
        unused = width - max(lengths, default=width)
        layers = [(k.index_select(0, index)[:, :, unused:], v.index_select(0, index)[:, :, unused:])
                  for k, v, *_ in state.cache]
        return StepState(self._new_cache(layers), lengths)

    def merge(self, a: StepState, b: StepState) -> StepState:
        """One state with ``a``'s rows then ``b``'s, both left-padded to the longer width."""
        width = max(a.cache.get_seq_length(), b.cache.get_seq_length())

        def padded(t: torch.Tensor) -> torch.Tensor:  # [b, heads, T, head_dim] -> width columns, zeros on the left
            return F.pad(t, (0, 0, width - t.shape[2], 0))

        layers = [(torch.cat([padded(ka), padded(kb)]), torch.cat([padded(va), padded(vb)]))
                  for (ka, va, *_), (kb, vb, *_) in zip(a.cache, b.cache)]
        return StepState(self._new_cache(layers), a.lengths + b.lengths)

    @torch.no_grad()
    def prompt_logprobs(self, source: PromptSource, ids: Sequence[int], offset_tokens: int | None = None
                        ) -> list[float | None]:
        """``log p(ids[t] | P, ids[:t])`` for ``t ≥ 1`` (None for ``t = 0``), one forward pass over ``[P ; E + H]``.

        The first ``offset_tokens`` ids (default: all) get the offset ``H[pos]``, the rest none: a causal adapter's
        label score puts the offset on the template-filled text only and appends the answer without it, so with
        ``offset_tokens`` = the text's length the mean over the answer's tokens is that score."""
        n = len(ids)
        k = n if offset_tokens is None else max(0, min(n, offset_tokens))
        input_ids = torch.tensor([list(ids)], dtype=torch.long)
        host = HostRows([n], [0], answer_start=[k], answer_len=[n - k])
        batch = Batch(input_ids, torch.ones_like(input_ids), torch.zeros(1, dtype=torch.long),
                      answer_start=torch.tensor([k]), answer_len=torch.tensor([n - k]), host=host)
        inputs = PromptedModel(self.backbone, [source])(batch.to(self.backbone.device))
        hidden = self.model.base_model(inputs_embeds=inputs.inputs_embeds,
                                       attention_mask=inputs.attention_mask).last_hidden_state
        s = inputs.prompt_lengths[0]
        logits = self.model.get_output_embeddings()(hidden[0, s: s + n - 1]).float()  # position s+t-1 predicts t
        logp = torch.log_softmax(logits, dim=-1).gather(1, input_ids[0, 1:].to(logits.device).unsqueeze(1))
        return [None, *logp.squeeze(1).tolist()]


class Seq2SeqStepper:
    """Prefill, step and select for an encoder-decoder backbone (T5): the encoder runs once per cohort, the decoder
    starts from the model's start token; no merge (``can_join`` False: a cohort runs to its end)."""

    can_join = False

    def __init__(self, backbone):
        self.backbone = backbone
        self.model = backbone.model
        self.cache_kw = decoding.cache_argument(self.model)

    def _run(self, state: StepState, decoder_ids: torch.Tensor) -> torch.Tensor:
        out = self.model(encoder_outputs=state.encoder, attention_mask=state.encoder_mask,
                         decoder_input_ids=decoder_ids, use_cache=True, **{self.cache_kw: state.cache})
        state.cache = decoding.returned_cache(out)
        return out.logits[:, -1].float()

    @torch.no_grad()
    def prefill(self, sources: Sequence[PromptSource], rows: Sequence[Sequence[int]], index: Sequence[int]
                ) -> tuple[StepState, torch.Tensor]:
        """Encode ``rows`` (row ``i`` with ``sources[index[i]]``) and run the decoder's start token: the state and
        the first logits [k, V] float32, as ``Seq2SeqBackbone.generate`` computes them."""
        from transformers.modeling_outputs import BaseModelOutput

        inputs = _prompted(self.backbone, sources, rows, index)
        mask = inputs.attention_mask
        hidden = self.model.get_encoder()(inputs_embeds=inputs.inputs_embeds, attention_mask=mask).last_hidden_state
        state = StepState(None, [1] * len(rows), BaseModelOutput(last_hidden_state=hidden), mask)
        start = torch.full((len(rows), 1), self.model.config.decoder_start_token_id, dtype=torch.long,
                           device=mask.device)
        return state, self._run(state, start)

    @torch.no_grad()
    def step(self, state: StepState, ids: torch.Tensor) -> torch.Tensor:
        """Feed ``ids`` [b] to the decoder; the next logits [b, V] float32."""
        state.lengths = [n + 1 for n in state.lengths]
        return self._run(state, ids.unsqueeze(1))

    def select(self, state: StepState, keep: Sequence[int]) -> StepState:
        """The state of rows ``keep`` (host ints, in that order)."""
        from transformers.modeling_outputs import BaseModelOutput

        index = torch.tensor(list(keep), dtype=torch.long).to(self.backbone.device, non_blocking=True)
        state.cache.batch_select_indices(index)
        encoder = BaseModelOutput(last_hidden_state=state.encoder.last_hidden_state.index_select(0, index))
        return StepState(state.cache, [state.lengths[i] for i in keep], encoder,
                         state.encoder_mask.index_select(0, index))

    def merge(self, a: StepState, b: StepState) -> StepState:
        raise NotImplementedError("seq2seq decodes per cohort: rows join only an empty batch (can_join is False)")


def stepper_for(backbone):
    """The step-level decoder of ``backbone``'s family, or None for a family that cannot generate (encoders)."""
    if not backbone.can_generate:
        return None
    return CausalStepper(backbone) if backbone.answer_in_input else Seq2SeqStepper(backbone)
