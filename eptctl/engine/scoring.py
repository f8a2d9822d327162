"""Scoring encoded examples with one prompt source or several (mixed-task batches): label scores
(classification), generated text (generation) and numbers (regression), and the task's metrics.

Used alike by the training loop (validation), by evaluation of stored adapters and by prediction: one code path, so
what training measures is what serving returns. Which of these a task uses is its task type's choice
(``data.task_types``): :func:`evaluate_encoded` hands the type an :class:`EvalRun` and never compares type names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from eptctl.backbones.base import Backbone, EncodedExample, PromptSource, TaskEncoding
from eptctl.backbones.decoding import GenerationOptions, to_text
from eptctl.core import events
from eptctl.data.task_types import DEFAULT_TASK_TYPE, TaskType, task_type
from eptctl.data.task_types.regression import NEW_TOKENS as REGRESSION_NEW_TOKENS  # noqa: F401 (earlier callers)
from eptctl.engine import distributed, metrics


@dataclass(frozen=True)
class TaskKind:
    """What scoring needs to know of a task besides its encoded rows: its type, label count, the fallback value of
    an unparseable regression output, and how to decode (generation, text-to-text regression)."""

    task_type: str = DEFAULT_TASK_TYPE
    num_labels: int = 2
    fallback: float = 0.0
    generation: GenerationOptions = field(default_factory=GenerationOptions)

    @classmethod
    def of(cls, spec, max_new_tokens: int = 32, options: GenerationOptions | None = None,
           stop: tuple[str, ...] = ()) -> TaskKind:
        """The kind of a ``data.TaskSpec``; generation decodes greedily up to ``max_new_tokens`` and ends at
        ``stop`` (the adapter's default stop strings) unless ``options`` say otherwise (regression always decodes
        greedily, a few tokens)."""
        kind = task_type(spec.task_type)
        if kind.new_tokens is not None:
            options = GenerationOptions(max_new_tokens=kind.new_tokens)
        options = options or GenerationOptions(max_new_tokens=max_new_tokens)
        if options.max_new_tokens is None:
            options = dataclasses.replace(options, max_new_tokens=max_new_tokens)
        if stop and not options.stop and kind.new_tokens is None:
            options = dataclasses.replace(options, stop=tuple(stop))
        return cls(spec.task_type, spec.num_labels, kind.fallback_value(spec), options)

    @property
    def strategy(self) -> TaskType:
        """The task type's behaviour (``data.task_types``)."""
        return task_type(self.task_type)


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
            events.advance(len(idx))  # progress of the caller's phase, if any (a host int: no device sync)
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
            events.advance(len(idx))
    return out


def generate_texts(backbone: Backbone, sources: Sequence[PromptSource], encoded: Sequence[EncodedExample],
                   options: GenerationOptions, batch_size: int = 64, adapter_index: Sequence[int] | None = None,
                   limits: Sequence[int] | None = None) -> list[str]:
    """The text each row's prompt makes the backbone write after its input, in input order (stop strings cut).

    Rows are batched by length; with ``adapter_index`` rows of different adapters share a batch, each with its own
    prompt, and every decoding step is one backbone pass. ``limits`` gives each row its own token budget (default
    ``options.max_new_tokens``), so a row's greedy output never depends on the rows it shares a batch with. Sampling
    draws from ``options.seed`` per batch: the same seed gives the same samples for the same batches.
    """
    out: list[str | None] = [None] * len(encoded)
    for idx in eval_batches([len(e.input_ids) for e in encoded], batch_size):
        index = None if adapter_index is None else [adapter_index[i] for i in idx]
        batch = backbone.collate([encoded[i] for i in idx], None, train=False, adapter_index=index)
        caps = None if limits is None else [limits[i] for i in idx]
        for i, ids in zip(idx, backbone.generate(sources, batch.to(backbone.device), options, caps)):
            out[i] = to_text(backbone.tokenizer, ids, options.stop)
        events.advance(len(idx))
    return out


