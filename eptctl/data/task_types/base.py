"""The :class:`TaskType` strategy: everything that differs between task types, in one object per type.

A task type decides how a data row's answer is read, what the model is trained to write, how a task's spec is
checked and stored, how it is scored and which metrics it reports, what a prediction row holds and how a model card
describes it. Each type is one module of this package and one line of the table in ``task_types/__init__.py``;
nothing else in eptctl compares task-type names.

The data layer may not import the engine, so the engine's behaviour is reached by double dispatch: the engine calls
:meth:`TaskType.evaluate` or :meth:`TaskType.predict_rows` with a *run*, an object of its own that exposes the
scoring operations (label scores, generated texts, regression values, the metrics), and the type picks the ones it
needs. The run objects are ``engine.scoring.EvalRun`` and ``workflows.inference.MixedRun``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eptctl.core.errors import EptctlError


class TaskType:
    """One task type's behaviour; subclass it once per type and register one instance in the table.

    Class attributes describe the type; methods take a spec, rows or a run and never the type's name. The defaults
    are those of a type whose examples carry an answer (a target text or a number) rather than a label.
    """

    name: str = ""
    default_metric: str = ""  # the primary metric when a task names none
    primary_metrics: tuple[str, ...] = ()  # metrics a task may choose as its primary one (all higher-is-better)
    cue: str = "Output:"  # the answer cue of the default template
    answer_column: str = "target"  # a data file's answer column by default; also the answer's name in messages
    has_labels: bool = False  # a label set and a verbalizer (and label-stratified few-shot samples)
    objective: str = "lm"  # the loss of ``--objective auto``
    decodes_text: bool = False  # its prediction is decoded text: it needs a backbone that generates
    uses_grid: bool = False  # targets are rounded to ``TaskSpec.grid``
    new_tokens: int | None = None  # a fixed decoding budget; None: the task's own (the caller's options)
    # TaskSpec.to_dict keys a spec of this type leaves out: stored specs keep the bytes of earlier versions.
    dropped_keys: tuple[str, ...] = ()
    card_use: str = ""  # model card, "Intended use": format fields {task} and {labels}
    card_how: str = ""  # model card: how the prediction is made
    predicts: str = "the prediction"  # model card: what ``eptctl predict`` prints

    def __repr__(self) -> str:
        return f"TaskType({self.name!r})"

    # -- the spec --------------------------------------------------------------------------------------------

    def head_size(self, num_labels: int) -> int:
        """Outputs of an encoder backbone's head for a task with ``num_labels`` labels (0: no head)."""
        return 0

    def normalised(self, spec) -> dict[str, Any]:
        """Spec fields to replace after construction (e.g. a default grid); raises ``EptctlError`` for bad ones."""
        return {}

    def check_labels(self, spec) -> None:
        """Raise ``EptctlError`` unless ``spec``'s labels and verbalizer suit the type (default: none at all)."""
        if spec.labels or spec.verbalizer:
            raise EptctlError(f"a {self.name} task has no labels, but task '{spec.name}' lists "
                              f"{', '.join(spec.labels or spec.verbalizer)}",
                              hint="give labels only to classification tasks")

    def fingerprint_head(self, spec) -> dict[str, Any]:
        """What the data fingerprint's head adds to labels, verbalizer and template for this type."""
        return {"task_type": spec.task_type, "grid": spec.grid}

    def fingerprint_row(self, example) -> list[Any]:
        """What the data fingerprint adds to an example's ``[text, text_pair, label]``."""
        return [example.target, example.value]

    def record_source(self, spec) -> dict[str, Any]:
        """Spec fields that travel in the registry row's ``source`` JSON for this type."""
        return {}

    def fallback_value(self, spec) -> float:
        """The prediction for an output that holds no answer (regression: the grid point nearest the midpoint)."""
        return 0.0

    # -- custom data -----------------------------------------------------------------------------------------

    def custom_description(self, filename: str) -> str:
        """A custom task's description when the user gives none."""
        return f"custom {self.name} task from {filename}"

    def custom_fields(self, rows: Sequence, where: str, column: str) -> dict[str, Any]:
        """Spec fields a custom task of this type takes from all its rows (e.g. the range of the targets)."""
        return {}

    def read_answers(self, rows: Sequence, labels: Sequence[str], where: str, column: str) -> list[dict[str, Any]]:
        """Each raw row's answer as ``Example`` fields (``label``, ``target``, ``value``), read from ``column``;
        ``EptctlError`` names the first bad row."""
        raise NotImplementedError

    def target_text(self, spec, example) -> str | None:
        """What the model should write for ``example`` (None: nothing to write, e.g. labels are scored)."""
        return None

    def default_stop(self, examples: Sequence) -> tuple[str, ...]:
        """Stop strings that end a decoded output by default, learned from the training ``examples`` and recorded
        with the adapter (default: none; decoding ends at eos or the token budget)."""
        return ()

    # -- the engine (double dispatch) ------------------------------------------------------------------------

    def evaluate(self, run, encoded: Sequence) -> dict[str, float]:
        """The task's metrics over ``encoded`` rows (they carry their answers), computed with ``run``'s scoring
        operations (``engine.scoring.EvalRun``)."""
        raise NotImplementedError

    def predict_rows(self, run, encoded: Sequence, index: Sequence[int]) -> list[dict]:
        """One prediction dict per encoded row (``adapter`` first, then the type's fields and ``truncated``); row
        ``i`` belongs to adapter ``index[i]`` of ``run`` (``workflows.inference.MixedRun``)."""
        raise NotImplementedError
