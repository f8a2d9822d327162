"""Few-shot forward transfer: does a target task trained on K examples gain from a stored source prompt?

    python -m bench transfer [--pairs rt-polarity:tweet-sentiment,...] [--shots 16,64,256]
        [--inits random,all,prompt,prompt+low-rank,attention,auto,...] [--seeds 0,1,2] [--steps 30]
        [--test-rows 500] [--home DIR] [--cells PATH] [--plot PATH] [--precision fp32|bf16]
        [--source-steps N] [--source-max-eval N]

Each cell (pair, K, init, seed) trains the target with the default EPT shape and learning rates on the same K
training examples (`--train-examples K`: stratified by label, the same for every seed) for an equal budget of
`--steps` steps of batch 16, keeps the last step (a K-shot run has no large validation set to pick a step with) and
scores it on the first `--test-rows` rows of the target's test split. The zero-step accuracy of each init (before
any training; first 200 test rows) is recorded beside it. Inits (`--inits`, see INITS):

- random: a fresh adapter (vocabulary-sampled prompt), what `eptctl train TASK` does;
- all, prompt, prompt+low-rank: `--init-from SOURCE@best --transfer-components C` (weighted fusion, one source);
- attention: `--init-from SOURCE@best --transfer-mode attention`;
- auto: `--init-from auto` with the CLI's defaults (every stored adapter of another task is ranked by shared answer
  words, then zero-step probe score; the ranking, with both figures, is recorded per target); auto-probe-top2: the
  rule eptctl used before (zero-step accuracy alone, the 2 best fused uniformly);
- remedies for a transferred start: all-lr0.03 (`all` with `--lr-prompt 0.03`), vector (the source's task vector,
  trained minus initial components, added to a fresh adapter's: the task-prompt-vector form).

Sources are `TASK@best` in the registry under `--home` (default .bench-out/transfer-home); a missing one is trained
first with `eptctl train TASK`'s defaults (recorded as such). `--auto-candidates` names the tasks that must be stored
before `auto` cells run. Cells are kept in `--cells` as they finish (resumable: the same command skips them); the
table gives mean ± standard deviation over seeds and the paired difference to random init; the PNG plots test
accuracy against K per init with error bars.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

OUT = Path(".bench-out")
PAIRS = "rt-polarity:tweet-sentiment,tweet-sentiment:rt-polarity,rt-polarity:rt-subjectivity"
INITS = ("random", "all", "prompt", "prompt+low-rank", "attention", "auto", "auto-probe-top2", "all-lr0.03",
         "vector")
ZERO_STEP_ROWS = 200


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench transfer", description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", default=PAIRS, help="SOURCE:TARGET,... (default: the three pairs of issue 15)")
    parser.add_argument("--shots", default="16,64,256", help="K values (training examples of the target)")
    parser.add_argument("--inits", default="random,all", help=f"comma-separated, from {', '.join(INITS)}")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=30, help="training steps per cell (batch 16)")
    parser.add_argument("--test-rows", type=int, default=500)
    parser.add_argument("--auto-candidates", default="rt-polarity,rt-subjectivity,bbc-topic,tweet-sentiment",
                        help="tasks stored (trained with the defaults if missing) before auto cells run")
    parser.add_argument("--home", type=Path, default=OUT / "transfer-home", help="EPTCTL_HOME holding the sources")
    parser.add_argument("--cells", type=Path, default=OUT / "transfer-cells.json")
    parser.add_argument("--plot", type=Path, default=OUT / "transfer.png")
    parser.add_argument("--source-steps", type=int, default=None,
                        help="steps of a source trained here, validated 5 times, best kept (default: eptctl train's default)")
    parser.add_argument("--source-max-eval", type=int, default=None,
                        help="validation and test rows of a source trained here (default: eptctl train's; the "
                             "tests use a few to run the harness in seconds)")
    parser.add_argument("--model", default=None, help="backbone (default: eptctl's default model)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default=None,
                        help="backbone precision, sources included (default: eptctl's choice for this CPU: bf16 with "
                             "AMX/AVX512-BF16 units, else fp32); each precision needs its own --home and --cells "
                             "(sources and cells are looked up by name: a run refuses those of the other precision)")
    args = parser.parse_args(argv)
    unknown = [i for i in args.inits.split(",") if i not in INITS]
    if unknown:
        parser.error(f"unknown --inits {unknown}; choose from {', '.join(INITS)}")
    return args


def run(quick: bool = False, argv: list[str] | None = None) -> dict:
    args = parse(argv or [])
    if quick:
        args.steps, args.test_rows = min(args.steps, 5), min(args.test_rows, 50)
    os.environ["EPTCTL_HOME"] = str(args.home.resolve())
    os.environ.pop("EPTCTL_REGISTRY_URL", None)  # the bench's own registry, never the user's
    from eptctl import backbones
    from eptctl.core.files import write_atomic
    from registry import Registry

    pairs = [tuple(p.split(":")) for p in args.pairs.split(",")]
    shots = [int(k) for k in args.shots.split(",")]
    inits = args.inits.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    cells = json.loads(args.cells.read_text()) if args.cells.exists() else {}
    model = args.model or backbones.DEFAULT_MODEL
    backbone = backbones.load(model, precision=args.precision)
    other = sorted({c["precision"] for c in cells.values() if c.get("precision", backbone.precision)
                    != backbone.precision})
    if other:  # a resumed cell of another precision would be reported as this run's
        raise SystemExit(f"{args.cells} holds {', '.join(other)} cells; this run is {backbone.precision}: "
                         f"pass --cells (and --home) of its own")
    reg = Registry()
    lab = _Lab(reg, backbone, model, args)
    auto = any(init.startswith("auto") for init in inits)  # both auto rules rank the stored candidates
    sources = {src for src, _ in pairs} | (set(args.auto_candidates.split(",")) if auto else set())
    for task in sorted(sources):
        lab.source(task)
    for src, tgt in pairs:
        for k in shots:
            for seed in seeds:
                for init in inits:
                    key = f"{model}|{src}->{tgt}|K={k}|{init}|seed={seed}|steps={args.steps}|test={args.test_rows}"
                    if key in cells:
                        continue
                    cells[key] = lab.cell(src, tgt, k, init, seed)
                    print(json.dumps({key: {c: cells[key][c] for c in ("zero_step", "test_accuracy", "seconds")}}),
                          flush=True)
                    args.cells.parent.mkdir(parents=True, exist_ok=True)
                    write_atomic(args.cells, json.dumps(cells, indent=1).encode())  # a crash keeps the cells done
    mine = [c for c in cells.values() if c["model"] == model and c["steps"] == args.steps
            and c["test_rows"] == args.test_rows and (c["source"], c["target"]) in pairs and c["k"] in shots
            and c["init"] in inits and c["seed"] in seeds]
    rows = summarise(mine)
    plot(rows, args.plot, model)
    rankings = {task: [{k: r[k] for k in ("ref", "task", "shared_answers", "probe_score")} for r in ranked]
                for task, ranked in lab.ranked.items()}
    return {"rows": rows, "sources": lab.source_info, "auto_rankings": rankings, "cells": mine}


class _Lab:
    """The backbone, registry and caches a run of cells shares (encoded data per target and K, zero-step scores)."""

    def __init__(self, reg, backbone, model: str, args) -> None:
        from eptctl.methods import EPTConfig

        self.reg, self.backbone, self.model, self.args = reg, backbone, model, args
        self.cfg = EPTConfig().resolved(backbone.width)
        self.encoded, self.zero, self.source_info, self.ranked = {}, {}, {}, {}  # ranked: target -> candidates

    def source(self, task: str):
        """``task@best`` in the bench's registry, trained with eptctl train's defaults if missing."""
        from eptctl.core.errors import EptctlError
        from eptctl.engine.config import TrainConfig
        from eptctl.workflows.train import train_task

        try:
            record = self.reg.resolve(f"{task}@best")
        except EptctlError:  # not stored yet
            steps = self.args.source_steps
            print(f"training source {task}" + (f" for {steps} steps" if steps else " with the defaults"), flush=True)
            # --source-steps N also validates 5 times and keeps the best step, as the defaults did when
            # docs/transfer.md was measured (N = 150); the objective stays lm for the same reason.
            given = {"steps": steps, "eval_every": max(1, steps // 5)} if steps else {}
            train_cfg = TrainConfig(objective="lm", **given)
            rows = self.args.source_max_eval
            record = train_task(task, registry=self.reg, model=self.model, backbone=self.backbone, train_cfg=train_cfg,
                                max_eval=rows, command_line=f"eptctl train {task} --objective lm" + (
                                    f" --steps {steps} --eval-every {given['eval_every']}" if steps else "") + (
                                    f" --max-eval {rows}" if rows else "")).record
        device = record.run.device or ""  # "cpu (bf16)"; records from before the precision was named end otherwise
        if device.endswith(")") and not device.endswith(f"({self.backbone.precision})"):
            raise SystemExit(f"source {record.ref} in {self.args.home} was trained on {device}; this run is "
                             f"{self.backbone.precision}: pass --home (and --cells) of its own")
        test = next((m.value for m in record.metrics if m.split == "test" and m.name == "accuracy"), None)
        self.source_info[task] = {"ref": record.ref, "steps": record.summary.get("steps"),
                                  "test_accuracy": test, "seed": record.run.seed}
        return record

    def data(self, target: str, k: int):
        from eptctl import data
        from eptctl.engine.encoding import encode_task
        from eptctl.workflows.tasks import resolve_spec

        if (target, k) not in self.encoded:
            spec = resolve_spec(target, self.reg)
            task_data = data.load_task(spec, max_eval=self.args.test_rows, train_examples=k)
            self.encoded[(target, k)] = encode_task(self.backbone, spec, self.cfg.max_length, task_data=task_data)
        return self.encoded[(target, k)]

    def start(self, src: str, init: str, enc, seed: int):
        """(init tensors, method config, lr override, note) of one init."""
        from eptctl.workflows.transfer import Source, TransferOptions, prepare_transfer

        spec = enc.spec
        chosen: list[dict] = []
        if init == "random":
            return None, self.cfg, None, ""
        if init == "vector":
            return self._task_vector(src, spec, seed), self.cfg, None, ""
        if init == "auto-probe-top2":
            # The old rule sorted the registry's list by probe score alone (ties keep the list's order).
            scores = {r["id"]: r for r in self._ranking(spec, enc)}
            listed = [scores[r.id] for r in self.reg.list_adapters() if r.id in scores]
            ranked = sorted(listed, key=lambda r: r["probe_score"], reverse=True)[:2]
            options = TransferOptions([Source(r["ref"]) for r in ranked])
            chosen.extend(ranked)
        elif init == "auto":
            options = TransferOptions("auto")
        elif init == "attention":
            options = TransferOptions([Source(f"{src}@best")], mode="attention")
        else:
            components = "all" if init == "all-lr0.03" else init
            options = TransferOptions([Source(f"{src}@best")], components=components)
        start = prepare_transfer(self.reg, options, self.backbone, self.cfg, spec, enc.task_data.validation, seed,
                                 emit=lambda e: chosen.extend(getattr(e, "ranked", [])))
        if init == "auto":
            self._ranking(spec, enc)  # recorded beside the cells: every candidate with both figures
        note = "+".join(r["ref"] for r in chosen) if init.startswith("auto") else ""
        return start.init_tensors, start.method_cfg, 0.03 if init == "all-lr0.03" else None, note

    def _ranking(self, spec, enc) -> list[dict]:
        from eptctl.workflows.transfer import probe_sources

        if spec.name not in self.ranked:  # the stored sources do not change during a run
            candidates = [r for r in self.reg.list_adapters() if r.task != spec.name]
            self.ranked[spec.name] = probe_sources(self.reg, spec, self.backbone, enc.task_data.validation[:64],
                                                   candidates)
        return self.ranked[spec.name]

    def _task_vector(self, src: str, spec, seed: int) -> dict:
        """The source's task vector added to a fresh adapter (see :func:`task_vector_start`)."""
        from eptctl.engine.loop import new_adapter
        from eptctl.methods import EPTConfig
        from eptctl.workflows.transfer import best_state

        record = self.reg.resolve(f"{src}@best")
        # The source's own start: its config and seed rebuild it exactly (the init is a function of both).
        src_init = new_adapter(self.backbone, EPTConfig.from_dict(record.config), 0, record.run.seed).state_dict()
        fresh = new_adapter(self.backbone, self.cfg, spec.head_size, seed).state_dict()
        return task_vector_start(best_state(self.reg, record), src_init, fresh)

    def cell(self, src: str, tgt: str, k: int, init: str, seed: int) -> dict:
        import dataclasses

        from eptctl.engine.config import TrainConfig
        from eptctl.engine.loop import FitRun, FitTask, fit, new_adapter
        from eptctl.engine.scoring import evaluate_encoded

        enc = self.data(tgt, k)
        spec = enc.spec
        started = time.perf_counter()
        init_tensors, method_cfg, lr_prompt, note = self.start(src, init, enc, seed)
        fresh = new_adapter(self.backbone, method_cfg, spec.head_size, seed, init_tensors)
        zero_key = (src, tgt, init, seed)  # the init does not depend on K
        if zero_key not in self.zero:
            fresh.eval()
            self.zero[zero_key] = evaluate_encoded(self.backbone, fresh, enc.test[:ZERO_STEP_ROWS],
                                                   enc.answers)["accuracy"]
        train_cfg = TrainConfig(steps=self.args.steps, eval_every=self.args.steps, seed=seed, objective="lm")
        if lr_prompt is not None:
            train_cfg = dataclasses.replace(train_cfg, lr_prompt=lr_prompt)
        norms = start_norms(fresh)
        result = fit(self.backbone, enc.train, enc.validation[:32], enc.answers, method_cfg, train_cfg,
                     task=FitTask(spec.head_size, test_set=enc.test), run=FitRun(adapter=fresh))
        losses = [h["loss"] for h in result.history if "loss" in h]
        return {"model": self.model, "precision": self.backbone.precision, "source": src, "target": tgt, "k": k,
                "init": init, "seed": seed, "steps": self.args.steps, "test_rows": len(enc.test),
                "zero_step": round(self.zero[zero_key], 4),
                "test_accuracy": round(result.metrics["test"]["accuracy"], 4),
                "test_macro_f1": round(result.metrics["test"].get("macro_f1", float("nan")), 4),
                "loss_first": losses[0], "loss_last": losses[-1], "loss_max_after_warmup": max(losses[3:] or losses),
                "losses": losses, **norms, "auto_picked": note,
                "seconds": round(time.perf_counter() - started, 1)}


