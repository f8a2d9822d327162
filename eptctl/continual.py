"""Continual multi-task runs: tasks in order, each started from the fusion of the adapters before it.

The backbone is frozen and stored prompts are immutable, so re-evaluating task j after task i > j was learned must give
task j's accuracy back: forgetting is 0 up to numerical noise. Forward transfer is measured against a random-init run
of the same task at the same step budget (trained, evaluated, not registered).
"""

from __future__ import annotations

from typing import Callable, Sequence

from eptctl import models, runs
from eptctl.evaluation import evaluate_stored
from eptctl.methods import EPTConfig
from eptctl.training import TrainConfig, train
from eptctl.transfer import Source


def continual(registry, tasks: Sequence[str], *, model: str = models.DEFAULT_MODEL,
              method_cfg: EPTConfig = EPTConfig(), train_cfg: TrainConfig = TrainConfig(), transfer: bool = True,
              baseline: bool = True, max_train: int | None = None, max_eval: int | None = None, backbone=None,
              on_event: Callable[[dict], None] | None = None, command_line: str | None = None) -> dict:
    emit = on_event or (lambda event: None)
    backbone = backbone or models.load(model)
    records, rows = [], []
    matrix: dict[str, list[float | None]] = {t: [None] * len(tasks) for t in tasks}
    forward = {}
    for stage, task in enumerate(tasks):
        init = [Source(rec.id, 1.0) for rec in records] if transfer and records else None
        emit({"event": "stage", "stage": stage, "task": task, "init_from": [r.ref for r in records] if init else []})
        outcome = runs.train_task(task, registry=registry, backbone=backbone, method_cfg=method_cfg,
                                  train_cfg=train_cfg, max_train=max_train, max_eval=max_eval, init_from=init,
                                  tags=["continual"], command_line=command_line, on_event=on_event)
        records.append(outcome.record)
        for j, rec in enumerate(records):
            result = evaluate_stored(registry, rec.id, split="test", max_eval=max_eval, store=False,
                                     backbone=backbone)
            matrix[tasks[j]][stage] = result["metrics"]["accuracy"]
        if transfer and baseline and stage > 0:
            encoded = runs.encode_task(backbone, outcome.spec, outcome.record.config["max_length"],
                                       max_train=max_train, max_eval=max_eval, seed=train_cfg.seed)
            scratch = train(backbone, encoded.train, encoded.validation, encoded.answers, method_cfg, train_cfg,
                            num_labels=outcome.spec.num_labels, test_set=encoded.test)
            fused_acc = outcome.result.metrics["test"]["accuracy"]
            random_acc = scratch.metrics["test"]["accuracy"]
            forward[task] = {"fused_init": fused_acc, "random_init": random_acc, "delta": fused_acc - random_acc}
            emit({"event": "forward_transfer", "task": task, **forward[task]})
        rows.append({"stage": stage, "task": task, "ref": outcome.record.ref,
                     "parents": [p.parent_id for p in outcome.record.parents]})
    forgetting = {t: matrix[t][i] - matrix[t][-1] for i, t in enumerate(tasks)}
    stored = {rec.task: rec.metric("accuracy", "test") for rec in records}
    return {
        "tasks": list(tasks),
        "adapters": rows,
        "matrix": matrix,
        "forgetting": forgetting,
        "max_forgetting": max(abs(v) for v in forgetting.values()),
        "reeval_vs_stored_max_diff": max(abs(matrix[t][-1] - stored[t]) for t in tasks),
        "forward_transfer": forward,
        "transfer": transfer,
    }
