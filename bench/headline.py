"""bbc-headline on the default backbone: ROUGE-L of the untrained prompt against `eptctl train bbc-headline`.

For each seed (BENCH_SEEDS, default "0"): the untrained prompt (the adapter `fit` starts from: DePT init of the
prompt, A = 0 so no offset yet) is scored on the 500-row test split, then `train_task` runs exactly what
`eptctl train bbc-headline --seed S` runs (defaults, a throw-away registry) and its stored test metrics are read
back. Wall time is the whole train command (model load, training, in-training and final evaluations). Precision is
eptctl's default for the CPU (bf16 where the CPU has bf16 units) unless BENCH_PRECISION is set (then both the
untrained score and the train command use it).

BENCH_STEPS and BENCH_EVAL_EVERY override the default steps and in-training evaluations (docs/tasks.md's table used
the defaults of the time: BENCH_STEPS=150 BENCH_EVAL_EVERY=30).
BENCH_HOME=DIR keeps the registries (DIR/seed-S) instead of throwing them away, to look at the adapters after.
--quick: the tiny random backbone, 6 steps, 16 evaluation rows (checks the harness, numbers mean nothing).
"""

from __future__ import annotations

import os
import tempfile
import time


def _untrained(backbone, spec, task_data, seed: int, max_eval: int | None) -> dict:
    from eptctl.engine.config import TrainConfig
    from eptctl.engine.encoding import encode_task, new_token_budget
    from eptctl.engine.loop import new_adapter
    from eptctl.engine.scoring import TaskKind, evaluate_encoded
    from eptctl.methods import EPTConfig

    cfg = EPTConfig().resolved(backbone.width)
    tc = TrainConfig(seed=seed)
    encoded = encode_task(backbone, spec, cfg.max_length, task_data=task_data, max_target_length=tc.max_target_length)
    adapter = new_adapter(backbone, cfg, spec.head_size, seed)
    kind = TaskKind.of(spec, max_new_tokens=new_token_budget(encoded.train, tc.max_target_length))
    test = encoded.test[:max_eval] if max_eval else encoded.test
    return evaluate_encoded(backbone, adapter.eval(), test, encoded.answers, kind=kind)


def run(quick: bool = False) -> dict:
    from eptctl import backbones, data
    from eptctl.engine.config import TrainConfig
    from eptctl.workflows.train import train_task
    from registry import Registry

    model = "tiny-random-llama" if quick else backbones.DEFAULT_MODEL
    seeds = [int(s) for s in os.environ.get("BENCH_SEEDS", "0").split(",")]
    precision = os.environ.get("BENCH_PRECISION")
    max_eval = 16 if quick else None
    overrides = {name: int(os.environ[var]) for name, var in (("steps", "BENCH_STEPS"), ("eval_every", "BENCH_EVAL_EVERY"))
                 if os.environ.get(var)}
    backbone = backbones.load(model, **({"precision": precision} if precision else {}))
    spec = data.builtin_task("bbc-headline")
    task_data = data.load_task(spec, max_eval=max_eval)
    rows = []
    for seed in seeds:
        before = _untrained(backbone, spec, task_data, seed, max_eval)
        keep = os.environ.get("BENCH_HOME")
        with tempfile.TemporaryDirectory() as scratch:
            home = os.path.join(keep, f"seed-{seed}") if keep else scratch
            os.makedirs(home, exist_ok=True)
            os.environ["EPTCTL_HOME"] = home
            started = time.perf_counter()
            # as `eptctl train --precision P` does: the command loads its own backbone (inside the timed region)
            trained_on = backbone if quick else (backbones.load(model, precision=precision) if precision else None)
            outcome = train_task("bbc-headline", registry=Registry(f"sqlite:///{home}/registry.db"), model=model,
                                 train_cfg=TrainConfig(seed=seed, **({"steps": 6} if quick else overrides)),
                                 max_eval=max_eval, backbone=trained_on)
            wall = time.perf_counter() - started
        after = outcome.result.metrics["test"]
        # trained_on: the device and precision the train command used, e.g. "cpu (bf16)"
        rows.append({"seed": seed, "trained_on": outcome.record.run.device, "test_rows": len(task_data.test),
                     "untrained_rouge_l": round(before["rouge_l"], 4), "trained_rouge_l": round(after["rouge_l"], 4),
                     "trained_exact_match": round(after["exact_match"], 4), "trained_chrf": round(after["chrf"], 2),
                     "best_step": outcome.result.best_step, "wall_s": round(wall, 1)})
    return {"rows": rows, "model": model}
