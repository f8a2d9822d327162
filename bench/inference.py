"""Inference throughput: materialized EPT adapters (single-task and mixed-task batches) vs PEFT prompt tuning.

Variants, all scoring the two rt-polarity labels for validation rows in the task template, batches of BENCH_BATCH
(default 32) sorted by length as eptctl's evaluation does:
  eptctl ept single: one materialized EPT adapter (s=60 prompt + the folded embedding offset) per batch;
  eptctl ept mixed: three different EPT adapters in every batch, rows assigned round-robin, one forward pass;
  eptctl pt-100 single: a materialized plain 100-token prompt;
  peft pt-100: PEFT PromptTuningConfig(100) called as its users call it (input_ids, attention_mask -> logits), label
  scores read at each row's last token.
Timing interleaves the variants pass by pass over the same rows; examples/s from the median pass.
Environment: BENCH_BACKBONES (tiny, t5-small, smollm2), BENCH_ROUNDS, BENCH_BATCH, BENCH_ROWS, BENCH_DEVICE.
"""

from __future__ import annotations

import os
import statistics
import time

from bench.step_time import BACKBONES, BUDGET_LENGTH, _sync, budget_config, padded, peft_prompt_model, rows_of_backbones

VARIANTS = ("eptctl ept single", "eptctl ept mixed (3 adapters)", "eptctl pt-100 single", "peft pt-100")


def _settings(quick: bool) -> dict:
    return {
        "backbones": os.environ.get("BENCH_BACKBONES", "tiny,t5-small" if quick else "tiny,smollm2").split(","),
        "rounds": int(os.environ.get("BENCH_ROUNDS", "3" if quick else "5")),
        "batch": int(os.environ.get("BENCH_BATCH", "32")),
        "rows": int(os.environ.get("BENCH_ROWS", "64" if quick else "128")),
        "device": os.environ.get("BENCH_DEVICE", "cpu"),
    }


def _materialized(backbone, method: str, seed: int):
    import torch

    from eptctl.engine.loop import new_adapter

    adapter = new_adapter(backbone, budget_config(backbone, method), num_labels=2, seed=seed)
    with torch.no_grad():  # move away from the identity init so the offset is a real, non-zero tensor
        for p in adapter.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return adapter.materialize().to(backbone.device)


def _eptctl_pass(backbone, sources, encoded, answers, batch_size: int, mixed: bool):
    import torch

    from eptctl.engine.scoring import eval_batches

    def run_pass() -> None:
        with torch.no_grad():
            for idx in eval_batches([len(e.input_ids) for e in encoded], batch_size):
                index = [i % len(sources) for i in idx] if mixed else None
                batch = backbone.collate([encoded[i] for i in idx], None, train=False, adapter_index=index)
                backbone.score(sources, batch.to(backbone.device), [answers] * len(sources))

    return run_pass


def _peft_pass(backbone, encoded, answers, batch_size: int):
    import torch

    from eptctl.engine.scoring import eval_batches

    model = peft_prompt_model(backbone, BUDGET_LENGTH)
    model.eval()
    pad = backbone.tokenizer.pad_token_id
    label_ids = [a[0] for a in answers.answers]
    dev = backbone.device

    def run_pass() -> None:
        with torch.no_grad():
            for idx in eval_batches([len(e.input_ids) for e in encoded], batch_size):
                rows = [encoded[i].input_ids for i in idx]
                width = max(map(len, rows))
                ids, mask = padded(rows, width, pad), padded([[1] * len(r) for r in rows], width, 0)
                if backbone.family == "causal":
                    logits = model(input_ids=ids.to(dev), attention_mask=mask.to(dev)).logits
                    last = BUDGET_LENGTH + mask.sum(1) - 1
                    torch.log_softmax(logits[torch.arange(len(rows)), last.to(dev)].float(), -1)[:, label_ids]
                else:  # seq2seq: one decoder step from the start token scores single-token answers
                    start = torch.full((len(rows), 1), backbone.model.config.decoder_start_token_id, dtype=torch.long)
                    logits = model(input_ids=ids.to(dev), attention_mask=mask.to(dev),
                                   decoder_input_ids=start.to(dev)).logits
                    torch.log_softmax(logits[:, 0].float(), -1)[:, label_ids]

    return run_pass


def time_backbone(short: str, s: dict) -> list[dict]:
    from eptctl import backbones, data
    from eptctl.engine.encoding import encode_examples

    backbone = backbones.load(BACKBONES[short], device=s["device"])
    spec = data.resolve_task("rt-polarity")
    task = data.load_task(spec, max_eval=s["rows"])
    answers = backbone.encode_answers(spec.verbalizer)
    encoded = encode_examples(backbone, spec, task.validation, answers, 256)
    ept = [_materialized(backbone, "ept", seed) for seed in range(3)]
    passes = {
        "eptctl ept single": _eptctl_pass(backbone, ept[:1], encoded, answers, s["batch"], mixed=False),
        "eptctl ept mixed (3 adapters)": _eptctl_pass(backbone, ept, encoded, answers, s["batch"], mixed=True),
        "eptctl pt-100 single": _eptctl_pass(backbone, [_materialized(backbone, "pt", 0)], encoded, answers,
                                             s["batch"], mixed=False),
        "peft pt-100": _peft_pass(backbone, encoded, answers, s["batch"]),
    }
    times = {v: [] for v in VARIANTS}
    for r in range(s["rounds"] + 1):
        for variant in VARIANTS:
            _sync(s["device"])
            t0 = time.perf_counter()
            passes[variant]()
            _sync(s["device"])
            if r > 0:
                times[variant].append(time.perf_counter() - t0)
    rows = []
    for variant in VARIANTS:
        med = statistics.median(times[variant])
        rows.append({"backbone": short, "model": BACKBONES[short], "precision": backbone.precision,
                     "variant": variant, "rows": len(encoded), "batch": s["batch"],
                     "examples_per_s": round(len(encoded) / med, 1), "pass_ms_median": round(med * 1000, 1)})
    return rows


def run(quick: bool = False) -> dict:
    s = _settings(quick)
    rows = rows_of_backbones(time_backbone, s)
    ratios = {}
    for short in s["backbones"]:
        eps = {r["variant"]: r["examples_per_s"] for r in rows if r["backbone"] == short}
        ratios[short] = {
            "mixed_vs_single": round(eps["eptctl ept mixed (3 adapters)"] / eps["eptctl ept single"], 3),
            "ept_single_vs_peft_pt100": round(eps["eptctl ept single"] / eps["peft pt-100"], 3),
            "pt100_single_vs_peft_pt100": round(eps["eptctl pt-100 single"] / eps["peft pt-100"], 3),
        }
    headline = "smollm2" if "smollm2" in ratios else s["backbones"][-1]
    return {"rows": rows, "ratios": {**ratios[headline], "backbone": headline, "by_backbone": ratios}, "settings": s}
