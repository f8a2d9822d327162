"""Scoring encoded examples with one prompt source or several (mixed-task batches), and classification metrics.

Used alike by the training loop (validation), by evaluation of stored adapters and by prediction: one code path, so
what training measures is what serving returns.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from eptctl.backbones.base import Backbone, EncodedExample, PromptSource, TaskEncoding
from eptctl.engine import distributed


def eval_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Row indices grouped into batches of similar length (sorted), so padding stays small."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[j: j + batch_size] for j in range(0, len(order), batch_size)]


def predict_scores(backbone: Backbone, source: PromptSource, encoded: Sequence[EncodedExample],
                   answers: TaskEncoding, batch_size: int = 64) -> torch.Tensor:
    """[N, num_labels] label scores (length-normalised log-likelihoods, or head log-probabilities) in input order."""
    out: list[torch.Tensor | None] = [None] * len(encoded)
    with torch.no_grad():
        for idx in eval_batches([len(e.input_ids) for e in encoded], batch_size):
            batch = backbone.collate([encoded[i] for i in idx], answers, train=False).to(backbone.device)
            for i, scores in zip(idx, backbone.score([source], batch, [answers])):
                out[i] = scores.float().cpu()
    return torch.stack(out) if out else torch.empty(0)


def score_mixed(backbone: Backbone, sources: Sequence[PromptSource], answers: Sequence[TaskEncoding],
                encoded: Sequence[EncodedExample], adapter_index: Sequence[int], batch_size: int = 64
                ) -> list[torch.Tensor]:
    """Rows of different adapters scored together: row ``i`` uses ``sources[adapter_index[i]]`` and its answers.

    Every batch is one backbone pass. Returns one [num_labels of its adapter] tensor per row, in input order.
    """
    out: list[torch.Tensor | None] = [None] * len(encoded)
    with torch.no_grad():
        for idx in eval_batches([len(e.input_ids) for e in encoded], batch_size):
            index = [adapter_index[i] for i in idx]
            batch = backbone.collate([encoded[i] for i in idx], None, train=False, adapter_index=index)
            for i, scores in zip(idx, backbone.score(sources, batch.to(backbone.device), answers)):
                out[i] = scores.float().cpu()
    return out


def classification_metrics(scores: torch.Tensor, labels: Sequence[int]) -> dict[str, float]:
    """Accuracy and macro-F1 (scikit-learn) of the arg-max of ``scores`` [N, num_labels] against ``labels`` [N]."""
    from sklearn.metrics import accuracy_score, f1_score

    preds = scores.argmax(dim=1).tolist()
    return {
        "accuracy": float(accuracy_score(labels, preds)),
        "macro_f1": float(f1_score(labels, preds, average="macro", zero_division=0)),
    }


def evaluate_encoded(backbone: Backbone, source: PromptSource, encoded: Sequence[EncodedExample],
                     answers: TaskEncoding, batch_size: int = 64, *, sharded: bool = False) -> dict[str, float]:
    """Metrics over ``encoded`` (empty dict for no rows).

    ``sharded`` (data parallel): each rank scores its slice, the scores are gathered, and every rank computes the
    same metrics from the same full score matrix (so all ranks pick the same best step).
    """
    if not encoded:
        return {}
    if sharded and distributed.is_distributed():
        lo, hi = distributed.shard(len(encoded))
        parts = distributed.gather(predict_scores(backbone, source, encoded[lo:hi], answers, batch_size))
        scores = torch.cat([p for p in parts if p.numel()])
    else:
        scores = predict_scores(backbone, source, encoded, answers, batch_size)
    return classification_metrics(scores, [e.label for e in encoded])