def predict_values(backbone: Backbone, sources: Sequence[PromptSource], encoded: Sequence[EncodedExample],
                   kind: TaskKind, batch_size: int = 64, adapter_index: Sequence[int] | None = None
                   ) -> tuple[list[float | None], list[str | None]]:
    """Regression outputs in input order: (numbers, generated texts). Encoders read the scalar head (no text); the
    other families generate and parse the first number, None where the output holds none."""
    if not backbone.can_generate:
        out: list[float | None] = [None] * len(encoded)
        with torch.no_grad():
            for idx in eval_batches([len(e.input_ids) for e in encoded], batch_size):
                index = None if adapter_index is None else [adapter_index[i] for i in idx]
                batch = backbone.collate([encoded[i] for i in idx], None, train=False, adapter_index=index)
                for i, v in zip(idx, backbone.predict_values(sources, batch.to(backbone.device)).tolist()):
                    out[i] = float(v)
                events.advance(len(idx))
        return out, [None] * len(encoded)
    texts = generate_texts(backbone, sources, encoded, kind.generation, batch_size, adapter_index)
    return [metrics.parse_number(t) for t in texts], texts


def classification_metrics(scores: torch.Tensor, labels: Sequence[int]) -> dict[str, float]:
    """Accuracy, macro-F1, Matthews correlation and (two labels) binary F1 of the arg-max of ``scores``
    [N, num_labels] against ``labels`` [N] (:func:`eptctl.engine.metrics.classification_metrics`)."""
    return metrics.classification_metrics(scores.argmax(dim=1).tolist(), list(labels), int(scores.shape[1]))


@dataclass(frozen=True)
class EvalRun:
    """The scoring operations a task type's ``evaluate`` chooses from, over one prompt source (double dispatch: the
    data layer's ``TaskType`` cannot import the engine). ``sharded``: label scores are computed in slices across
    data-parallel ranks and gathered."""

    backbone: Backbone
    source: PromptSource
    answers: TaskEncoding | None
    kind: TaskKind
    batch_size: int = 64
    sharded: bool = False
    metrics = metrics  # the metric functions (generation_metrics, regression_metrics...)

    def label_scores(self, encoded: Sequence[EncodedExample]) -> torch.Tensor:
        """[N, num_labels] label scores in input order (gathered across ranks when ``sharded``)."""
        if self.sharded and distributed.is_distributed():
            lo, hi = distributed.shard(len(encoded))
            parts = distributed.gather(predict_scores(self.backbone, self.source, encoded[lo:hi], self.answers,
                                                      self.batch_size))
            return torch.cat([p for p in parts if p.numel()])
        return predict_scores(self.backbone, self.source, encoded, self.answers, self.batch_size)

    @staticmethod
    def classification_metrics(scores: torch.Tensor, labels: Sequence[int]) -> dict[str, float]:
        """:func:`classification_metrics` of the scores' arg-max."""
        return classification_metrics(scores, labels)

    def generate(self, encoded: Sequence[EncodedExample]) -> list[str]:
        """The text each row makes the backbone write, decoded with ``kind.generation``."""
        return generate_texts(self.backbone, [self.source], encoded, self.kind.generation, self.batch_size)

    def values(self, encoded: Sequence[EncodedExample]) -> tuple[list[float | None], list[str | None]]:
        """:func:`predict_values` of the rows: (numbers, generated texts)."""
        return predict_values(self.backbone, [self.source], encoded, self.kind, self.batch_size)


def task_metrics(backbone: Backbone, source: PromptSource, encoded: Sequence[EncodedExample], kind: TaskKind,
                 batch_size: int = 64) -> dict[str, float]:
    """Metrics of a generation or regression task over ``encoded`` (rows carry their targets)."""
    return kind.strategy.evaluate(EvalRun(backbone, source, None, kind, batch_size), encoded)


def evaluate_encoded(backbone: Backbone, source: PromptSource, encoded: Sequence[EncodedExample],
                     answers: TaskEncoding, batch_size: int = 64, *, sharded: bool = False,
                     kind: TaskKind | None = None) -> dict[str, float]:
    """Metrics over ``encoded`` (empty dict for no rows) for a task of ``kind`` (default: classification), as its
    task type computes them.

    ``sharded`` (data parallel): each rank scores its slice, the scores are gathered, and every rank computes the
    same metrics from the same full score matrix (so all ranks pick the same best step). Generation and regression
    are not sharded: every rank decodes every row (same result, no gather of strings).
    """
    if not encoded:
        return {}
    kind = kind or TaskKind()
    return kind.strategy.evaluate(EvalRun(backbone, source, answers, kind, batch_size, sharded), encoded)
