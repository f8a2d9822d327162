"""Generation throughput: eptctl's cached soft-prompt decoding vs PEFT prompt tuning's ``generate``.

Variants, all writing exactly max_new_tokens greedy tokens after every bbc-headline test row in the task template
("Article: {text}\\nHeadline:", inputs <= 128 tokens), batches of BENCH_BATCH (default 16) rows sorted by length:
  eptctl pt-20: a materialized plain 20-token prompt through ``generate_texts`` (GenerationOptions ignore_eos): rows
  left-aligned behind the prompt, prompt and input run once into the key/value cache, then one token a step;
  eptctl ept (default): the default method config (EPTConfig(max_length=128): s=12 prompt plus the folded offset);
  peft pt-20: PEFT PromptTuningConfig(num_virtual_tokens=20) wrapping the same frozen model (prompt tuning adds no
  modules to it), called as its users call it: ``generate(input_ids, attention_mask, max_new_tokens=M,
  min_new_tokens=M, do_sample=False)`` on left-padded batches of the same token ids, same length-sorted batches;
  peft pt-20 (cache shim): the same, with the key/value cache handed to PEFT under the name it reads. transformers
  5.2x passes the cache as ``cache``; PEFT 0.21 looks for ``past_key_values``, finds none, and so re-feeds the 20
  virtual tokens with every generated token (21 positions a step, the cache growing by 21), which also changes the
  text. The shim renames the key in PEFT's ``base_model_prepare_inputs_for_generation``: one token a step, as
  intended. Only timed where the installed transformers uses ``cache`` ("peft_reinjects_prompt" in "setup" says
  whether the unpatched PEFT was seen re-feeding the prompt).
The eptctl pt-20 prompt is PEFT's prompt embedding (seeded) copied over, so all pt variants start from the same
prompt. "agreement": the fraction of rows whose first 8 greedy tokens (to the first eos) are the same from eptctl
and from each PEFT variant. PEFT drops position ids (a left-padded row's positions count its pads; eptctl counts
from the row's first real token), so padded rows may differ: reported, not asserted.

New tokens = rows x max_new_tokens (checked against PEFT's output shapes). Each variant is warmed up on one batch,
then the variants are interleaved round by round in one process (a slow moment of the machine hits all of them);
seconds is the median round. --quick: tiny-random-llama, 32 rows, 16 new tokens, 2 rounds (~10 s). Full: the
default backbone (SmolLM2-135M) in fp32, 16 test rows (one batch), 16 new tokens, 3 rounds: ~3-4 minutes on 2 CPU
cores. The full run is shrunk from 64 rows / 24 tokens (~10 min there), mostly for the unpatched PEFT variant, whose
work per step grows with the prompt length and the steps taken.
Environment: BENCH_BACKBONE, BENCH_PRECISION (fp32|bf16), BENCH_ROWS, BENCH_NEW_TOKENS, BENCH_BATCH, BENCH_ROUNDS,
BENCH_PROMPT (pt and PEFT prompt tokens).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
import warnings

from bench.step_time import peft_prompt_model

MAX_LENGTH = 128
AGREEMENT_TOKENS = 8
PEFT, SHIMMED = "peft pt", "peft pt (cache shim)"
KEYS = {PEFT: "peft_pt", SHIMMED: "peft_pt_cache_shim"}


def _settings(quick: bool) -> dict:
    from eptctl import backbones

    return {
        "backbone": os.environ.get("BENCH_BACKBONE", "tiny-random-llama" if quick else backbones.DEFAULT_MODEL),
        "precision": os.environ.get("BENCH_PRECISION", "fp32"),
        "rows": int(os.environ.get("BENCH_ROWS", "32" if quick else "16")),
        "max_new_tokens": int(os.environ.get("BENCH_NEW_TOKENS", "16")),
        "batch": int(os.environ.get("BENCH_BATCH", "16")),
        "rounds": int(os.environ.get("BENCH_ROUNDS", "2" if quick else "3")),
        "prompt_tokens": int(os.environ.get("BENCH_PROMPT", "20")),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            return next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), "unknown")
    except OSError:
        return "unknown"


def _left_padded(rows: list[list[int]], pad_id: int):
    """(input_ids, attention_mask) [len(rows), longest]: pads first, then each row's ids, as HF generate expects."""
    import torch

    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row):] = 1
    return ids, mask


def _materialized(backbone, cfg):
    from eptctl.engine.loop import new_adapter

    return new_adapter(backbone, cfg, 0, seed=0).materialize().to(backbone.device)


