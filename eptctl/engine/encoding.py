"""Examples to token ids: a task's template filled with each example, tokenized in one call per task."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from eptctl import data
from eptctl.backbones.base import Backbone, EncodedExample, TaskEncoding


@dataclass
class EncodedTask:
    """A task's three splits encoded for one backbone, with the token ids of each label's answer."""

    spec: data.TaskSpec
    task_data: data.TaskData
    answers: TaskEncoding
    train: list[EncodedExample]
    validation: list[EncodedExample]
    test: list[EncodedExample]


DEFAULT_MAX_TARGET_LENGTH = 64


def new_token_budget(train: Sequence[EncodedExample], max_target_length: int) -> int:
    """How many tokens decoding may write for a task: the longest training target (eos included) plus a quarter,
    at most ``max_target_length``. Decoding stops at eos anyway; the budget bounds an output that never ends (an
    untrained prompt), which would otherwise cost ``max_target_length`` steps on every row of every evaluation."""
    longest = max((len(e.target_ids) for e in train if e.target_ids), default=max_target_length)
    return max(1, min(max_target_length, longest + max(2, longest // 4)))


def target_text(spec: data.TaskSpec, example: data.Example) -> str | None:
    """What the model should write for ``example``, as its task type says: the target text (generation), the number
    on the task's grid (regression, T5-style, e.g. ``3.4``), or None (classification, or an input without a
    target)."""
    return spec.strategy.target_text(spec, example)


def encode_examples(backbone: Backbone, spec: data.TaskSpec, examples: Sequence[data.Example], answers: TaskEncoding,
                    max_length: int, max_target_length: int = DEFAULT_MAX_TARGET_LENGTH) -> list[EncodedExample]:
    """The task's template filled with each example, tokenized in one call; generation and text-to-text regression
    rows also carry their target's tokens (at most ``max_target_length``, eos included).

    A row over ``max_length`` tokens (causal: its answer included) is shortened in its texts, never in the template:
    the longest text (of a pair, or of a task's named columns) loses tokens first ("longest first"), so the
    template's cue and every text stay.
    Such rows are marked ``truncated``; a template longer than the budget on its own is cut by ``Backbone.encode``.
    """
    examples = list(examples)
    labels = [e.label for e in examples]
    ids = backbone.token_ids([spec.prompt(e) for e in examples])
    shortened = set()
    for i, (e, row) in enumerate(zip(examples, ids)):
        room = backbone.text_room(max_length, answers, e.label)
        if len(row) > room:
            examples[i] = _fit(backbone, spec, e, len(row) - room, room)
            shortened.add(i)
    encoded = backbone.encode([spec.prompt(e) for e in examples], labels, answers, max_length)
    for i in shortened:
        encoded[i].truncated = True
    if not spec.strategy.has_labels:  # rows carry their answers for the loss and the metrics
        targets = [target_text(spec, e) for e in examples]
        with_target = [i for i, t in enumerate(targets) if t is not None]
        ids = backbone.encode_targets([targets[i] for i in with_target], max_target_length) \
            if backbone.can_generate and with_target else []
        by_row = dict(zip(with_target, ids))
        for i, (e, enc) in enumerate(zip(examples, encoded)):
            enc.target, enc.value, enc.target_ids = e.target, e.value, by_row.get(i)
    return encoded


def _fit(backbone: Backbone, spec: data.TaskSpec, example: data.Example, excess: int, room: int) -> data.Example:
    """``example`` with its longest text (of all its columns) cut by whole tokens until the filled template fits
    ``room`` tokens; the template itself is never cut."""
    fields = {"text": example.text, "text_pair": example.text_pair, **{f"field:{k}": v for k, v in example.fields}}

    def rebuilt() -> data.Example:
        extra = tuple((k, fields[f"field:{k}"]) for k, _ in example.fields)
        return dataclasses.replace(example, text=fields["text"], text_pair=fields["text_pair"], fields=extra)

    for _ in range(8):  # tokenizing a cut text can merge differently: a few rounds settle it
        lengths = {k: len(backbone.token_ids([v], special=False)[0]) for k, v in fields.items() if v}
        longest = max(lengths, key=lengths.get)
        keep = max(1, lengths[longest] - excess)
        if keep == lengths[longest]:
            break  # nothing left to cut: the template alone is too long
        cut = backbone.token_ids([fields[longest]], special=False)[0][:keep]
        fields[longest] = backbone.tokenizer.decode(cut, skip_special_tokens=True).strip()
        candidate = rebuilt()
        excess = len(backbone.token_ids([spec.prompt(candidate)])[0]) - room
        if excess <= 0:
            return candidate
    return rebuilt()


def encode_task(backbone: Backbone, spec: data.TaskSpec, max_length: int, *, task_data: data.TaskData | None = None,
                max_target_length: int = DEFAULT_MAX_TARGET_LENGTH, **sampling) -> EncodedTask:
    """Load (unless ``task_data`` is given) and encode a task's splits; ``sampling`` are :func:`data.load_task`'s
    keywords (``max_train``, ``max_eval``, ``seed``, ``train_examples``). Raises ``EptctlError`` for bad data."""
    task_data = task_data or data.load_task(spec, **sampling)
    answers = backbone.encode_answers(spec.verbalizer)

    def enc(examples):
        return encode_examples(backbone, spec, examples, answers, max_length, max_target_length)

    return EncodedTask(spec, task_data, answers, enc(task_data.train), enc(task_data.validation), enc(task_data.test))
