"""Would a uniform average of the adapter over the last N steps beat the default's last step? Validation decides.

    python -m bench tail-average [--seeds 0,1,2] [--precision fp32|bf16] [--tails 5,10,20,30,40]

Trains the default recipe of `eptctl train rt-polarity` (75 steps, the label-score objective, the last step kept)
through the library, once per seed, keeping a copy of the adapter after each of the last max(--tails) steps. The
"last" row is exactly the default run's result; each "tail N" row scores the uniform mean of the adapter's
parameters over the last N steps (stochastic weight averaging's form, Izmailov et al. 2018, over the tail of one
run) on the same validation and test rows. Prints one row per seed and variant and the means over seeds.
"""

from __future__ import annotations

import argparse
import statistics


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench tail-average", description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--precision", default=None, help="fp32 | bf16 (default: eptctl's choice for this CPU)")
    parser.add_argument("--tails", default="5,10,20,30,40", help="tail lengths N, in steps")
    return parser.parse_args(argv)


def run(quick: bool = False, argv: list[str] | None = None) -> dict:
    args = parse(list(argv or []))
    import torch

    from eptctl import backbones
    from eptctl.core import events
    from eptctl.data import load_task
    from eptctl.data.packaged import BUILTINS
    from eptctl.engine.config import TrainConfig
    from eptctl.engine.encoding import encode_task
    from eptctl.engine.loop import FitRun, FitTask, fit, new_adapter
    from eptctl.engine.scoring import evaluate_encoded
    from eptctl.methods import EPTConfig

    tails = sorted(int(t) for t in args.tails.split(","))
    backbone = backbones.load(backbones.DEFAULT_MODEL, precision=args.precision)
    spec = BUILTINS["rt-polarity"].spec
    method_cfg = EPTConfig().resolved(backbone.width)
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        cfg = TrainConfig(seed=seed, objective="classify", **({"steps": 6} if quick else {}))
        task_data = load_task(spec, seed=seed, max_eval=40 if quick else None)
        encoded = encode_task(backbone, spec, method_cfg.max_length, task_data=task_data)
        total = cfg.total_steps(len(encoded.train))
        adapter = new_adapter(backbone, method_cfg, spec.head_size, seed)
        kept: dict[int, dict[str, torch.Tensor]] = {}

        def keep(event, adapter=adapter, kept=kept, total=total) -> None:
            if isinstance(event, events.StepDone) and event.step > total - tails[-1]:
                kept[event.step] = {k: v.detach().float().clone() for k, v in adapter.state_dict().items()}

        result = fit(backbone, encoded.train, encoded.validation, encoded.answers, method_cfg, cfg,
                     task=FitTask(spec.head_size, spec.metric, test_set=encoded.test),
                     run=FitRun(adapter=adapter, on_event=keep))
        rows.append({"seed": seed, "variant": "last", "steps_averaged": 1,
                     "validation": result.metrics["validation"]["accuracy"],
                     "test": result.metrics["test"]["accuracy"]})
        last = {k: v.clone() for k, v in adapter.state_dict().items()}
        for n in tails:
            steps = sorted(kept)[-n:]
            mean = {k: torch.stack([kept[s][k] for s in steps]).mean(0).to(v.dtype) for k, v in last.items()}
            adapter.load_state_dict(mean)
            adapter.eval()
            scores = {split: evaluate_encoded(backbone, adapter, getattr(encoded, split), encoded.answers,
                                              cfg.eval_batch_size)["accuracy"] for split in ("validation", "test")}
            rows.append({"seed": seed, "variant": f"tail {n}", "steps_averaged": len(steps), **scores})
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    means = [{"variant": v,
              "validation_mean": round(statistics.mean(r["validation"] for r in rows if r["variant"] == v), 4),
              "test_mean": round(statistics.mean(r["test"] for r in rows if r["variant"] == v), 4)}
             for v in variants]
    return {"rows": rows, "means": means, "precision": backbone.precision, "threads": torch.get_num_threads()}
