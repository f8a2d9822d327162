"""Training step time and peak memory: eptctl pt/dept/ept vs Hugging Face PEFT prompt tuning vs the floor.

Variants at one trainable-parameter budget (l = 100 prompt tokens x width):
  eptctl pt (l=100), eptctl dept and ept (s=60 short prompt plus the low-rank offset the budget leaves),
  PEFT PromptTuningConfig with 100 and 60 virtual tokens (the external peer, as its users call it: input_ids + labels),
  floor: the same frozen backbone with 60 plain prompt tokens through eptctl's forward pass/loss and nothing else.
Two padding regimes: fixed (every batch padded to 256 text tokens: the DePT protocol) and dynamic (each batch padded
to its own longest row). The rows are rt-polarity training examples in the task template (GLUE-like short texts).

Timing interleaves the variants round by round in one process (a slow moment of the machine hits all of them) and
reports the median of the timed rounds after one warm-up step. Peak memory: on CUDA the allocator's peak; on the CPU
the rise of the process's peak resident set during one step (high-water mark reset through /proc/self/clear_refs),
measured in a fresh subprocess per variant so earlier variants cannot hide it.

Environment: BENCH_BACKBONES (comma list of tiny,tiny-t5,t5-small,smollm2,t5-base,llama-1b), BENCH_ROUNDS, BENCH_BATCH,
BENCH_DEVICE (cpu|cuda), BENCH_MEMORY=0 to skip the memory subprocesses, BENCH_PADDINGS=dynamic to time one regime
(then only the ratios that need no other regime are reported), BENCH_VARIANTS (comma list of the variant names
below; "peft pt-100" is always kept, the baseline of the ratios).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

BACKBONES = {"tiny": "tiny-random-llama", "tiny-t5": "tiny-random-t5", "t5-small": "random-t5-small", "smollm2": "smollm2-135m",
             "t5-base": "random-t5-base", "llama-1b": "random-llama-1b"}
VARIANTS = ("eptctl pt l=100", "eptctl dept s=60", "eptctl ept s=60", "peft pt-100", "peft pt-60", "floor s=60")
PADDINGS = ("fixed", "dynamic")
FIXED_LENGTH = 256
BUDGET_LENGTH, SHORT_LENGTH = 100, 60


def _settings(quick: bool) -> dict:
    # --quick must finish in under 3 minutes: the t5-small shape alone takes ~5 (byte-level rows of ~190 tokens).
    default = "tiny" if quick else "tiny,t5-small,smollm2"
    return {
        "backbones": os.environ.get("BENCH_BACKBONES", default).split(","),
        "rounds": int(os.environ.get("BENCH_ROUNDS", "3" if quick else "5")),
        "batch": int(os.environ.get("BENCH_BATCH", "16")),
        "device": os.environ.get("BENCH_DEVICE", "cuda" if _cuda() else "cpu"),
        "memory": os.environ.get("BENCH_MEMORY", "1") == "1",
        "paddings": os.environ.get("BENCH_PADDINGS", ",".join(PADDINGS)).split(","),
        "variants": os.environ.get("BENCH_VARIANTS", ",".join(VARIANTS)).split(","),
    }


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# --- the variants: each a closure that runs one full training step on a list of encoded rows -----------------------
class _PlainPrompt:
    """The floor: s trainable prompt vectors, no offset, no fusion, no projection."""

    def __init__(self, prompt):
        self.prompt = prompt

    def __call__(self):
        return self.prompt, None, None


def _pad_fixed(batch, width: int, pad_id: int):
    """Right-pad an eptctl batch to ``width`` text tokens, as DePT pads every batch to max_length."""
    import torch

    extra = width - batch.input_ids.shape[1]
    if extra > 0:
        batch.input_ids = torch.cat([batch.input_ids, batch.input_ids.new_full((len(batch), extra), pad_id)], 1)
        batch.attention_mask = torch.cat([batch.attention_mask, batch.attention_mask.new_zeros(len(batch), extra)], 1)
    return batch


def budget_config(backbone, method: str):
    """The variant's method config at the shared budget: pt with l = 100 tokens, dept/ept with an s = 60 prompt."""
    from eptctl.methods import EPTConfig

    return EPTConfig(method=method, prompt_length=BUDGET_LENGTH,
                     short_length=None if method == "pt" else SHORT_LENGTH).resolved(backbone.width)


