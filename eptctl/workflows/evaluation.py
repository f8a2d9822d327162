"""Re-evaluating stored adapters (library part of `eptctl eval`)."""

from __future__ import annotations

from pathlib import Path

from eptctl import data
from eptctl.core.errors import EptctlError
from eptctl.workflows.inference import backbone_for, evaluate_examples, load_adapter


def evaluate_stored(registry, ref: str, *, split: str = "test", data_path: str | None = None,
                    text_column: str = "text", text_pair_column: str | None = None, label_column: str = "label",
                    max_eval: int | None = None, model: str | None = None, store: bool = True,
                    backbone=None) -> dict:
    """Evaluate adapter ``ref`` on a split of its task (or on a labelled file) and store the metrics.

    Returns ``{"ref", "id", "split", "examples", "metrics"}``. Raises ``EptctlError`` for an unknown reference or
    split, unreadable data, or a backbone other than the adapter's.
    """
    from registry import MetricValue

    servable = load_adapter(registry, ref)
    if data_path is not None:
        examples = data.read_examples(data_path, text_column=text_column, text_pair_column=text_pair_column,
                                      label_column=label_column, labels=servable.spec.labels)
        split_name = f"data:{Path(data_path).name}"
    else:
        if split not in ("train", "validation", "test"):
            raise EptctlError(f"unknown split {split!r}", hint="use --split validation or --split test")
        task_data = data.load_task(servable.spec, max_eval=max_eval, seed=servable.record.run.seed
                                   if servable.record.run else 0)
        examples = task_data.split(split)
        split_name = split
    if max_eval is not None:
        examples = examples[:max_eval]
    backbone = backbone_for([servable], model=model, backbone=backbone)
    metrics = evaluate_examples(backbone, servable, examples)
    if store:
        registry.add_metrics(servable.record, [MetricValue(split_name, k, v) for k, v in metrics.items()])
    return {"ref": servable.record.ref, "id": servable.record.id, "split": split_name, "examples": len(examples),
            "metrics": metrics}