def _peft_model(backbone, virtual_tokens: int, shim: bool):
    """A PEFT prompt-tuning wrapper of the backbone's frozen model (seeded prompt); ``shim``: cache under the name
    PEFT's prepare_inputs_for_generation reads (an attribute of this wrapper only, the base model is untouched)."""
    import torch

    torch.manual_seed(0)  # PEFT's random prompt init: the same prompt in every wrapper and run
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft_prompt_model(backbone, virtual_tokens)
    model.eval()
    if shim:
        prepare = model.base_model_prepare_inputs_for_generation

        def renamed(*args, **kwargs):
            out = prepare(*args, **kwargs)
            if "cache" in out and "past_key_values" not in out:
                out["past_key_values"] = out.pop("cache")
            return out

        model.base_model_prepare_inputs_for_generation = renamed
    return model


def _peft_generate(model, backbone, rows: list[list[int]], new_tokens: int, exact: bool):
    """PEFT's generate on one left-padded batch: [len(rows), new_tokens] new ids (eos suppressed when ``exact``)."""
    pad = backbone.tokenizer.pad_token_id
    pad = backbone.tokenizer.eos_token_id if pad is None else pad
    ids, mask = _left_padded(rows, pad)
    dev = backbone.device
    extra = {"min_new_tokens": new_tokens} if exact else {}
    out = model.generate(input_ids=ids.to(dev), attention_mask=mask.to(dev), max_new_tokens=new_tokens,
                         do_sample=False, pad_token_id=pad, **extra)
    return out[:, ids.shape[1]:]  # PEFT returns the input ids, then the new ones (no virtual tokens)


def _eptctl_pass(backbone, adapter, s: dict):
    import torch

    from eptctl.backbones.decoding import GenerationOptions
    from eptctl.engine.scoring import generate_texts

    options = GenerationOptions(max_new_tokens=s["max_new_tokens"], ignore_eos=True)

    def run_pass(encoded) -> int:
        with torch.inference_mode():
            texts = generate_texts(backbone, [adapter], encoded, options, batch_size=s["batch"])
        assert len(texts) == len(encoded)
        return len(encoded) * s["max_new_tokens"]  # ignore_eos: every row writes exactly max_new_tokens tokens

    return run_pass


def _peft_pass(model, backbone, s: dict):
    import torch

    from eptctl.engine.scoring import eval_batches

    def run_pass(encoded) -> int:
        tokens = 0
        with torch.inference_mode():
            for idx in eval_batches([len(e.input_ids) for e in encoded], s["batch"]):
                new = _peft_generate(model, backbone, [encoded[i].input_ids for i in idx], s["max_new_tokens"], True)
                assert new.shape == (len(idx), s["max_new_tokens"]), f"PEFT wrote {tuple(new.shape)} new tokens"
                tokens += new.numel()
        return tokens

    return run_pass


def agreement(backbone, adapter, model, encoded, s: dict) -> float:
    """Fraction of rows whose first AGREEMENT_TOKENS greedy tokens (to the first eos) are the same from eptctl and
    from the PEFT ``model`` with the same prompt."""
    import torch

    from eptctl.backbones.decoding import GenerationOptions
    from eptctl.engine.scoring import eval_batches

    eos = backbone.tokenizer.eos_token_id
    options = GenerationOptions(max_new_tokens=AGREEMENT_TOKENS)
    same = 0
    with torch.inference_mode():
        for idx in eval_batches([len(e.input_ids) for e in encoded], s["batch"]):
            batch = backbone.collate([encoded[i] for i in idx], None, train=False).to(backbone.device)
            ours = backbone.generate([adapter], batch, options)  # eos excluded, stops at eos
            theirs = _peft_generate(model, backbone, [encoded[i].input_ids for i in idx], AGREEMENT_TOKENS, False)
            for mine, row in zip(ours, theirs.tolist()):
                row = row[: row.index(eos)] if eos in row else row
                same += list(mine) == row
    return round(same / len(encoded), 3)


def reinjects_prompt(backbone, model, row: list[int]) -> bool:
    """Whether PEFT's generate feeds the backbone more than one position at its second step (the prompt again)."""
    import torch

    widths = []

    def hook(_module, args, kwargs):
        embeds = kwargs.get("inputs_embeds")
        ids = kwargs.get("input_ids")
        widths.append((embeds if embeds is not None else ids).shape[1])

    handle = backbone.model.base_model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _peft_generate(model, backbone, [row], 2, True)
    finally:
        handle.remove()
    return len(widths) > 1 and widths[1] > 1


