"""Does `torch.compile` of the frozen backbone make the default run faster on this CPU? Eager and compiled, one process.

    python -m bench compile [--precision fp32|bf16] [--steps 12] [--rows 128] [--mode default|reduce-overhead]

Loads the default backbone in ``--precision``, encodes rt-polarity, and times the default recipe's training steps
(batch 16, the label-score objective, length-bucketed batches, so the sequence length changes from batch to batch)
and one scoring pass of ``--rows`` validation rows: first with the backbone as it is (eager), then with
``torch.compile`` of its decoder stack (``dynamic=True``) on the same adapter start, the same batches and the same rows. Prints one row
per variant: the first step and the first scoring pass (for the compiled variant mostly compile time), the median
step after the first, a second scoring pass, their ratios to eager (below 1: faster), the largest difference of the
training loss to eager's and the accuracy on the scored rows, so a speed-up is only counted with results equal
within noise.
"""

from __future__ import annotations

import argparse
import statistics
import time


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench compile", description=__doc__.split("\n")[0])
    parser.add_argument("--precision", default="fp32", help="fp32 | bf16 (default fp32: the no-bf16-units case)")
    parser.add_argument("--steps", type=int, default=12, help="training steps timed per variant")
    parser.add_argument("--rows", type=int, default=128, help="validation rows scored per variant")
    parser.add_argument("--mode", default="default", help="torch.compile mode")
    return parser.parse_args(argv)


def run(quick: bool = False, argv: list[str] | None = None) -> dict:
    args = parse(list(argv or []))
    import torch

    from eptctl import backbones
    from eptctl.data import load_task
    from eptctl.data.packaged import BUILTINS
    from eptctl.engine.config import TrainConfig
    from eptctl.engine.encoding import encode_task
    from eptctl.engine.loop import build_optimizer, length_bucketed_batches, new_adapter
    from eptctl.engine.scoring import evaluate_encoded
    from eptctl.methods import EPTConfig

    steps, rows = (3, 32) if quick else (args.steps, args.rows)
    backbone = backbones.load(backbones.DEFAULT_MODEL, precision=args.precision)
    spec = BUILTINS["rt-polarity"].spec
    cfg = TrainConfig(objective="classify")
    method_cfg = EPTConfig().resolved(backbone.width)
    encoded = encode_task(backbone, spec, method_cfg.max_length, task_data=load_task(spec, seed=0))
    order = length_bucketed_batches([len(e.input_ids) for e in encoded.train], cfg.batch_size, 0, 0)[:steps]
    validation = encoded.validation[:rows]

    def one_variant(name: str) -> dict:
        adapter = new_adapter(backbone, method_cfg, spec.head_size, seed=0)
        optimizer, scheduler = build_optimizer(adapter, cfg, 75)
        times, losses = [], []
        for batch_rows in order:
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            batch = backbone.collate([encoded.train[i] for i in batch_rows], encoded.answers, train=True)
            loss = backbone.loss(adapter, batch.to(backbone.device), encoded.answers, cfg.objective)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            times.append(time.perf_counter() - start)
        adapter.eval()
        start = time.perf_counter()  # scoring runs without autograd already (eptctl.engine.scoring)
        scores = evaluate_encoded(backbone, adapter, validation, encoded.answers, cfg.eval_batch_size)
        first_pass = time.perf_counter() - start
        start = time.perf_counter()
        evaluate_encoded(backbone, adapter, validation, encoded.answers, cfg.eval_batch_size)
        second_pass = time.perf_counter() - start
        return {"variant": name, "first_step_s": round(times[0], 2),
                "median_step_s": round(statistics.median(times[1:] or times), 3),
                "first_pass_s": round(first_pass, 1), "second_pass_s": round(second_pass, 1),
                "losses": losses, "accuracy": scores.get("accuracy")}

    eager = one_variant("eager")
    # The backbone calls its decoder stack (``model.base_model``) directly, so that is the module to compile, in place.
    decoder = backbone.model.base_model
    decoder.compile(dynamic=True, mode=args.mode)
    try:
        compiled = one_variant(f"torch.compile({args.mode}, dynamic)")
    finally:
        decoder._compiled_call_impl = None  # back to eager
    table = []
    for row in (eager, compiled):
        diff = max(abs(a - b) for a, b in zip(row["losses"], eager["losses"]))
        table.append({**{k: v for k, v in row.items() if k != "losses"},
                      "step_vs_eager": round(row["median_step_s"] / eager["median_step_s"], 2),
                      "pass_vs_eager": round(row["second_pass_s"] / eager["second_pass_s"], 2),
                      "max_loss_diff": round(diff, 4)})
    return {"rows": table, "config": {"precision": backbone.precision, "threads": torch.get_num_threads(),
                                      "steps": steps, "rows_scored": len(validation), "mode": args.mode,
                                      "torch": torch.__version__}}
