"""The paper's benchmark: train and test PT, DePT and EPT on the 13 GLUE/SuperGLUE tasks, table beside published rows.

    python -m bench paper --model PATH_TO_T5_BASE --tasks all --method pt,dept,ept [--steps N] [--seeds 0,1,2]
                          [--budget F] [--data-dir DIR] [--max-eval N] [--registry URL]
                          [--batch-size 32 --prompt-length 100 --short-length 60]

Each (method, task, seed) cell trains one adapter with ``eptctl.workflows.train.train_task`` into the benchmark's own
registry (default ``.bench-out/paper/registry.db``), scores its test split, and is saved to
``.bench-out/paper-cells.json`` as soon as it ends: a second run with the same options skips finished cells, so an
interrupted sweep resumes. Shapes follow the paper's setting: PT l = 100; DePT and EPT s = 60 within the same budget
(r = 30 on T5-Base: 60*768 + 256*30 + 30*768 = 100*768); batch 32; inputs up to 256 tokens, padded per batch.
Learning rates are eptctl's defaults (DePT searched per task: prompt 3e-1/4e-1, low-rank 1e-4 to 5e-3), and the
step count is the user's: DePT trained up to 300k steps, so a CPU budget reproduces the layout, not the numbers.

Scores are the test split's primary metric x 100 (accuracy; Matthews correlation for CoLA; Pearson for STS-B; F1
over answers for MultiRC), mean over seeds; F1 (MRPC, QQP), macro-F1 (CB) and Spearman (STS-B) are in the JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

CELLS = Path(".bench-out") / "paper-cells.json"
SHORT = {"glue-mnli": "MNLI", "glue-qqp": "QQP", "glue-qnli": "QNLI", "glue-sst2": "SST-2", "glue-stsb": "STS-B",
         "glue-mrpc": "MRPC", "glue-rte": "RTE", "glue-cola": "CoLA", "superglue-multirc": "MultiRC",
         "superglue-boolq": "BoolQ", "superglue-wic": "WiC", "superglue-wsc": "WSC", "superglue-cb": "CB"}
PAPER_PROMPT_LENGTH = 100
PAPER_SHORT_LENGTH = 60
PAPER_BATCH = 32


def parse(argv: list[str]) -> argparse.Namespace:
    from eptctl.backbones import DEFAULT_MODEL

    parser = argparse.ArgumentParser(prog="python -m bench paper", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="backbone (the paper: a local T5-Base folder)")
    parser.add_argument("--tasks", default="all", help="all | glue | superglue | a comma list (rte,cb,...)")
    parser.add_argument("--method", default="pt,dept,ept", help="comma list of pt, dept, ept")
    parser.add_argument("--steps", type=int, default=300, help="optimiser steps per cell (before --budget)")
    parser.add_argument("--budget", type=float, default=1.0, help="scale the steps (0.1 = a tenth; at least 1)")
    parser.add_argument("--seeds", default="0", help="comma list of seeds")
    parser.add_argument("--data-dir", default=None, help="root of the GLUE/SuperGLUE files (default: as eptctl)")
    parser.add_argument("--max-eval", type=int, default=None, help="at most N validation and N test rows per task")
    parser.add_argument("--registry", default=None,
                        help="registry URL (default: sqlite:///.bench-out/paper/registry.db)")
    parser.add_argument("--cells", type=Path, default=CELLS, help="where finished cells are kept (resume)")
    parser.add_argument("--precision", default=None, help="fp32 | bf16 (default: eptctl's choice)")
    # Shapes other than the paper's make other cells; they exist so the tests can run the harness in seconds.
    parser.add_argument("--batch-size", type=int, default=PAPER_BATCH, help="rows per step (the paper: 32)")
    parser.add_argument("--prompt-length", type=int, default=PAPER_PROMPT_LENGTH, help="PT's l (the paper: 100)")
    parser.add_argument("--short-length", type=int, default=PAPER_SHORT_LENGTH,
                        help="DePT's and EPT's s, r by the same budget (the paper: 60)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.budget <= 0:
        parser.error("--steps must be >= 1 and --budget > 0")
    if min(args.batch_size, args.short_length) < 1 or args.short_length >= args.prompt_length:
        parser.error("--batch-size and --short-length must be >= 1, and --short-length below --prompt-length")
    return args


def run(quick: bool = False, argv: list[str] | None = None) -> dict:
    from eptctl import backbones, data
    from eptctl.core.files import write_atomic
    from eptctl.data import glue
    from eptctl.engine.config import TrainConfig
    from eptctl.methods.config import EPTConfig
    from eptctl.workflows.train import train_task
    from registry import Registry

    args = parse(list(argv or []))
    if quick:
        args.steps, args.budget = min(args.steps, 5), 1.0
    methods = [m.strip() for m in args.method.split(",") if m.strip()]
    for m in methods:
        EPTConfig(method=m)  # raises for an unknown method, before anything runs
    tasks = glue.select(args.tasks)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    steps = max(1, round(args.steps * args.budget))
    if args.data_dir:
        glue.set_data_dir(args.data_dir)
    missing = [t for t in tasks if not glue.available(glue.CATALOGUE[t])]
    if missing:
        glue.split_files(glue.CATALOGUE[missing[0]])  # raises the one-line error with the path and the fetch command
    url = args.registry or f"sqlite:///{Path('.bench-out/paper/registry.db').resolve()}"
    Path(".bench-out/paper").mkdir(parents=True, exist_ok=True)
    reg = Registry(url)
    backbone = backbones.load(args.model, precision=args.precision)
    done = json.loads(args.cells.read_text()) if args.cells.exists() else {}
    # A cell is the same cell only for the same data (its fingerprint), backbone, precision and settings.
    fingerprints = {t: data.load_task(glue.CATALOGUE[t].spec).source_fingerprint[:16] for t in tasks}
    setting = f"{args.model}|{backbone.precision}|{steps}|{args.max_eval}" + _shapes(args)
    kept = 0
    for method in methods:
        method_cfg = EPTConfig(method=method, prompt_length=args.prompt_length,
                               short_length=None if method == "pt" else args.short_length)
        for task in tasks:
            for seed in seeds:
                key = f"{setting}|{method}|{task}|{seed}|{fingerprints[task]}"
                if key in done:
                    kept += 1
                    continue
                # The papers' protocol: the answer tokens' loss, the best of periodic validations kept.
                train_cfg = TrainConfig(steps=steps, batch_size=args.batch_size, seed=seed, objective="lm",
                                        eval_every=max(1, steps // 5), max_eval_examples=args.max_eval or 200)
                outcome = train_task(task, registry=reg, backbone=backbone, method_cfg=method_cfg,
                                     train_cfg=train_cfg, max_eval=args.max_eval,
                                     description=f"bench paper: {method} seed {seed}", tags=["bench-paper"])
                spec = glue.CATALOGUE[task].spec
                test = outcome.result.metrics.get("test", {})
                done[key] = {"setting": setting, "data": fingerprints[task], "model": args.model, "method": method, "task": task, "seed": seed, "steps": steps,
                             "ref": outcome.record.ref, "metric": spec.metric, "score": 100 * test[spec.metric],
                             "test": test, "trainable_params": outcome.record.trainable_params,
                             "seconds": round(outcome.result.duration_s, 1)}
                args.cells.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(args.cells, (json.dumps(done, indent=1) + "\n").encode())
                print(f"{method} {task} seed {seed}: {spec.metric} {done[key]['score']:.1f} "
                      f"({done[key]['seconds']} s)", flush=True)
    if kept:
        print(f"kept {kept} finished cell(s) from {args.cells}", file=sys.stderr)
    cells = [c for c in done.values() if c.get("setting") == setting and c["task"] in tasks
             and c.get("data") == fingerprints[c["task"]] and c["method"] in methods and c["seed"] in seeds]
    return {"rows": table(cells, methods, tasks), "cells": cells,
            "published_sources": {row.method: row.source for row in glue.PUBLISHED},
            "setting": {"model": args.model, "steps": steps, "seeds": seeds, "batch_size": args.batch_size,
                        "prompt_length": args.prompt_length, "short_length": args.short_length,
                        "max_eval": args.max_eval}}


def _shapes(args: argparse.Namespace) -> str:
    """The cell key's part for non-paper shapes; empty for the paper's, so cells kept before these flags resume."""
    shapes = (args.batch_size, args.prompt_length, args.short_length)
    if shapes == (PAPER_BATCH, PAPER_PROMPT_LENGTH, PAPER_SHORT_LENGTH):
        return ""
    return "|b{}|l{}|s{}".format(*shapes)


def table(cells: list[dict], methods: list[str], tasks: list[str]) -> list[dict]:
    """The paper's layout: one row per method (ours: mean over seeds, then the published rows), one column per
    task, the GLUE and SuperGLUE averages (over the tasks asked for, the published rows' too, so a subset compares
    like with like; "-" where a row lacks one of them), trainable parameters and the source."""
    from eptctl.data import glue

    def row(method: str, params: str, scores: dict, source: str) -> dict:
        out = {"method": method, "params": params}
        for group, label in ((glue.GLUE, "GLUE avg"), (glue.SUPERGLUE, "SuperGLUE avg")):
            wanted = [t for t in tasks if t in group]
            for task in wanted:
                out[SHORT[task]] = f"{scores[task]:.1f}" if task in scores else "-"
            have = [scores[t] for t in wanted if t in scores]
            if wanted:  # an average over fewer tasks than asked for would not compare with the paper's
                out[label] = f"{statistics.mean(have):.1f}" if len(have) == len(wanted) else "-"
        out["source"] = source
        return out

    rows = []
    for method in methods:
        mine = [c for c in cells if c["method"] == method]
        scores = {t: statistics.mean(c["score"] for c in mine if c["task"] == t)
                  for t in tasks if any(c["task"] == t for c in mine)}
        params = sorted(c["trainable_params"] for c in mine)
        seeds = sorted({c["seed"] for c in mine})
        rows.append(row(f"eptctl {method}", _count(params[len(params) // 2]) if params else "-", scores,
                        f"this run ({len(seeds)} seed(s), {mine[0]['steps'] if mine else 0} steps)"))
    for published in glue.PUBLISHED:
        rows.append(row(published.method, published.params, published.scores, published.source))
    return rows


def _count(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}K" if n >= 1e3 else str(n)