def task_vector_start(trained: dict, source_init: dict, fresh: dict) -> dict:
    """``fresh + (trained − source_init)`` per component, heads excluded: the task-prompt-vector start (task
    arithmetic, Ilharco et al. 2023, applied to prompts as in Belanec et al. 2024). All tensors keyed like an
    adapter's state dict; a source that never moved from its init gives back ``fresh``."""
    from eptctl.workflows.transfer import TASK_SPECIFIC

    return {k: fresh[k].float().cpu() + (trained[k].float().cpu() - source_init[k].float().cpu())
            for k in trained if not k.startswith(TASK_SPECIFIC) and k in fresh}


def start_norms(adapter) -> dict:
    """Sizes of the starting point: mean L2 norm of the short prompt's rows and Frobenius norm of the input offset
    ``scale·A·B`` (zero for a fresh adapter, whose B starts at 0), to compare transferred starts with fresh ones."""
    import torch

    with torch.no_grad():
        offset = adapter.decomposition.offset()
        return {"start_prompt_row_norm": round(float(adapter.decomposition.prompt.float().norm(dim=-1).mean()), 4),
                "start_offset_norm": 0.0 if offset is None else round(float(offset.float().norm()), 4)}


def _mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def summarise(cells: list[dict]) -> list[dict]:
    """One row per (pair, K, init, precision): mean ± sd over seeds of zero-step and test accuracy, and the paired
    gain over random init at the same precision (bf16 and fp32 cells never pool)."""
    groups: dict[tuple, list[dict]] = {}
    for c in cells:
        # cells from before the precision was recorded: "?" keeps them apart from either precision
        groups.setdefault((c["source"], c["target"], c["k"], c["init"], c.get("precision", "?")), []).append(c)
    order = {name: i for i, name in enumerate(INITS)}
    rows = []
    for (src, tgt, k, init, prec), group in sorted(groups.items(),
                                                   key=lambda g: (g[0][:3], g[0][4], order[g[0][3]])):
        by_seed = {c["seed"]: c for c in group}
        base = {c["seed"]: c for c in groups.get((src, tgt, k, "random", prec), [])}
        gains = [by_seed[s]["test_accuracy"] - base[s]["test_accuracy"] for s in by_seed if s in base]
        picked = sorted({c["auto_picked"] for c in group if c["auto_picked"]})
        rows.append({"source": src, "target": tgt, "K": k, "init": init, "precision": prec, "seeds": len(group),
                     "zero_step": _mean_sd([c["zero_step"] for c in group]),
                     "test_acc": _mean_sd([c["test_accuracy"] for c in group]),
                     "test_macro_f1": _mean_sd(f1s) if (f1s := [c["test_macro_f1"] for c in group
                                                                 if "test_macro_f1" in c]) else "",
                     "gain_vs_random": "" if init == "random" or not gains else
                     f"{statistics.mean(gains) * 100:+.1f} pt" + (f" ± {statistics.stdev(gains) * 100:.1f}"
                                                                   if len(gains) > 1 else ""),
                     "auto_picked": ",".join(picked),
                     "mean_test": round(statistics.mean(c["test_accuracy"] for c in group), 4),
                     "sd_test": round(statistics.stdev(c["test_accuracy"] for c in group), 4) if len(group) > 1 else 0.0,
                     "s_per_cell": round(statistics.mean(c["seconds"] for c in group))})
    return rows


