"""Serving stored adapters: materialized prompts, label scoring, evaluation and mixed-task batches.

Inference never runs fusion or projection: the servable artifact holds the reconstructed prompt, the full offset and
the head, so a batch costs exactly the backbone on ``s + L`` positions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Sequence

import torch

from eptctl import data, models
from eptctl.backbones import Backbone, TaskEncoding
from eptctl.errors import EptctlError
from eptctl.methods import EPTConfig, MaterializedAdapter
from eptctl.runs import check_backbone, encode_examples
from eptctl.training import classification_metrics, eval_batches, predict_scores


@dataclass
class ServableAdapter:
    record: object  # registry.AdapterRecord
    adapter: MaterializedAdapter
    spec: data.TaskSpec
    config: EPTConfig

    @property
    def max_length(self) -> int:
        return self.config.max_length


def load_adapter(registry, ref: str) -> ServableAdapter:
    record = registry.resolve(ref)
    tensors, meta = registry.load_servable(record)
    if meta.get("format") != "eptctl-servable":
        raise EptctlError(f"adapter {record.ref}: servable artifact has no eptctl metadata",
                          hint="re-register the adapter with this eptctl")
    spec = data.TaskSpec.from_dict(json.loads(meta["task"]))
    return ServableAdapter(record, MaterializedAdapter.from_tensors(tensors), spec,
                           EPTConfig.from_dict(json.loads(meta["config"])))


def backbone_for(servables: Sequence[ServableAdapter], model: str | None = None, backbone: Backbone | None = None
                 ) -> Backbone:
    """The backbone all given adapters were trained on (checked by embedding fingerprint)."""
    names = {s.record.backbone.name for s in servables}
    if backbone is None:
        if model is None and len(names) > 1:
            raise EptctlError(f"adapters come from different backbones: {', '.join(sorted(names))}",
                              hint="mixed batches need adapters of one backbone")
        backbone = models.load(model or next(iter(names)))
    for s in servables:
        check_backbone(s.record, backbone)
    return backbone


def _encode(backbone: Backbone, servable: ServableAdapter, examples: Sequence[data.Example]):
    answers = backbone.encode_answers(servable.spec.verbalizer)
    return encode_examples(backbone, servable.spec, examples, answers, servable.max_length), answers


def evaluate_examples(backbone: Backbone, servable: ServableAdapter, examples: Sequence[data.Example],
                      batch_size: int = 64) -> dict[str, float]:
    if not examples:
        raise EptctlError("nothing to evaluate: the dataset is empty", hint="check the data file")
    encoded, answers = _encode(backbone, servable, examples)
    source = servable.adapter.to(backbone.device)
    scores = predict_scores(backbone, source, encoded, answers, batch_size)
    return classification_metrics(scores, [e.label for e in examples])


def predict(backbone: Backbone, servable: ServableAdapter, inputs: Sequence[tuple[str, str | None]],
            batch_size: int = 64) -> list[dict]:
    """One dict per input: the predicted label and the score of every label (length-normalised log-likelihood)."""
    examples = [data.Example(text=t, label=0, text_pair=p) for t, p in inputs]
    encoded, answers = _encode(backbone, servable, examples)
    scores = predict_scores(backbone, servable.adapter.to(backbone.device), encoded, answers, batch_size)
    return [_row(servable, s) for s in scores]


def _row(servable: ServableAdapter, scores: torch.Tensor, **extra) -> dict:
    labels = servable.spec.labels
    return {**extra, "adapter": servable.record.ref, "label": labels[int(scores.argmax())],
            "scores": {label: round(float(v), 6) for label, v in zip(labels, scores)}}


def predict_mixed(backbone: Backbone, servables: Sequence[ServableAdapter], rows: Sequence[tuple[int, str, str | None]],
                  batch_size: int = 64) -> list[dict]:
    """Rows of different tasks in one batch: ``rows[i] = (adapter index, text, text_pair)``; each row gets its own
    prompt and offset, and every batch is one backbone forward pass."""
    answers: list[TaskEncoding] = [backbone.encode_answers(s.spec.verbalizer) for s in servables]
    encoded: list = [None] * len(rows)
    for a, s in enumerate(servables):  # one tokenizer call per adapter, not per row
        mine = [i for i, row in enumerate(rows) if row[0] == a]
        examples = [data.Example(text=rows[i][1], label=0, text_pair=rows[i][2]) for i in mine]
        for i, enc in zip(mine, encode_examples(backbone, s.spec, examples, answers[a], s.max_length)):
            encoded[i] = enc
    sources = [s.adapter.to(backbone.device) for s in servables]
    out: list[dict | None] = [None] * len(rows)
    with torch.no_grad():
        for idx in eval_batches([len(e.input_ids) for e in encoded], batch_size):
            index = [rows[i][0] for i in idx]
            batch = backbone.collate([encoded[i] for i in idx], None, train=False, adapter_index=index)
            for i, scores in zip(idx, backbone.score(sources, batch.to(backbone.device), answers)):
                out[i] = _row(servables[rows[i][0]], scores.float().cpu())
    return out


def prompt_similarity(a: MaterializedAdapter, b: MaterializedAdapter) -> float:
    """Cosine similarity of two materialized prompts (SPoT-style). Prompts of different lengths or widths are
    compared by their mean row, so any two adapters of one backbone are comparable."""
    pa, pb = a.prompt.float(), b.prompt.float()
    if pa.shape[1] != pb.shape[1]:
        raise EptctlError("prompts have different widths: adapters come from different backbones")
    if pa.shape != pb.shape:
        pa, pb = pa.mean(dim=0), pb.mean(dim=0)
    return float(torch.nn.functional.cosine_similarity(pa.flatten(), pb.flatten(), dim=0))