def run(quick: bool = False) -> dict:
    import torch

    from eptctl import backbones, data
    from eptctl.backbones.decoding import cache_argument
    from eptctl.engine.encoding import encode_examples
    from eptctl.methods import EPTConfig

    s = _settings(quick)
    backbone = backbones.load(s["backbone"], precision=s["precision"])
    task = data.load_task(data.builtin_task("bbc-headline"))
    encoded = encode_examples(backbone, task.spec, task.test[: s["rows"]], backbone.encode_answers(()),
                              max_length=MAX_LENGTH)
    n = s["prompt_tokens"]
    peft_model = _peft_model(backbone, n, shim=False)
    pt = _materialized(backbone, EPTConfig(method="pt", prompt_length=n, max_length=MAX_LENGTH))
    peft_prompt = peft_model.prompt_encoder["default"].embedding.weight.detach()
    assert peft_prompt.shape == pt.prompt.shape, (tuple(peft_prompt.shape), tuple(pt.prompt.shape))
    pt.prompt = peft_prompt.to(pt.prompt.dtype).clone()  # the same prompt: the same text, the same work
    ept = _materialized(backbone, EPTConfig(max_length=MAX_LENGTH))
    peers = {PEFT: peft_model}
    if cache_argument(backbone.model.base_model) == "cache":  # the name PEFT does not read: time the shim too
        peers[SHIMMED] = _peft_model(backbone, n, shim=True)
    passes = {"eptctl pt": _eptctl_pass(backbone, pt, s), "eptctl ept (default)": _eptctl_pass(backbone, ept, s),
              **{name: _peft_pass(model, backbone, s) for name, model in peers.items()}}
    times = {v: [] for v in passes}
    tokens = {}
    with warnings.catch_warnings():  # generate's notes on generation-config flags and ignored position ids
        warnings.simplefilter("ignore")
        for variant, run_pass in passes.items():  # warm-up: one batch each
            run_pass(encoded[: s["batch"]])
        for r in range(s["rounds"]):
            for variant, run_pass in passes.items():
                t0 = time.perf_counter()
                tokens[variant] = run_pass(encoded)
                times[variant].append(time.perf_counter() - t0)
            print(f"round {r + 1}/{s['rounds']} done", file=sys.stderr, flush=True)
        agree = {name: agreement(backbone, pt, model, encoded, s) for name, model in peers.items()}
    rows = []
    for variant in passes:
        med = statistics.median(times[variant])
        prompt = int(ept.prompt.shape[0]) if "ept" in variant.split() else n
        rows.append({"variant": variant.replace(" pt", f" pt-{n}"), "backbone": s["backbone"],
                     "prompt_tokens": prompt, "rows": len(encoded), "new_tokens": tokens[variant],
                     "seconds": round(med, 3), "tokens_per_s": round(tokens[variant] / med, 1)})
    tps = {v: r["tokens_per_s"] for v, r in zip(passes, rows)}
    ratios = {"eptctl_pt_vs_peft_pt": round(tps["eptctl pt"] / tps[PEFT], 3),
              "eptctl_ept_vs_peft_pt": round(tps["eptctl ept (default)"] / tps[PEFT], 3)}
    if SHIMMED in tps:
        ratios["eptctl_pt_vs_peft_pt_cache_shim"] = round(tps["eptctl pt"] / tps[SHIMMED], 3)
        ratios["eptctl_ept_vs_peft_pt_cache_shim"] = round(tps["eptctl ept (default)"] / tps[SHIMMED], 3)
    setup = {"backbone": s["backbone"], "batch": s["batch"], "max_new_tokens": s["max_new_tokens"],
             "prompt_tokens": n, "ept_prompt_tokens": int(ept.prompt.shape[0]),
             "input_tokens_mean": round(statistics.mean(len(e.input_ids) for e in encoded), 1),
             "rounds": s["rounds"], "torch_threads": torch.get_num_threads(), "cpu": _cpu_model(),
             "precision": backbone.precision, "device": str(backbone.device),
             "peft_reinjects_prompt": reinjects_prompt(backbone, peft_model, encoded[0].input_ids)}
    return {"rows": rows, "ratios": ratios,
            "agreement": {"first_tokens": AGREEMENT_TOKENS, **{KEYS[k]: v for k, v in agree.items()}},
            "setup": setup}
