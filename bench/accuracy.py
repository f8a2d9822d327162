"""Accuracy of pt, dept, ept and the two ablations at one step budget on the builtin tasks, default backbone.

Every variant has the same trainable-parameter budget (prompt length 40 x width, docs/method.md). Rows: one per
(task, variant, seed) with test/validation accuracy and the run's wall and CPU seconds, then one summary row per
variant (mean and standard deviation over tasks x seeds). A PNG of test accuracy versus training time per method is
written next to the JSON (.bench-out/accuracy.png).

Runs are appended to .bench-out/accuracy.partial.jsonl as they finish, and a rerun skips the ones already there, so a
long sweep can be stopped and continued. Environment: BENCH_SEEDS (default "0"), BENCH_TASKS, BENCH_ACCURACY_STEPS
(default 40), BENCH_MODEL, BENCH_REPORT_ONLY=1 (summarise the recorded runs, train nothing).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

VARIANTS = {  # name -> EPTConfig overrides
    "pt": {"method": "pt"},
    "dept": {"method": "dept"},
    "ept": {"method": "ept"},
    "ept --no-fusion": {"method": "ept", "fusion": False},
    "ept --no-projection": {"method": "ept", "projection": False},
}
OUT = Path(".bench-out")


def _settings(quick: bool) -> dict:
    if quick:
        return {"tasks": ["rt-polarity"], "seeds": [0], "steps": 4, "max_eval": 32, "eval_every": 4, "select": 32}
    return {
        "tasks": os.environ.get("BENCH_TASKS", "rt-polarity,rt-subjectivity,bbc-topic").split(","),
        "seeds": [int(s) for s in os.environ.get("BENCH_SEEDS", "0").split(",")],
        "steps": int(os.environ.get("BENCH_ACCURACY_STEPS", "40")),
        "max_eval": 200,  # final evaluation: the first 200 validation and test rows (same rows for every run)
        "eval_every": None,  # 3 evaluations per run to pick the best step ...
        "select": 64,  # ... on the first 64 validation rows
    }


def run(quick: bool = False) -> list[dict]:
    import torch

    from eptctl import backbones, data
    from eptctl.engine.encoding import encode_task
    from eptctl.methods import EPTConfig
    from eptctl.engine.config import TrainConfig
    from eptctl.engine.loop import FitTask, fit

    s = _settings(quick)
    partial = OUT / ("accuracy.quick.partial.jsonl" if quick else "accuracy.partial.jsonl")
    partial.parent.mkdir(parents=True, exist_ok=True)
    done = [json.loads(line) for line in partial.read_text().splitlines()] if partial.exists() else []
    done_keys = {(r["task"], r["variant"], r["seed"], r["steps"]) for r in done}
    # BENCH_REPORT_ONLY=1: table and plot of the runs recorded so far, without training anything more.
    report_only = os.environ.get("BENCH_REPORT_ONLY") == "1"
    backbone = None if report_only else backbones.load(os.environ.get("BENCH_MODEL", backbones.DEFAULT_MODEL))
    encoded = {}
    for seed in [] if report_only else s["seeds"]:
        for task in s["tasks"]:
            for variant, overrides in VARIANTS.items():
                if (task, variant, seed, s["steps"]) in done_keys:
                    continue
                cfg = EPTConfig(**overrides).resolved(backbone.width)
                if task not in encoded:
                    spec = data.resolve_task(task)
                    encoded[task] = encode_task(backbone, spec, cfg.max_length, max_eval=s["max_eval"])
                enc = encoded[task]
                tc = TrainConfig(steps=s["steps"], seed=seed, max_eval_examples=s["select"], objective="lm",
                                 eval_every=s["eval_every"] or max(1, s["steps"] // 3))
                wall, cpu = time.perf_counter(), time.process_time()
                result = fit(backbone, enc.train, enc.validation, enc.answers, cfg, tc,
                             task=FitTask(enc.spec.num_labels, enc.spec.metric, test_set=enc.test))
                row = {"task": task, "variant": variant, "seed": seed, "steps": s["steps"],
                       "test_acc": round(result.metrics["test"]["accuracy"], 4),
                       "val_acc": round(result.metrics["validation"]["accuracy"], 4),
                       "best_step": result.best_step,
                       "params": result.params_by_group["total"],
                       "wall_s": round(time.perf_counter() - wall, 1),
                       "cpu_s": round(time.process_time() - cpu, 1),
                       "threads": torch.get_num_threads()}
                done.append(row)
                with partial.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
    rows = [r for r in done if r["task"] in s["tasks"] and r["seed"] in s["seeds"] and r["steps"] == s["steps"]]
    if not rows:
        return []
    summary = summarise(rows)
    plot(rows, summary, OUT / ("accuracy.quick.png" if quick else "accuracy.png"))
    return rows + summary


def summarise(rows: list[dict]) -> list[dict]:
    out = []
    for variant in VARIANTS:
        mine = [r for r in rows if r["variant"] == variant]
        if not mine:
            continue
        tests = [r["test_acc"] for r in mine]
        per_task = {}
        for r in mine:
            per_task.setdefault(r["task"], []).append(r["test_acc"])
        out.append({"task": "mean over " + ",".join(per_task), "variant": variant, "seed": f"n={len(mine)}",
                    "steps": mine[0]["steps"],
                    "test_acc": round(statistics.mean(tests), 4),
                    "val_acc": round(statistics.mean(r["val_acc"] for r in mine), 4),
                    "best_step": "",
                    "params": mine[0]["params"],
                    "wall_s": round(statistics.mean(r["wall_s"] for r in mine), 1),
                    "cpu_s": round(statistics.mean(r["cpu_s"] for r in mine), 1),
                    "threads": mine[0]["threads"],
                    "test_acc_std_over_seeds": _seed_std(per_task)})
    return out


def _seed_std(per_task: dict[str, list[float]]) -> str:
    """Mean over tasks of the standard deviation over seeds (spread from seeds, not from task difficulty)."""
    stds = [statistics.stdev(v) for v in per_task.values() if len(v) > 1]
    return f"{statistics.mean(stds):.4f}" if stds else "n/a (1 seed)"


def plot(rows: list[dict], summary: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    markers = dict(zip(VARIANTS, "os^vD"))
    for i, variant in enumerate(VARIANTS):
        mine = [r for r in rows if r["variant"] == variant]
        if not mine:
            continue
        color = f"C{i}"
        ax.scatter([r["wall_s"] for r in mine], [r["test_acc"] for r in mine], marker=markers[variant], alpha=0.35,
                   color=color)
        mean = next(m for m in summary if m["variant"] == variant)
        ax.scatter([mean["wall_s"]], [mean["test_acc"]], marker=markers[variant], s=120, edgecolors="black",
                   color=color, label=f"{variant} (mean of {len(mine)} runs {mean['test_acc']:.3f})")
    ax.set_xlabel("training wall time per run, s (incl. evaluation)")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"Accuracy vs training time, {rows[0]['steps']} steps, tasks: {', '.join(sorted({r['task'] for r in rows}))}",
                 fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