def padded(rows, width: int, fill: int):
    """[len(rows), width] long tensor: each row's values, then ``fill``."""
    import torch

    out = torch.full((len(rows), width), fill, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


def peft_prompt_model(backbone, virtual_tokens: int):
    """PEFT prompt tuning with ``virtual_tokens`` on the backbone's frozen model, for its family."""
    from peft import PromptTuningConfig, TaskType

    task_type = TaskType.CAUSAL_LM if backbone.family == "causal" else TaskType.SEQ_2_SEQ_LM
    return _wrap(backbone.model, PromptTuningConfig(task_type=task_type, num_virtual_tokens=virtual_tokens))


def _eptctl_step(backbone, answers, variant: str):
    from eptctl.engine.config import TrainConfig
    from eptctl.engine.loop import build_optimizer, new_adapter

    adapter = new_adapter(backbone, budget_config(backbone, variant.split()[1]), num_labels=2, seed=0)
    optimizer, scheduler = build_optimizer(adapter, TrainConfig(), total_steps=1000)
    adapter.train()
    return _loop_step(backbone, answers, adapter, optimizer, scheduler), adapter.params_by_group()["total"]


def _floor_step(backbone, answers):
    import torch

    from eptctl.engine.config import TrainConfig

    prompt = torch.nn.Parameter(backbone.model.get_input_embeddings().weight[:SHORT_LENGTH].detach().float().clone())
    source = _PlainPrompt(prompt)
    optimizer = torch.optim.AdamW([prompt], lr=TrainConfig().lr_prompt)
    return _loop_step(backbone, answers, source, optimizer, None, [prompt]), prompt.numel()


def _loop_step(backbone, answers, source, optimizer, scheduler, params=None):
    import torch

    params = params or [p for g in optimizer.param_groups for p in g["params"]]

    def step(rows, fixed: bool):
        batch = backbone.collate(rows, answers, train=True)
        if fixed:
            batch = _pad_fixed(batch, FIXED_LENGTH, backbone.tokenizer.pad_token_id)
        batch = batch.to(backbone.device)
        loss = backbone.loss(source, batch, answers)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        return batch.input_ids.shape[1]

    return step


def _peft_step(backbone, answers, virtual_tokens: int):
    import torch

    # Prompt tuning adds no modules to the base model, so several PEFT wrappers can share the one frozen backbone.
    model = peft_prompt_model(backbone, virtual_tokens)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=0.3)  # PEFT's documented prompt-tuning learning rate
    pad = backbone.tokenizer.pad_token_id

    def step(rows, fixed: bool):
        if backbone.family == "causal":  # prefix + answer, loss on the answer tokens only
            seqs = [r.input_ids + answers.answers[r.label] for r in rows]
            label_rows = [[-100] * len(r.input_ids) + answers.answers[r.label] for r in rows]
        else:
            seqs = [r.input_ids for r in rows]
            label_rows = None
        width = FIXED_LENGTH if fixed else max(len(s) for s in seqs)
        ids, mask = padded(seqs, width, pad), padded([[1] * len(s) for s in seqs], width, 0)
        if label_rows is not None:
            labels = padded(label_rows, width, -100)
        else:
            dec = [answers.answers[r.label] for r in rows]
            labels = padded(dec, max(map(len, dec)), -100)
        dev = backbone.device
        out = model(input_ids=ids.to(dev), attention_mask=mask.to(dev), labels=labels.to(dev))
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        return width

    return step, sum(p.numel() for p in trainable)


def _wrap(model, config):
    import warnings

    from peft import get_peft_model

    with warnings.catch_warnings():  # a second wrapper of the same base model warns; prompt tuning leaves it intact
        warnings.simplefilter("ignore")
        return get_peft_model(model, config)


def build_variant(backbone, answers, variant: str):
    if variant.startswith("eptctl"):
        return _eptctl_step(backbone, answers, variant)
    if variant.startswith("peft"):
        return _peft_step(backbone, answers, int(variant.split("-")[-1]))
    return _floor_step(backbone, answers)


# --- data ----------------------------------------------------------------------------------------------------------
def rows_for(backbone, count: int):
    """rt-polarity training rows in the task template, encoded for ``backbone`` (<= 256 tokens with the answer)."""
    import random

    from eptctl import data
    from eptctl.engine.encoding import encode_examples

    spec = data.resolve_task("rt-polarity")
    task = data.load_task(spec, max_train=count, seed=0)
    answers = backbone.encode_answers(spec.verbalizer)
    rows = encode_examples(backbone, spec, task.train, answers, FIXED_LENGTH)
    random.Random(0).shuffle(rows)  # random batches, no length bucketing: the plain dynamic-padding case
    return rows, answers


