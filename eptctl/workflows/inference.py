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
from eptctl.backbones.decoding import GenerationOptions
from eptctl.core import events
from eptctl.core.errors import EptctlError
from eptctl.data.task_types import TASK_TYPES
from eptctl.data.text import clean_inputs
from eptctl.engine import servable as servable_format
from eptctl.engine.encoding import DEFAULT_MAX_TARGET_LENGTH, encode_examples
from eptctl.engine.scoring import TaskKind, evaluate_encoded, generate_texts, predict_values, score_mixed
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

    @property
    def max_target_length(self) -> int:
        """Target tokens the adapter was trained with (``--max-target-length``)."""
        summary = getattr(self.record, "summary", None) or {}
        return int((summary.get("train_config") or {}).get("max_target_length") or DEFAULT_MAX_TARGET_LENGTH)

    @property
    def max_new_tokens(self) -> int:
        """The default decoding budget: what training used (the longest training target and a quarter more)."""
        summary = getattr(self.record, "summary", None) or {}
        return int(summary.get("max_new_tokens") or self.max_target_length)

    @property
    def default_stop(self) -> tuple[str, ...]:
        """Stop strings its outputs end at unless the caller gives others: what training recorded (a line break
        when no training target had one); none for adapters stored before it was recorded."""
        summary = getattr(self.record, "summary", None) or {}
        return tuple(summary.get("stop") or ())

    def kind(self, options: GenerationOptions | None = None) -> TaskKind:
        """How to score this adapter's task; generation decodes with ``options`` (default: greedy, up to
        ``max_new_tokens``), ending at ``default_stop`` when ``options`` give no stop strings."""
        return TaskKind.of(self.spec, max_new_tokens=self.max_new_tokens, options=options, stop=self.default_stop)


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
    check_servable_on(servable, backbone)
    answers = backbone.encode_answers(servable.spec.verbalizer)
    return encode_examples(backbone, servable.spec, examples, answers, servable.max_length,
                           servable.max_target_length), answers


def check_pair(servable: ServableAdapter, pair: str | None, where: str) -> None:
    """Refuse (``EptctlError``) a text pair for a one-text task, or a single text for a pair task: the template
    would drop the second text, or fill it with nothing."""
    columns = servable.spec.input_columns
    if len(columns) > 2:
        raise EptctlError(f"{servable.record.ref}'s task reads {len(columns)} columns ({', '.join(columns)}); "
                          "an input here is at most two texts",
                          hint=f"evaluate on a file with those columns: eptctl eval {servable.record.ref} --data FILE")
    wants = servable.spec.uses_text_pair
    if wants and pair is None:
        raise EptctlError(f"{where} has one text, but {servable.record.ref}'s task takes a text pair",
                          hint="give the second text (a file with --text-pair-column, or text_pair over HTTP)")
    if not wants and pair is not None:
        raise EptctlError(f"{where} has a text pair, but {servable.record.ref}'s task takes one text",
                          hint="drop the second text (--text-pair-column, or text_pair over HTTP)")


def check_servable_on(servable: ServableAdapter, backbone: Backbone) -> None:
    """Refuse (``EptctlError``) an adapter whose task type decodes text (generation) on a backbone that cannot
    generate."""
    if servable.spec.strategy.decodes_text and not backbone.can_generate:
        raise EptctlError(f"{servable.record.ref} generates text; {backbone.name} is an encoder-only model",
                          hint="serve it on the causal or seq2seq backbone it was trained on")


def encode_input(backbone: Backbone, servable: ServableAdapter, text: str, text_pair: str | None = None):
    """The ``EncodedExample`` :func:`predict` feeds after ``servable``'s soft prompt for one input: the text
    normalised as training data is, the adapter's template filled, special tokens as training put them, truncated to
    its max length. ``EptctlError`` for an empty text, a pair that does not match the task, or a generation adapter
    on an encoder."""
    ((text, text_pair),) = clean_inputs([(text, text_pair)])
    check_pair(servable, text_pair, "input")
    check_servable_on(servable, backbone)
    answers = backbone.encode_answers(servable.spec.verbalizer)
    example = data.Example(text=text, label=0, text_pair=text_pair)
    return encode_examples(backbone, servable.spec, [example], answers, servable.max_length)[0]


@dataclass(frozen=True)
class Evaluation:
    """Metrics of a stored adapter on labelled examples, and how many of them were truncated to its max length."""

    metrics: dict[str, float]
    examples: int
    truncated: int


def evaluate_servable(backbone: Backbone, servable: ServableAdapter, examples: Sequence[data.Example],
                      batch_size: int = 64, options: GenerationOptions | None = None) -> Evaluation:
    """The task's metrics for a stored adapter on ``examples`` with their labels, targets or numbers
    (classification: accuracy, macro-F1, MCC, F1; generation: decoded with ``options`` and scored against the
    targets; regression: Pearson, Spearman, MSE). ``EptctlError`` if there are none."""
    if not examples:
        raise EptctlError("nothing to evaluate: the dataset is empty", hint="check the data file")
    encoded, answers = _encode(backbone, servable, examples)
    source = servable.adapter.to(backbone.device)
    values = evaluate_encoded(backbone, source, encoded, answers, batch_size, kind=servable.kind(options))
    return Evaluation(values, len(encoded), sum(e.truncated for e in encoded))


def evaluate_examples(backbone: Backbone, servable: ServableAdapter, examples: Sequence[data.Example],
                      batch_size: int = 64) -> dict[str, float]:
    """The metrics of :func:`evaluate_servable`."""
    return evaluate_servable(backbone, servable, examples, batch_size).metrics


