"""Encoder-decoder models (T5, BART): the prompt goes to the encoder; answers are decoder labels; the encoder runs
once per row and the decoder once per (row, label)."""

from __future__ import annotations

import torch

from eptctl.backbones import decoding
from eptctl.backbones.base import Backbone, Batch, TaskEncoding, regroup, to_device
from eptctl.backbones.prompted import PromptedInputs, PromptedModel


class Seq2SeqBackbone(Backbone):
    """An encoder-decoder LM; answers end with the tokenizer's eos, as T5 generates them."""

    family = "seq2seq"

    @property
    def max_positions(self) -> int | None:
        return None  # relative position buckets: no hard limit on the encoder's input length

    def _answer_ids(self, word: str) -> list[int]:
        return self.tokenizer(word)["input_ids"]

    def _target_ids(self, text: str) -> list[int]:
        ids = self.tokenizer(text)["input_ids"]
        eos = self.tokenizer.eos_token_id
        return ids if ids and ids[-1] == eos else ids + [eos]

    def _row_answers(self, batch: Batch, answers: TaskEncoding) -> list[list[int]]:
        if batch.targets is not None:
            return batch.targets
        return [answers.answers[y] for y in batch.rows().labels]  # host labels: no read per row

    def _lm_loss(self, adapter, batch: Batch, answers: TaskEncoding, inputs: PromptedInputs) -> torch.Tensor:
        labels = self._decoder_labels(self._row_answers(batch, answers))
        mask = inputs.attention_mask
        enc = self.model.get_encoder()(inputs_embeds=inputs.inputs_embeds, attention_mask=mask)
        out = self.model(encoder_outputs=enc, attention_mask=mask, labels=labels)
        return out.loss.float()

    def loss_terms(self, batch: Batch, answers: TaskEncoding, objective: str = "lm") -> int:
        if objective == "classify":
            return len(batch)
        return sum(len(a) for a in self._row_answers(batch, answers))

    @torch.no_grad()
    def generate(self, sources, batch: Batch, options: decoding.GenerationOptions,
                 limits=None) -> list[list[int]]:
        """The encoder runs once on ``[P ; E + H[pos]]``; the decoder starts from the model's start token and, with
        the cache, is fed one token per step."""
        from transformers.modeling_outputs import BaseModelOutput

        inputs = PromptedModel(self, sources)(batch)  # raises for several sources without adapter_index
        embeds, mask = inputs.inputs_embeds, inputs.attention_mask
        enc = BaseModelOutput(last_hidden_state=self.model.get_encoder()(inputs_embeds=embeds,
                                                                         attention_mask=mask).last_hidden_state)
        b = mask.shape[0]
        start = self.model.config.decoder_start_token_id
        state = {"ids": torch.full((b, 1), start, dtype=torch.long, device=mask.device), "past": None}

        cache_kw = decoding.cache_argument(self.model)

        def run(decoder_ids):
            out = self.model(encoder_outputs=enc, attention_mask=mask, decoder_input_ids=decoder_ids,
                             use_cache=options.use_cache, **{cache_kw: state["past"]})
            state["past"] = decoding.returned_cache(out) if options.use_cache else None
            return out.logits[:, -1].float()

        def step(ids):
            state["ids"] = torch.cat([state["ids"], ids.unsqueeze(1)], dim=1)
            return run(ids.unsqueeze(1) if options.use_cache else state["ids"])

        return decoding.decode(lambda: run(state["ids"]), step, b, self.tokenizer.eos_token_id, options,
                               self.tokenizer, limits)

    def _family_scores(self, sources, batch, inputs: PromptedInputs, index, row_answers) -> list[torch.Tensor]:
        from transformers.modeling_outputs import BaseModelOutput

        embeds, mask = inputs.inputs_embeds, inputs.attention_mask
        enc = self.model.get_encoder()(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        pairs = [(i, ans) for i, answers in enumerate(row_answers) for ans in answers]
        rows = to_device(torch.tensor([i for i, _ in pairs]), enc.device)
        labels = self._decoder_labels([ans for _, ans in pairs])
        out = self.model(encoder_outputs=BaseModelOutput(last_hidden_state=enc[rows]), attention_mask=mask[rows],
                         labels=labels)
        logp = torch.log_softmax(out.logits.float(), dim=-1)
        valid = labels != -100
        token_logp = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * valid
        scores = token_logp.sum(dim=1) / valid.sum(dim=1)
        return regroup(list(scores), [len(a) for a in row_answers])
