"""Encoder-only models (BERT, MiniLM): no generation head; the masked mean of the last hidden states (prompt and
text) goes through the adapter's trainable linear head; scores are the head's log-softmax."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from eptctl.backbones.base import Backbone, Batch, TaskEncoding
from eptctl.backbones.prompted import PromptedInputs, PromptedModel


class EncoderBackbone(Backbone):
    """An encoder with a per-adapter classification head in place of answer scoring."""

    family = "encoder"
    has_head = True
    can_generate = False

    def _answer_ids(self, word: str) -> list[int]:
        return []

    def _lm_loss(self, adapter, batch: Batch, answers: TaskEncoding, inputs: PromptedInputs) -> torch.Tensor:
        logits = self._head_logits([adapter], inputs, None)
        if batch.values is not None:  # regression: a scalar head, mean squared error
            return F.mse_loss(logits[:, 0].float(), batch.values.to(logits.device).float())
        return F.cross_entropy(logits, batch.labels.to(logits.device))

    @torch.no_grad()
    def predict_values(self, sources, batch: Batch) -> torch.Tensor:
        """[b] regression outputs of the scalar head (rows pick their source through ``batch.adapter_index``).
        Raises ``EptctlError`` for several sources without ``adapter_index``."""
        inputs = PromptedModel(self, sources)(batch)
        index = batch.rows().sources if len(sources) > 1 else None
        logits = self._head_logits(sources, inputs, index)
        rows = logits if index is None else torch.stack(logits)
        return rows[:, 0].float()

    def _family_scores(self, sources, batch, inputs: PromptedInputs, index, row_answers) -> list[torch.Tensor]:
        logits = self._head_logits(sources, inputs, index if len(sources) > 1 else None)  # one source: one matmul
        return [torch.log_softmax(row.float(), dim=-1) for row in logits]

    def _head_logits(self, sources, inputs: PromptedInputs, index) -> list[torch.Tensor] | torch.Tensor:
        """[b, c] logits of the source's head (a list of [c] rows where ``index``, b host ints, picks each row's
        source)."""
        mask = inputs.attention_mask
        hidden = self.model(inputs_embeds=inputs.inputs_embeds, attention_mask=mask).last_hidden_state.float()
        weights = mask.unsqueeze(-1).float()
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1)  # masked mean over prompt and text
        if index is None:
            return sources[0].head(pooled)
        return [sources[a].head(pooled[i: i + 1])[0] for i, a in enumerate(index)]
