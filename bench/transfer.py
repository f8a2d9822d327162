"""Forward transfer on the builtin tasks with the default backbone: fused init from a source adapter vs random init,
at equal small step budgets. Rows: validation accuracy every few steps (the curve) and test accuracy at the end.

Writes a PNG of accuracy versus steps (both inits, each target) next to the JSON (.bench-out/transfer.png).
Uses $EPTCTL_HOME's registry: the source is `rt-polarity@best` when it exists (trained with the defaults), else it is
trained first with the defaults.
"""

from __future__ import annotations

import os
from pathlib import Path

# BENCH_TRANSFER_SOURCE / BENCH_TRANSFER_TARGETS (comma-separated) choose the direction.
SOURCE = os.environ.get("BENCH_TRANSFER_SOURCE", "rt-polarity")
TARGETS = tuple(os.environ.get("BENCH_TRANSFER_TARGETS", "rt-subjectivity,bbc-topic").split(","))


def run(quick: bool = False) -> list[dict]:
    from eptctl import backbones
    from eptctl.engine.encoding import encode_task
    from eptctl.workflows.tasks import resolve_spec
    from eptctl.workflows.train import train_task
    from eptctl.methods import EPTConfig
    from eptctl.engine.config import TrainConfig
    from eptctl.engine.loop import fit, new_adapter
    from eptctl.engine.scoring import evaluate_encoded
    from eptctl.workflows.transfer import Source, fused_init
    from registry import Registry

    steps, every, n_eval = (20, 5, 100) if quick else (40, 10, 200)
    reg = Registry()
    backbone = backbones.load(os.environ.get("BENCH_MODEL", backbones.DEFAULT_MODEL))
    cfg = EPTConfig().resolved(backbone.width)
    try:
        source = reg.resolve(f"{SOURCE}@best")
    except Exception:
        source = train_task(SOURCE, registry=reg, backbone=backbone,
                                 train_cfg=TrainConfig(steps=40 if quick else 150)).record
    rows, curves = [], {}
    for target in TARGETS:
        spec = resolve_spec(target, reg)
        enc = encode_task(backbone, spec, cfg.max_length, max_eval=n_eval)
        for init in ("random", "fused"):
            tc = TrainConfig(steps=steps, eval_every=every, max_eval_examples=n_eval)
            init_tensors = None
            if init == "fused":
                template = new_adapter(backbone, cfg, spec.num_labels, tc.seed)
                init_tensors, _ = fused_init(reg, [Source(source.id, 1.0)], backbone, template)
            start = new_adapter(backbone, cfg, spec.num_labels, tc.seed, init_tensors)
            curve = [(0, evaluate_encoded(backbone, start, enc.validation, enc.answers)["accuracy"])]
            result = fit(backbone, enc.train, enc.validation, enc.answers, cfg, tc, num_labels=spec.num_labels,
                           test_set=enc.test, init_tensors=init_tensors)
            curve += [(h["step"], h["validation"]["accuracy"]) for h in result.history if "validation" in h]
            curves[(target, init)] = curve
            rows.append({"source": source.ref, "target": target, "init": init, "steps": steps,
                         "val_acc_step0": round(curve[0][1], 4), "val_acc_final": round(curve[-1][1], 4),
                         "test_acc": round(result.metrics["test"]["accuracy"], 4),
                         "curve": " ".join(f"{s}:{a:.3f}" for s, a in curve),
                         "seconds": round(result.duration_s, 1)})
    for target in TARGETS:
        fused = next(r for r in rows if r["target"] == target and r["init"] == "fused")
        random_ = next(r for r in rows if r["target"] == target and r["init"] == "random")
        rows.append({"source": source.ref, "target": target, "init": "fused - random", "steps": steps,
                     "val_acc_step0": round(fused["val_acc_step0"] - random_["val_acc_step0"], 4),
                     "val_acc_final": round(fused["val_acc_final"] - random_["val_acc_final"], 4),
                     "test_acc": round(fused["test_acc"] - random_["test_acc"], 4), "curve": "", "seconds": 0})
    _plot(curves, source.ref, Path(".bench-out") / f"transfer-{SOURCE}.png")
    return rows


def _plot(curves: dict, source: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(TARGETS), figsize=(5 * len(TARGETS), 3.6), sharey=False, squeeze=False)
    for ax, target in zip(axes[0], TARGETS):
        for init, style in (("random", "--o"), ("fused", "-o")):
            xs, ys = zip(*curves[(target, init)])
            ax.plot(xs, ys, style, label=f"{init} init" + (f" (from {source})" if init == "fused" else ""))
        ax.set_title(f"{target}")
        ax.set_xlabel("training steps (batch 16)")
        ax.set_ylabel("validation accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("EPT on SmolLM2-135M: fused vs random initialisation")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