def predict(backbone: Backbone, servable: ServableAdapter, inputs: Sequence[tuple[str, str | None]],
            batch_size: int = 64, options: GenerationOptions | None = None) -> list[dict]:
    """One dict per input ``(text, text_pair)``: ``adapter``, ``text``, the prediction and whether the input was
    ``truncated`` to the adapter's max length. The prediction is, by task type: ``label`` and every label's
    ``scores`` (length-normalised log-likelihood; encoders: head log-probability); ``output``, the generated text
    (decoded with ``options``, default greedy; ``max_new_tokens=None`` there: the adapter's own budget); or
    ``value``, the number (``output`` too on decoder backbones, and ``parsed: false`` with the task's fallback value
    when the output holds no number). Inputs are normalised as training data is; an empty one, or a text pair that
    does not match the task, is an ``EptctlError``."""
    return predict_mixed(backbone, [servable], [(0, t, p) for t, p in inputs], batch_size, options, where="input")


@dataclass(frozen=True)
class MixedRun:
    """The operations a task type's ``predict_rows`` chooses from, over rows of several adapters that share backbone
    passes (double dispatch: the data layer's ``TaskType`` cannot import the engine). Row ``i`` of a call belongs
    to ``servables[index[i]]``."""

    backbone: Backbone
    servables: Sequence[ServableAdapter]
    sources: Sequence
    answers: Sequence[TaskEncoding]
    batch_size: int = 64
    options: GenerationOptions | None = None  # the caller's decoding options (None: each adapter's own budget)

    @staticmethod
    def default_options() -> GenerationOptions:
        """Greedy decoding, each adapter with its own token budget."""
        return GenerationOptions(max_new_tokens=None)

    def label_scores(self, encoded: Sequence, index: Sequence[int]) -> list[torch.Tensor]:
        """Each row's label scores under its adapter (:func:`score_mixed`)."""
        return score_mixed(self.backbone, self.sources, self.answers, encoded, index, self.batch_size)

    def generate(self, encoded: Sequence, index: Sequence[int], options: GenerationOptions,
                 limits: Sequence[int] | None = None) -> list[str]:
        """Each row's generated text under its adapter (:func:`generate_texts`), ``limits`` tokens per row."""
        return generate_texts(self.backbone, self.sources, encoded, options, self.batch_size, index, limits)

    def values(self, encoded: Sequence, index: Sequence[int]) -> tuple[list[float | None], list[str | None]]:
        """Each row's number (and generated text) under its adapter (:func:`predict_values`)."""
        return predict_values(self.backbone, self.sources, encoded, self.servables[index[0]].kind(), self.batch_size,
                              index)


def predict_mixed(backbone: Backbone, servables: Sequence[ServableAdapter], rows: Sequence[tuple[int, str, str | None]],
                  batch_size: int = 64, options: GenerationOptions | None = None, where: str = "row") -> list[dict]:
    """Rows of different tasks in one batch: ``rows[i] = (adapter index, text, text_pair)``; each row gets its own
    prompt and offset, and every batch (every decoding step, for generation) is one backbone forward pass. Rows of
    one task type share batches. Returns one dict per row as :func:`predict`, in input order."""
    answers: list[TaskEncoding] = [backbone.encode_answers(s.spec.verbalizer) for s in servables]
    cleaned = clean_inputs([(text, pair) for _, text, pair in rows], where=where)
    rows = [(row[0], text, pair) for row, (text, pair) in zip(rows, cleaned)]
    for n, (a, _, pair) in enumerate(rows, start=1):
        check_pair(servables[a], pair, f"{where} {n}")
    encoded: list = [None] * len(rows)
    for a, s in enumerate(servables):  # one tokenizer call per adapter, not per row
        mine = [i for i, row in enumerate(rows) if row[0] == a]
        if not mine:
            continue
        check_servable_on(s, backbone)
        examples = [data.Example(text=rows[i][1], label=0, text_pair=rows[i][2]) for i in mine]
        for i, enc in zip(mine, encode_examples(backbone, s.spec, examples, answers[a], s.max_length)):
            encoded[i] = enc
    run = MixedRun(backbone, servables, [s.adapter.to(backbone.device) for s in servables], answers, batch_size,
                   options)
    index = [row[0] for row in rows]
    out: list = [None] * len(rows)
    for kind in TASK_TYPES.values():  # rows of one task type share batches
        mine = [i for i in range(len(rows)) if servables[index[i]].spec.strategy is kind]
        if not mine:
            continue
        with events.phase("decoding" if kind.decodes_text else "scoring", len(mine)):  # silent without a handler
            results = kind.predict_rows(run, [encoded[i] for i in mine], [index[i] for i in mine])
        for i, result in zip(mine, results):
            out[i] = {"adapter": result.pop("adapter"), "text": rows[i][1],
                      **({"text_pair": rows[i][2]} if rows[i][2] is not None else {}), **result}
    return out


def prompt_similarity(a: MaterializedAdapter, b: MaterializedAdapter) -> float:
    """Cosine similarity of two materialized prompts (SPoT-style). Prompts of different lengths or widths are
    compared by their mean row, so any two adapters of one backbone are comparable; ``EptctlError`` across widths."""
    pa, pb = a.prompt.float(), b.prompt.float()
    if pa.shape[1] != pb.shape[1]:
        raise EptctlError("prompts have different widths: adapters come from different backbones")
    if pa.shape != pb.shape:
        pa, pb = pa.mean(dim=0), pb.mean(dim=0)
    return float(torch.nn.functional.cosine_similarity(pa.flatten(), pb.flatten(), dim=0))