# --- timing and memory ---------------------------------------------------------------------------------------------
def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def time_backbone(short: str, s: dict) -> list[dict]:
    import torch

    from eptctl import backbones

    backbone = backbones.load(BACKBONES[short], device=s["device"])
    rows, answers = rows_for(backbone, s["batch"] * (s["rounds"] + 1))
    batches = [rows[i * s["batch"]:(i + 1) * s["batch"]] for i in range(s["rounds"] + 1)]
    variants = [v for v in VARIANTS if v in s["variants"] or v == "peft pt-100"]  # the ratios' baseline stays
    steps, params = {}, {}
    for variant in variants:
        steps[variant], params[variant] = build_variant(backbone, answers, variant)
    times = {(v, p): [] for v in variants for p in s["paddings"]}
    widths, peaks = {}, {}
    for r, batch in enumerate(batches):
        for padding in s["paddings"]:
            for variant in variants:
                if s["device"].startswith("cuda"):
                    torch.cuda.reset_peak_memory_stats()
                _sync(s["device"])
                t0 = time.perf_counter()
                width = steps[variant](batch, padding == "fixed")
                _sync(s["device"])
                if r > 0:  # round 0 is the warm-up
                    times[(variant, padding)].append(time.perf_counter() - t0)
                widths.setdefault((variant, padding), []).append(width)
                if s["device"].startswith("cuda"):
                    peaks[(variant, padding)] = max(peaks.get((variant, padding), 0),
                                                    torch.cuda.max_memory_allocated() / 2**20)
    out = []
    for padding in s["paddings"]:
        for variant in variants:
            med = statistics.median(times[(variant, padding)])
            out.append({"backbone": short, "model": BACKBONES[short], "precision": backbone.precision,
                        "padding": padding, "variant": variant, "trainable_params": params[variant],
                        "text_tokens_mean": round(statistics.mean(widths[(variant, padding)]), 1),
                        "step_ms_median": round(med * 1000, 2),
                        "step_ms_min": round(min(times[(variant, padding)]) * 1000, 2),
                        "peak_mem_mb": round(peaks[(variant, padding)], 1) if peaks else None})
    return out


def memory_of(short: str, variant: str, padding: str, batch: int) -> float:
    """Peak extra resident memory (MiB) of one training step, in a fresh process."""
    code = ("import sys, json; from bench.step_time import _memory_child; "
            f"print(json.dumps(_memory_child({short!r}, {variant!r}, {padding!r}, {batch})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _memory_child(short: str, variant: str, padding: str, batch: int) -> float:
    from eptctl import backbones

    backbone = backbones.load(BACKBONES[short], device="cpu")
    rows, answers = rows_for(backbone, batch)
    step, _ = build_variant(backbone, answers, variant)
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset the high-water mark to the current resident set
    before = _status_kb("VmRSS")
    step(rows[:batch], padding == "fixed")
    return round((_status_kb("VmHWM") - before) / 1024, 1)


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(key + ":"))


RATIOS = {  # name -> (numerator, denominator, minus one): (variant, padding) pairs
    "ept_vs_peft_pt100_fixed": (("eptctl ept s=60", "fixed"), ("peft pt-100", "fixed"), False),
    "ept_vs_peft_pt100_dynamic": (("eptctl ept s=60", "dynamic"), ("peft pt-100", "dynamic"), False),
    "ept_overhead_vs_floor": (("eptctl ept s=60", "dynamic"), ("floor s=60", "dynamic"), True),
    "ept_overhead_vs_floor_fixed": (("eptctl ept s=60", "fixed"), ("floor s=60", "fixed"), True),
    "dynamic_vs_fixed_speedup": (("eptctl ept s=60", "fixed"), ("eptctl ept s=60", "dynamic"), False),
    "dept_vs_peft_pt100_fixed": (("eptctl dept s=60", "fixed"), ("peft pt-100", "fixed"), False),
    "pt100_vs_peft_pt100_fixed": (("eptctl pt l=100", "fixed"), ("peft pt-100", "fixed"), False),
    "peft_pt60_vs_peft_pt100_fixed": (("peft pt-60", "fixed"), ("peft pt-100", "fixed"), False),
}


def ratios_for(rows: list[dict], short: str) -> dict:
    """The headline ratios of one backbone's rows; a ratio whose variants or paddings were not timed is left out."""
    t = {(r["variant"], r["padding"]): r["step_ms_median"] for r in rows if r["backbone"] == short}
    return {name: round(t[top] / t[bottom] - (1 if minus_one else 0), 3)
            for name, (top, bottom, minus_one) in RATIOS.items() if top in t and bottom in t}


def rows_of_backbones(time_one, s: dict) -> list[dict]:
    """``time_one(short, settings)`` for every backbone of the settings, one after the other."""
    rows = []
    for short in s["backbones"]:
        rows += time_one(short, s)
        print(f"timed {short}", file=sys.stderr, flush=True)
    return rows


def run(quick: bool = False) -> dict:
    s = _settings(quick)
    rows = rows_of_backbones(time_backbone, s)
    if s["memory"] and not s["device"].startswith("cuda"):
        for row in rows:
            row["peak_mem_mb"] = memory_of(row["backbone"], row["variant"], row["padding"], s["batch"])
    for row in rows:
        base = next(r for r in rows if r["backbone"] == row["backbone"] and r["padding"] == row["padding"]
                    and r["variant"] == "peft pt-100")
        row["vs_peft_pt100"] = round(row["step_ms_median"] / base["step_ms_median"], 3)
    by_backbone = {short: ratios_for(rows, short) for short in s["backbones"]}
    headline = "smollm2" if "smollm2" in by_backbone else s["backbones"][-1]
    return {"rows": rows, "ratios": {**by_backbone[headline], "backbone": headline, "by_backbone": by_backbone},
            "settings": s}
