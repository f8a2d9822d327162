"""Continual multi-task runs: tasks in order, each started from the fusion of the adapters before it.

The backbone is frozen and stored prompts are immutable, so re-evaluating task j after task i > j was learned must give
task j's accuracy back: forgetting is 0 up to numerical noise. Forward transfer is measured against a random-init run
of the same task at the same step budget (trained, evaluated, not registered).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from eptctl import backbones
from eptctl.core import events
from eptctl.engine.config import TrainConfig, split_options
from eptctl.engine.encoding import encode_task, new_token_budget
from eptctl.engine.loop import FitTask, fit
from eptctl.methods import EPTConfig
from eptctl.workflows.evaluation import evaluate_stored
from eptctl.workflows.train import TRAIN_OPTIONS, DataLimits, train_task
from eptctl.workflows.transfer import Source, TransferOptions


def continual(registry, tasks: Sequence[str], *, method_cfg: EPTConfig = EPTConfig(),
              train_cfg: TrainConfig = TrainConfig(), transfer: bool = True, baseline: bool = True,
              **options) -> dict:
    """Learn ``tasks`` in order, each (with ``transfer``) from the fusion of the adapters before it, all registered.

    Returns the test matrix of each task's primary metric (task x stage; accuracy for classification),
    forgetting per task, the largest difference between a
    re-evaluation and the stored metric, and (with ``baseline``) forward transfer against random-init runs.
    ``options`` are :func:`~eptctl.workflows.train.train_task`'s keyword groups (``limits``, ``loading``, ``run``,
    ``record``, whole or field by field), passed to every stage; ``train_examples`` trains every stage (and its
    random-init baseline) on the same K examples per task (few-shot forward transfer), and every adapter is tagged
    ``continual``. Raises ``EptctlError`` for an unknown task or bad data before that task's registration.
    """
    groups = split_options(options, TRAIN_OPTIONS, "continual")
    emit = groups["run"].on_event or events.ignore
    loading = groups["loading"]
    backbone = loading.backbone or backbones.load(loading.model, trust_remote_code=loading.trust_remote_code)
    groups["loading"] = dataclasses.replace(loading, backbone=backbone)  # loaded once, shared by every stage
    groups["record"] = dataclasses.replace(groups["record"], tags=("continual", *groups["record"].tags))
    records, rows = [], []
    matrix: dict[str, list[float | None]] = {t: [None] * len(tasks) for t in tasks}
    forward = {}
    metric_of: dict[str, str] = {}
    for stage, task in enumerate(tasks):
        init = [Source(rec.id, 1.0) for rec in records] if transfer and records else None
        emit(events.StageStarted(stage=stage, task=task, init_from=[r.ref for r in records] if init else []))
        outcome = train_task(task, registry=registry, method_cfg=method_cfg, train_cfg=train_cfg,
                             transfer=None if init is None else TransferOptions(init), **groups)
        records.append(outcome.record)
        metric_of[task] = outcome.spec.metric
        for j, rec in enumerate(records):
            result = evaluate_stored(registry, rec.id, split="test", max_eval=groups["limits"].max_eval,
                                     store=False, backbone=backbone)
            matrix[tasks[j]][stage] = result["metrics"][metric_of[tasks[j]]]
        if transfer and baseline and stage > 0:
            forward[task] = _forward_transfer(backbone, outcome, method_cfg, train_cfg, groups["limits"])
            emit(events.ForwardTransfer(task=task, **forward[task]))
        rows.append({"stage": stage, "task": task, "ref": outcome.record.ref,
                     "parents": [p.parent_id for p in outcome.record.parents]})
    return _report(tasks, records, rows, matrix, forward, metric_of, transfer, groups["limits"].train_examples)


def _forward_transfer(backbone, outcome, method_cfg: EPTConfig, train_cfg: TrainConfig, limits: DataLimits) -> dict:
    """Test metric of the stage's fused start against a random-init run of the same task and budget (not stored)."""
    encoded = encode_task(backbone, outcome.spec, outcome.record.config["max_length"],
                          max_train=limits.max_train, max_eval=limits.max_eval, seed=train_cfg.seed,
                          train_examples=limits.train_examples)
    spec = outcome.spec
    new_tokens = new_token_budget(encoded.train, train_cfg.max_target_length)
    scratch = fit(backbone, encoded.train, encoded.validation, encoded.answers, method_cfg, train_cfg,
                  task=FitTask.of(spec, new_tokens, test_set=encoded.test),
                  on_event=events.current())  # its progress, where a `with ConsoleProgress():` block shows it
    fused_acc = outcome.result.metrics["test"][spec.metric]
    random_acc = scratch.metrics["test"][spec.metric]
    return {"fused_init": fused_acc, "random_init": random_acc, "delta": fused_acc - random_acc}


def _report(tasks, records, rows, matrix, forward, metric_of, transfer: bool, train_examples: int | None) -> dict:
    """The run's report: the matrix, forgetting, re-evaluation against stored metrics, forward transfer."""
    forgetting = {t: matrix[t][i] - matrix[t][-1] for i, t in enumerate(tasks)}
    stored = {rec.task: rec.metric(metric_of[rec.task], "test") for rec in records}
    return {
        "tasks": list(tasks),
        "adapters": rows,
        "matrix": matrix,
        "forgetting": forgetting,
        "max_forgetting": max(abs(v) for v in forgetting.values()),
        "reeval_vs_stored_max_diff": max(abs(matrix[t][-1] - stored[t]) for t in tasks),
        "forward_transfer": forward,
        "transfer": transfer,
        "metrics": metric_of,
        "train_examples": train_examples,
    }