def plot(rows: list[dict], path: Path, model: str) -> None:
    """Test accuracy versus K per init (error bars: sd over seeds), one panel per pair."""
    if not rows:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = list(dict.fromkeys((r["source"], r["target"]) for r in rows))
    fig, axes = plt.subplots(1, len(pairs), figsize=(max(7.5, 5.2 * len(pairs)), 4.2), squeeze=False)
    for ax, (src, tgt) in zip(axes[0], pairs):
        mine = [r for r in rows if (r["source"], r["target"]) == (src, tgt)]
        precisions = sorted({r["precision"] for r in mine})
        for prec in precisions:
            for init in sorted({r["init"] for r in mine if r["precision"] == prec}, key=INITS.index):
                points = sorted((r["K"], r["mean_test"], r["sd_test"]) for r in mine
                                if r["init"] == init and r["precision"] == prec)
                ks, means, sds = zip(*points)
                # One colour per init in every panel (INITS order), so panels read alike; a second precision
                # gets hollow markers.
                ax.errorbar(ks, means, yerr=sds, marker="o", capsize=3, linestyle="--" if init == "random" else "-",
                            label=init if len(precisions) == 1 else f"{init} ({prec})",
                            color=f"C{INITS.index(init) % 10}", mfc="none" if prec != precisions[0] else None)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({r["K"] for r in mine}), [str(k) for k in sorted({r["K"] for r in mine})])
        ax.set_title(f"{src} → {tgt}")
        ax.set_xlabel("training examples K")
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"EPT on {model}: K-shot targets, start from a source prompt vs random (mean ± sd over seeds)",
                 fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
