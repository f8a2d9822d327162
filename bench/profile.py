"""Where the time of one default `eptctl train rt-polarity` goes: conversion/load, encoding, steps, evaluations.

    python -m bench profile [--precision fp32|bf16] [--seed 0] [--warm]

Runs the default recipe through the library (`eptctl.workflows.train.train_task`, what the command calls) in a fresh
EPTCTL_HOME (so the one-time model conversion is counted; `--warm` reuses one that already holds the converted
model), with wall-clock timers around each part, and prints one row per part with its share of the total. Set
`--precision fp32` on any machine to reproduce the arithmetic of a CPU without bf16 units. Run it on an idle
machine: the numbers are the time a user waits.
"""

from __future__ import annotations

import argparse
import collections
import os
import tempfile
import time

WARM_HOME = os.path.join(tempfile.gettempdir(), "eptctl-bench-profile-home")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench profile", description=__doc__.split("\n")[0])
    parser.add_argument("--precision", default="fp32", help="fp32 | bf16 (default fp32: the no-bf16-units case)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--task", default="rt-polarity")
    parser.add_argument("--warm", action="store_true", help=f"reuse {WARM_HOME} (model already converted)")
    return parser.parse_args(argv)


def run(quick: bool = False, argv: list[str] | None = None) -> dict:
    args = parse(list(argv or []))
    os.environ["EPTCTL_HOME"] = WARM_HOME if args.warm else tempfile.mkdtemp(prefix="eptctl-bench-profile-")
    os.environ["EPTCTL_MODELS"] = os.path.join(os.environ["EPTCTL_HOME"], "models")  # cold: the conversion counts
    seconds: dict[str, float] = collections.defaultdict(float)
    calls: collections.Counter = collections.Counter()

    def timed(owner, name: str, part: str) -> None:
        inner = getattr(owner, name)

        def wrapper(*a, **k):
            start = time.perf_counter()
            try:
                return inner(*a, **k)
            finally:
                seconds[part] += time.perf_counter() - start
                calls[part] += 1

        setattr(owner, name, wrapper)

    t0 = time.perf_counter()
    import torch

    from eptctl import backbones
    from eptctl.core import events
    from eptctl.engine import loop
    from eptctl.engine.config import TrainConfig
    from eptctl.workflows import train as workflow
    from registry import Registry

    seconds["imports"] = time.perf_counter() - t0
    calls["imports"] = 1
    timed(backbones, "load", "model conversion + load")
    timed(workflow, "encode_task", "tokenise + encode")
    timed(loop, "_forward_backward", "training: forward + backward")
    timed(torch.optim.AdamW, "step", "training: optimiser")
    timed(loop.training_state, "save", "training: checkpoints")
    timed(loop, "evaluate_encoded", "evaluation passes")
    rows_scored = []

    def on_event(event) -> None:
        if isinstance(event, events.Evaluated):
            rows_scored.append(event.examples)

    train_cfg = TrainConfig(seed=args.seed, **({"steps": 10, "max_eval_examples": 50} if quick else {}))
    backbone = backbones.load(backbones.DEFAULT_MODEL, precision=args.precision)
    outcome = workflow.train_task(args.task, registry=Registry(), backbone=backbone, train_cfg=train_cfg,
                                  max_eval=100 if quick else None, on_event=on_event)
    total = time.perf_counter() - t0
    sizes = outcome.record.summary.get("data_sizes", {})
    final_rows = sizes.get("validation", 0) + sizes.get("test", 0)
    rows = [{"part": part, "seconds": round(s, 1), "calls": calls[part], "share": f"{s / total:.0%}"}
            for part, s in seconds.items()]
    accounted = sum(seconds.values())
    rows.append({"part": "other (registry, artifacts, events)", "seconds": round(total - accounted, 1), "calls": "",
                 "share": f"{(total - accounted) / total:.0%}"})
    rows.append({"part": "total", "seconds": round(total, 1), "calls": "", "share": "100%"})
    steps = outcome.result.steps
    return {"rows": rows,
            "per_unit": {"seconds_per_step": round(seconds["training: forward + backward"] / max(1, steps), 3),
                         "rows_scored": sum(rows_scored) + final_rows,
                         "seconds_per_scored_row": round(seconds["evaluation passes"] / max(1, sum(rows_scored)
                                                                                          + final_rows), 4)},
            "result": {"precision": backbone.precision, "threads": torch.get_num_threads(), "steps": steps,
                       "best_step": outcome.result.best_step,
                       "test_accuracy": outcome.result.metrics["test"]["accuracy"],
                       "validation_accuracy": outcome.result.metrics["validation"]["accuracy"],
                       "max_loss_after_warmup_vs_first": _spike(outcome.result.history, steps)}}


def _spike(history: list[dict], steps: int) -> float | None:
    losses = [(h["step"], h["loss"]) for h in history if "loss" in h]
    after = [loss for step, loss in losses if step > max(1, round(0.1 * steps))]
    return round(max(after) / losses[0][1], 3) if losses and after else None
