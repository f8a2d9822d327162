"""Encoder-decoder models (T5, BART): the prompt goes to the encoder; answers are decoder labels; the encoder runs
once per row and the decoder once per (row, label)."""

from __future__ import annotations

import torch

from eptctl.backbones.base import Backbone, Batch, TaskEncoding, regroup


class Seq2SeqBackbone(Backbone):
    """An encoder-decoder LM; answers end with the tokenizer's eos, as T5 generates them."""

    family = "seq2seq"

    @property
    def max_positions(self) -> int | None:
        return None  # relative position buckets: no hard limit on the encoder's input length

    def _answer_ids(self, word: str) -> list[int]:
        return self.tokenizer(word)["input_ids"]

    def _lm_loss(self, adapter, batch: Batch, answers: TaskEncoding, embeds, mask, prompt_len) -> torch.Tensor:
        labels = self._decoder_labels([answers.answers[int(y)] for y in batch.labels])
        enc = self.model.get_encoder()(inputs_embeds=embeds, attention_mask=mask)
        out = self.model(encoder_outputs=enc, attention_mask=mask, labels=labels)
        return out.loss.float()

    def loss_terms(self, batch: Batch, answers: TaskEncoding, objective: str = "lm") -> int:
        if objective == "classify":
            return len(batch)
        return sum(len(answers.answers[int(y)]) for y in batch.labels)

    def _family_scores(self, sources, batch, embeds, mask, prompt_len, index, row_answers) -> list[torch.Tensor]:
        from transformers.modeling_outputs import BaseModelOutput

        enc = self.model.get_encoder()(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        pairs = [(i, ans) for i, answers in enumerate(row_answers) for ans in answers]
        rows = torch.tensor([i for i, _ in pairs], device=enc.device)
        labels = self._decoder_labels([ans for _, ans in pairs])
        out = self.model(encoder_outputs=BaseModelOutput(last_hidden_state=enc[rows]), attention_mask=mask[rows],
                         labels=labels)
        logp = torch.log_softmax(out.logits.float(), dim=-1)
        valid = labels != -100
        token_logp = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * valid
        scores = token_logp.sum(dim=1) / valid.sum(dim=1)
        return regroup(list(scores), [len(a) for a in row_answers])
