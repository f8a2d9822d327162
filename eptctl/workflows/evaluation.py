"""Re-evaluating stored adapters (library part of `eptctl eval`)."""

from __future__ import annotations

from pathlib import Path

from eptctl import data
from eptctl.core.errors import EptctlError
from eptctl.workflows.inference import backbone_for, evaluate_servable, load_adapter


def evaluate_stored(registry, ref: str, *, split: str = "test", data_path: str | None = None,
                    text_column: str = "text", text_pair_column: str | None = None, label_column: str | None = None,
                    max_eval: int | None = None, model: str | None = None, store: bool = True,
                    backbone=None, force: bool = False, max_new_tokens: int | None = None) -> dict:
    """Evaluate adapter ``ref`` on a split of its task (or on a labelled file) and store the metrics.

    A split's metrics replace the training-time ones only when they are computed on the same rows: when the task's
    data changed since training (its fingerprint differs) nothing is stored unless ``force``; a subset
    (``max_eval`` below the training-time size) is stored under ``SPLIT[:N]``; a file under ``data:NAME``; a
    generation budget other than the adapter's own under ``SPLIT[max_new_tokens=N]``.
    ``label_column`` (default: ``label``, or ``target`` for generation and regression) names a file's answers; a
    task whose template names its columns (GLUE's ``{premise}``...) reads those columns from the file;
    generation decodes greedily up to ``max_new_tokens`` (default: the adapter's target length).
    Returns ``{"ref", "id", "split", "stored", "examples", "truncated", "metric", "metrics", "data_changed"}``. Raises
    ``EptctlError`` for an unknown reference or split, unreadable or changed data, or a backbone other than the
    adapter's.
    """
    from registry import MetricValue

    servable = load_adapter(registry, ref)
    task_type = servable.spec.task_type
    data_changed = False
    if data_path is not None:
        column = label_column or ("label" if task_type == "classification" else "target")
        columns = servable.spec.input_columns
        if servable.spec.source.get("kind") == "benchmark":
            from eptctl.data.glue import CATALOGUE

            task = CATALOGUE.get(servable.spec.name)
            if task is not None and task.prepare is not None:
                raise EptctlError(f"task '{task.name}' rewrites its rows as it reads them (WSC marks its spans, MultiRC "
                                  "drops HTML); a --data file would be scored without that",
                                  hint=f"put the file in the data directory ({task.folder()}) and use --split")
        if columns:  # a named-column task reads the columns its template names
            text_column, text_pair_column = servable.spec.text_columns
        examples = data.read_examples(data_path, text_column=text_column, text_pair_column=text_pair_column,
                                      label_column=column, labels=servable.spec.labels, task_type=task_type,
                                      extra_columns=columns[2:])
        split_name = f"data:{Path(data_path).name}"
    else:
        if split not in ("train", "validation", "test"):
            raise EptctlError(f"unknown split {split!r}", hint="use --split test, --split validation or --split train")
        task_data = data.load_task(servable.spec, max_eval=max_eval, seed=servable.record.run.seed
                                   if servable.record.run else 0)
        examples = task_data.split(split)
        split_name = split
        trained_on = servable.record.summary.get("data_source_fingerprint")  # absent for adapters before 0.1
        data_changed = trained_on is not None and trained_on != task_data.source_fingerprint
        if data_changed and store and not force:
            raise EptctlError(
                f"the data of task '{servable.spec.name}' changed since {servable.record.ref} was trained: its {split} "
                "metrics would not be comparable; nothing stored",
                hint="evaluate on a new file with --data FILE (stored under its own name), or pass --force to store "
                     "anyway, or --no-store to only look")
        sized = servable.record.summary.get("data_sizes", {}).get(split)
        if max_eval is not None and sized is not None and min(max_eval, len(examples)) < sized:
            split_name = f"{split}[:{min(max_eval, len(examples))}]"  # a subset never replaces the full metric
    if max_eval is not None:
        examples = examples[:max_eval]
    backbone = backbone_for([servable], model=model, backbone=backbone)
    options = None
    if max_new_tokens is not None and task_type == "generation":
        from eptctl.backbones.decoding import GenerationOptions

        options = GenerationOptions(max_new_tokens=max_new_tokens)
        if max_new_tokens != servable.max_new_tokens:  # another budget: never replaces the metric training stored
            split_name = f"{split_name}[max_new_tokens={max_new_tokens}]"
    result = evaluate_servable(backbone, servable, examples, options=options)
    if store:
        registry.add_metrics(servable.record, [MetricValue(split_name, k, v) for k, v in result.metrics.items()])
    return {"ref": servable.record.ref, "id": servable.record.id, "split": split_name, "stored": store,
            "examples": len(examples),
            "truncated": result.truncated, "metric": servable.spec.metric, "metrics": result.metrics,
            "data_changed": data_changed}
