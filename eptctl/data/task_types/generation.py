"""Generation: each example has a target text; the output is decoded after the template and scored against it."""

from __future__ import annotations

import dataclasses

from eptctl.core.errors import EptctlError
from eptctl.data.task_types.base import TaskType
from eptctl.data.text import cell


def target_text(raw, where: str, column: str) -> str:
    """A generation row's target, normalised; ``EptctlError`` naming the row for an empty one or one that is not
    text."""
    target = cell(raw.label, f"row {raw.row} of {where}: column '{column}'")
    if target is None:
        raise EptctlError(f"row {raw.row} of {where} has an empty target in column '{column}'",
                          hint="fill in or drop rows without a target, or name the column with --target-column")
    return target


class Generation(TaskType):
    """A target text per example; trained as language modelling; ROUGE-L first; needs a generating backbone."""

    name = "generation"
    default_metric = "rouge_l"
    primary_metrics = ("rouge_l", "exact_match", "token_f1", "chrf", "bleu")
    cue = "Output:"
    decodes_text = True
    dropped_keys = ("grid", "value_range")
    card_use = "Writes the target text of the task `{task}` for an input"
    card_how = "The output is decoded after the task's template (greedy by default)."
    predicts = "the generated output"

    def read_answers(self, rows, labels, where, column):
        return [{"label": 0, "target": target_text(raw, where, column)} for raw in rows]

    def target_text(self, spec, example):
        return example.target

    def default_stop(self, examples):
        """A line break, when no training target has one: an output then ends with its line, as every target did,
        instead of running on into a second line (``--stop`` overrides it)."""
        targets = [e.target or "" for e in examples]
        return ("\n",) if targets and not any("\n" in t for t in targets) else ()

    def evaluate(self, run, encoded):
        return run.metrics.generation_metrics(run.generate(encoded), [e.target or "" for e in encoded])

    def predict_rows(self, run, encoded, index):
        options = run.options or run.default_options()
        # each row keeps its own adapter's budget and stop strings unless the caller set them: a row's output never
        # depends on the rows it shares a batch with
        limits = [options.max_new_tokens or run.servables[a].max_new_tokens for a in index]
        stops = [options.stop or run.servables[a].default_stop for a in index]
        texts: list = [None] * len(encoded)
        for stop in dict.fromkeys(stops):  # one pass per distinct stop set (one, unless adapters differ)
            mine = [i for i, s in enumerate(stops) if s == stop]
            for i, text in zip(mine, run.generate([encoded[i] for i in mine], [index[i] for i in mine],
                                                  dataclasses.replace(options, stop=stop), [limits[i] for i in mine])):
                texts[i] = text
        return [{"adapter": run.servables[a].record.ref, "output": t, "truncated": bool(e.truncated)}
                for a, t, e in zip(index, texts, encoded)]


GENERATION = Generation()
