"""Re-evaluating stored adapters (library part of `eptctl eval`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from eptctl import data
from eptctl.core import events
from eptctl.core.errors import EptctlError
from eptctl.workflows.inference import ServableAdapter, backbone_for, evaluate_servable, load_adapter


@dataclass(frozen=True)
class EvalOptions:
    """What `eptctl eval` evaluates on and what it stores: a split of the task or a labelled file (``data_path``
    with its columns), a row limit, the backbone's name, and the storing and decoding choices.

    ``label_column`` None: the task type's answer column (``label``, or ``target`` for generation and regression).
    Raises ``EptctlError`` for an unknown split when no file is given.
    """

    split: str = "test"
    data_path: str | None = None
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str | None = None
    max_eval: int | None = None
    model: str | None = None
    store: bool = True
    force: bool = False
    max_new_tokens: int | None = None

    def __post_init__(self):
        if self.data_path is None and self.split not in data.SPLITS:
            raise EptctlError(f"unknown split {self.split!r}",
                              hint="use --split test, --split validation or --split train")


def evaluate_stored(registry, ref: str, options: EvalOptions | None = None, *, backbone=None, **fields) -> dict:
    """Evaluate adapter ``ref`` on a split of its task (or on a labelled file) and store the metrics.

    ``options`` is an :class:`EvalOptions`, or its fields as keywords (``split``, ``data_path``, ``max_eval``,
    ``store``, ``force``, ``max_new_tokens``...); ``backbone``: an already loaded backbone to use.
    A split's metrics replace the training-time ones only when they are computed on the same rows: when the task's
    data changed since training (its fingerprint differs) nothing is stored unless ``force``; a subset
    (``max_eval`` below the training-time size) is stored under ``SPLIT[:N]``; a file under ``data:NAME``; a
    generation budget other than the adapter's own under ``SPLIT[max_new_tokens=N]``.
    A task whose template names its columns (GLUE's ``{premise}``...) reads those columns from the file;
    generation decodes greedily up to ``max_new_tokens`` (default: the adapter's target length).
    Returns ``{"ref", "id", "split", "stored", "examples", "truncated", "metric", "metrics", "data_changed"}``. Raises
    ``EptctlError`` for an unknown reference or split, unreadable or changed data, or a backbone other than the
    adapter's.
    """
    from registry import MetricValue

    options = options or EvalOptions(**fields)
    if options.store:
        registry.check_writable(artifacts=False)  # before the evaluation, not after it
    servable = load_adapter(registry, ref)
    if options.data_path is not None:
        examples = _file_examples(servable, options)
        split_name, data_changed = f"data:{Path(options.data_path).name}", False
    else:
        examples, split_name, data_changed = _split_examples(servable, options)
    if options.max_eval is not None:
        examples = examples[:options.max_eval]
    backbone = backbone_for([servable], model=options.model, backbone=backbone)
    generation = None
    max_new_tokens = options.max_new_tokens
    if max_new_tokens is not None and servable.spec.strategy.decodes_text:
        from eptctl.backbones.decoding import GenerationOptions

        generation = GenerationOptions(max_new_tokens=max_new_tokens)
        if max_new_tokens != servable.max_new_tokens:  # another budget: never replaces the metric training stored
            split_name = f"{split_name}[max_new_tokens={max_new_tokens}]"
    decodes = " (decoding)" if servable.spec.strategy.decodes_text else ""
    with events.phase(f"evaluating {servable.record.ref} on {split_name}{decodes}", len(examples)):
        result = evaluate_servable(backbone, servable, examples, options=generation)
    if options.store:
        registry.add_metrics(servable.record, [MetricValue(split_name, k, v) for k, v in result.metrics.items()])
    return {"ref": servable.record.ref, "id": servable.record.id, "split": split_name, "stored": options.store,
            "examples": len(examples),
            "truncated": result.truncated, "metric": servable.spec.metric, "metrics": result.metrics,
            "data_changed": data_changed}


def _file_examples(servable: ServableAdapter, options: EvalOptions) -> list[data.Example]:
    """The labelled rows of ``options.data_path`` as examples of the adapter's task."""
    spec = servable.spec
    column = options.label_column or spec.strategy.answer_column
    columns = spec.input_columns
    if spec.source.get("kind") == "benchmark":
        from eptctl.data.glue import CATALOGUE

        task = CATALOGUE.get(spec.name)
        if task is not None and task.prepare is not None:
            raise EptctlError(f"task '{task.name}' rewrites its rows as it reads them (WSC marks its spans, MultiRC "
                              "drops HTML); a --data file would be scored without that",
                              hint=f"put the file in the data directory ({task.folder()}) and use --split")
    text_column, text_pair_column = options.text_column, options.text_pair_column
    if columns:  # a named-column task reads the columns its template names
        text_column, text_pair_column = spec.text_columns
    return data.read_examples(options.data_path, text_column=text_column, text_pair_column=text_pair_column,
                              label_column=column, labels=spec.labels, task_type=spec.task_type,
                              extra_columns=columns[2:])


def _split_examples(servable: ServableAdapter, options: EvalOptions) -> tuple[list[data.Example], str, bool]:
    """A split of the adapter's task: its examples, the name its metrics are stored under, and whether the task's
    data changed since training (``EptctlError`` when it did and the metrics would be stored without ``force``)."""
    split, max_eval = options.split, options.max_eval
    task_data = data.load_task(servable.spec, max_eval=max_eval, seed=servable.record.run.seed
                               if servable.record.run else 0)
    examples = task_data.split(split)
    split_name = split
    trained_on = servable.record.summary.get("data_source_fingerprint")  # absent for adapters before 0.1
    data_changed = trained_on is not None and trained_on != task_data.source_fingerprint
    if data_changed and options.store and not options.force:
        raise EptctlError(
            f"the data of task '{servable.spec.name}' changed since {servable.record.ref} was trained: its {split} "
            "metrics would not be comparable; nothing stored",
            hint="evaluate on a new file with --data FILE (stored under its own name), or pass --force to store "
                 "anyway, or --no-store to only look")
    sized = servable.record.summary.get("data_sizes", {}).get(split)
    if max_eval is not None and sized is not None and min(max_eval, len(examples)) < sized:
        split_name = f"{split}[:{min(max_eval, len(examples))}]"  # a subset never replaces the full metric
    return examples, split_name, data_changed
