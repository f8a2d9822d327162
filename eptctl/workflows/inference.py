"""Serving stored adapters: resolve a reference, read and verify the servable artifact, score labels, evaluate, and
predict mixed-task batches.

Inference never runs fusion or projection: the servable artifact holds the reconstructed prompt, the full offset and
the head, so a batch costs exactly the backbone on ``s + L`` positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from eptctl import backbones, data
from eptctl.backbones.base import Backbone, TaskEncoding
from eptctl.core.errors import EptctlError
from eptctl.data.text import clean_inputs
from eptctl.engine import servable as servable_format
from eptctl.engine.encoding import encode_examples
from eptctl.engine.scoring import classification_metrics, predict_scores, score_mixed
from eptctl.methods import EPTConfig, MaterializedAdapter


@dataclass
class ServableAdapter:
    """A stored adapter ready to serve: its registry record, materialized tensors, task and config."""

    record: object  # registry.AdapterRecord
    adapter: MaterializedAdapter
    spec: data.TaskSpec
    config: EPTConfig

    @property
    def max_length(self) -> int:
        """n: the adapter's max input tokens (longer inputs are truncated)."""
        return self.config.max_length


def load_adapter(registry, ref: str) -> ServableAdapter:
    """Resolve ``ref`` and read its verified servable artifact; raises ``EptctlError`` for an unknown reference, a
    missing or corrupt file, or a file that is not an eptctl servable artifact."""
    record = registry.resolve(ref)
    parts = servable_format.from_file(*registry.load_servable(record), ref=record.ref)
    return ServableAdapter(record, parts.adapter, parts.spec, parts.config)


def check_backbone(record, backbone: Backbone) -> None:
    """Refuse to serve an adapter on any backbone other than the exact one it was trained on (``EptctlError``)."""
    fp = backbone.fingerprint()
    if record.backbone.embedding_sha256 != fp["embedding_sha256"] or record.backbone.width != fp["width"]:
        raise EptctlError(
            f"adapter {record.ref} was trained on backbone '{record.backbone.name}', not on '{backbone.name}' "
            "(embedding fingerprints differ)",
            hint=f"use --model {record.backbone.name}",
        )


def backbone_for(servables: Sequence[ServableAdapter], model: str | None = None, backbone: Backbone | None = None
                 ) -> Backbone:
    """The backbone all given adapters were trained on (checked by embedding fingerprint): ``backbone`` if given,
    else ``model`` or the adapters' own backbone name, loaded. Raises ``EptctlError`` on a mismatch."""
    names = {s.record.backbone.name for s in servables}
    if backbone is None:
        if model is None and len(names) > 1:
            raise EptctlError(f"adapters come from different backbones: {', '.join(sorted(names))}",
                              hint="mixed batches need adapters of one backbone")
        backbone = backbones.load(model or next(iter(names)))
    for s in servables:
        check_backbone(s.record, backbone)
    return backbone


def _encode(backbone: Backbone, servable: ServableAdapter, examples: Sequence[data.Example]):
    answers = backbone.encode_answers(servable.spec.verbalizer)
    return encode_examples(backbone, servable.spec, examples, answers, servable.max_length), answers


@dataclass(frozen=True)
class Evaluation:
    """Metrics of a stored adapter on labelled examples, and how many of them were truncated to its max length."""

    metrics: dict[str, float]
    examples: int
    truncated: int


def evaluate_servable(backbone: Backbone, servable: ServableAdapter, examples: Sequence[data.Example],
                      batch_size: int = 64) -> Evaluation:
    """Accuracy and macro-F1 of a stored adapter on labelled ``examples``; ``EptctlError`` if there are none."""
    if not examples:
        raise EptctlError("nothing to evaluate: the dataset is empty", hint="check the data file")
    encoded, answers = _encode(backbone, servable, examples)
    scores = predict_scores(backbone, servable.adapter.to(backbone.device), encoded, answers, batch_size)
    return Evaluation(classification_metrics(scores, [e.label for e in examples]), len(encoded),
                      sum(e.truncated for e in encoded))


def evaluate_examples(backbone: Backbone, servable: ServableAdapter, examples: Sequence[data.Example],
                      batch_size: int = 64) -> dict[str, float]:
    """The metrics of :func:`evaluate_servable`."""
    return evaluate_servable(backbone, servable, examples, batch_size).metrics


def predict(backbone: Backbone, servable: ServableAdapter, inputs: Sequence[tuple[str, str | None]],
            batch_size: int = 64) -> list[dict]:
    """One dict per input ``(text, text_pair)``: ``adapter``, the predicted ``label``, every label's score
    (length-normalised log-likelihood; encoders: head log-probability) and whether the input was ``truncated`` to
    the adapter's max length. Inputs are normalised as training data is; an empty one is an ``EptctlError``."""
    examples = [data.Example(text=t, label=0, text_pair=p) for t, p in clean_inputs(inputs)]
    encoded, answers = _encode(backbone, servable, examples)
    scores = predict_scores(backbone, servable.adapter.to(backbone.device), encoded, answers, batch_size)
    return [_row(servable, s, e.truncated) for s, e in zip(scores, encoded)]


def _row(servable: ServableAdapter, scores: torch.Tensor, truncated: bool) -> dict:
    labels = servable.spec.labels
    return {"adapter": servable.record.ref, "label": labels[int(scores.argmax())],
            "scores": {label: round(float(v), 6) for label, v in zip(labels, scores)}, "truncated": bool(truncated)}


def predict_mixed(backbone: Backbone, servables: Sequence[ServableAdapter], rows: Sequence[tuple[int, str, str | None]],
                  batch_size: int = 64) -> list[dict]:
    """Rows of different tasks in one batch: ``rows[i] = (adapter index, text, text_pair)``; each row gets its own
    prompt and offset, and every batch is one backbone forward pass. Returns one dict per row as :func:`predict`."""
    answers: list[TaskEncoding] = [backbone.encode_answers(s.spec.verbalizer) for s in servables]
    cleaned = clean_inputs([(text, pair) for _, text, pair in rows], where="row")
    rows = [(row[0], text, pair) for row, (text, pair) in zip(rows, cleaned)]
    encoded: list = [None] * len(rows)
    for a, s in enumerate(servables):  # one tokenizer call per adapter, not per row
        mine = [i for i, row in enumerate(rows) if row[0] == a]
        examples = [data.Example(text=rows[i][1], label=0, text_pair=rows[i][2]) for i in mine]
        for i, enc in zip(mine, encode_examples(backbone, s.spec, examples, answers[a], s.max_length)):
            encoded[i] = enc
    sources = [s.adapter.to(backbone.device) for s in servables]
    index = [row[0] for row in rows]
    scores = score_mixed(backbone, sources, answers, encoded, index, batch_size)
    return [_row(servables[a], s, e.truncated) for a, s, e in zip(index, scores, encoded)]


def prompt_similarity(a: MaterializedAdapter, b: MaterializedAdapter) -> float:
    """Cosine similarity of two materialized prompts (SPoT-style). Prompts of different lengths or widths are
    compared by their mean row, so any two adapters of one backbone are comparable; ``EptctlError`` across widths."""
    pa, pb = a.prompt.float(), b.prompt.float()
    if pa.shape[1] != pb.shape[1]:
        raise EptctlError("prompts have different widths: adapters come from different backbones")
    if pa.shape != pb.shape:
        pa, pb = pa.mean(dim=0), pb.mean(dim=0)
    return float(torch.nn.functional.cosine_similarity(pa.flatten(), pb.flatten(), dim=0))
