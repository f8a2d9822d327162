"""``eptctl train``: train an EPT (or PT/DePT) prompt for a task and register it."""

from __future__ import annotations

import shlex
import signal
import sys
import time
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from eptctl import distributed
from eptctl.cli.common import RegistryUrl, err, fmt_count, fmt_metric, open_registry, print_json
from eptctl.errors import TrainingInterrupted
from eptctl.methods.config import EPTConfig
from eptctl.train_config import TrainConfig

_M = EPTConfig()
_T = TrainConfig()
METHOD = "Method (adapter shape)"
OPTIM = "Optimisation"
DATA = "Custom data"


def train(
    task: Annotated[str, typer.Argument(help="Builtin task (see `eptctl tasks`), a stored task, or a new name with --data.")],
    model: Annotated[str, typer.Option(help="Backbone: embedded name, local folder or hub id.")] = "smollm2-135m",
    method: Annotated[str, typer.Option(help="pt | dept | ept", rich_help_panel=METHOD)] = _M.method,
    prompt_length: Annotated[int, typer.Option(help="l: PT prompt length and the budget l*d.", rich_help_panel=METHOD)] = _M.prompt_length,
    short_length: Annotated[int | None, typer.Option(help="s: short prompt length [default: by budget]", rich_help_panel=METHOD)] = _M.short_length,
    rank: Annotated[int | None, typer.Option(help="r: rank of the embedding offset [default: by budget]", rich_help_panel=METHOD)] = _M.rank,
    max_length: Annotated[int, typer.Option(help="n: max input tokens (longer inputs are truncated).", rich_help_panel=METHOD)] = _M.max_length,
    alpha: Annotated[float, typer.Option(help="Offset scale: H = alpha/sqrt(r) A@B.", rich_help_panel=METHOD)] = _M.alpha,
    fusion: Annotated[bool, typer.Option("--fusion/--no-fusion", help="Prompt fusion (ept).", rich_help_panel=METHOD)] = _M.fusion,
    fusion_dim: Annotated[int, typer.Option(help="d_a: fusion attention width; 0 = parameter-free.", rich_help_panel=METHOD)] = _M.fusion_dim,
    fusion_heads: Annotated[int, typer.Option(help="Fusion attention heads.", rich_help_panel=METHOD)] = _M.fusion_heads,
    projection: Annotated[bool, typer.Option("--projection/--no-projection", help="Multi-space projection (ept).", rich_help_panel=METHOD)] = _M.projection,
    spaces: Annotated[int, typer.Option(help="k: gated subspaces.", rich_help_panel=METHOD)] = _M.spaces,
    space_rank: Annotated[int, typer.Option(help="m: rank of each subspace.", rich_help_panel=METHOD)] = _M.space_rank,
    prompt_init: Annotated[str, typer.Option(help="vocab | text", rich_help_panel=METHOD)] = _M.prompt_init,
    init_text: Annotated[str | None, typer.Option(help="Text whose tokens initialise the prompt.", rich_help_panel=METHOD)] = None,
    steps: Annotated[int | None, typer.Option(help="Optimiser steps.", rich_help_panel=OPTIM)] = _T.steps,
    epochs: Annotated[float | None, typer.Option(help="Epochs (overrides --steps).", rich_help_panel=OPTIM)] = None,
    batch_size: Annotated[int, typer.Option(help="Examples per step.", rich_help_panel=OPTIM)] = _T.batch_size,
    lr_prompt: Annotated[float, typer.Option(help="Learning rate of the prompt.", rich_help_panel=OPTIM)] = _T.lr_prompt,
    lr_low_rank: Annotated[float, typer.Option(help="Learning rate of A and B.", rich_help_panel=OPTIM)] = _T.lr_low_rank,
    lr_fusion: Annotated[float, typer.Option(help="Learning rate of fusion, projection and gate.", rich_help_panel=OPTIM)] = _T.lr_fusion,
    lr_head: Annotated[float, typer.Option(help="Learning rate of the head (encoder backbones).", rich_help_panel=OPTIM)] = _T.lr_head,
    warmup_steps: Annotated[int | None, typer.Option(help="Linear warmup steps [default: 10% of steps].", rich_help_panel=OPTIM)] = None,
    objective: Annotated[str, typer.Option(help="lm (answer tokens) | classify (label scores).", rich_help_panel=OPTIM)] = _T.objective,
    eval_every: Annotated[int | None, typer.Option(help="Validate every N steps [default: 5 times per run].", rich_help_panel=OPTIM)] = None,
    seed: Annotated[int, typer.Option(help="Seed for init and data order.", rich_help_panel=OPTIM)] = _T.seed,
    max_train: Annotated[int | None, typer.Option(help="Use at most N training examples.", rich_help_panel=OPTIM)] = None,
    max_eval: Annotated[int | None, typer.Option(help="Use at most N validation and N test examples.", rich_help_panel=OPTIM)] = None,
    data: Annotated[str | None, typer.Option("--data", help="CSV/TSV/JSONL/Parquet file or folder: defines a custom task.", rich_help_panel=DATA)] = None,
    text_column: Annotated[str, typer.Option(help="Column with the input text.", rich_help_panel=DATA)] = "text",
    text_pair_column: Annotated[str | None, typer.Option(help="Column with a second text (pair tasks).", rich_help_panel=DATA)] = None,
    label_column: Annotated[str, typer.Option(help="Column with the label.", rich_help_panel=DATA)] = "label",
    template: Annotated[str | None, typer.Option(help="Prompt template with {text} (and {text_pair}).", rich_help_panel=DATA)] = None,
    hub: Annotated[bool, typer.Option("--hub", help="Allow --data to name a hub dataset (needs network).", rich_help_panel=DATA)] = False,
    init_from: Annotated[str | None, typer.Option(help="Start from a fusion of stored adapters: REF[:W],REF[:W] or auto.", rich_help_panel="Transfer")] = None,
    transfer_mode: Annotated[str, typer.Option(help="weighted: start from the weighted sum of the sources' components; attention: learn an attention mixture over their frozen prompts (ATTEMPT-style).", rich_help_panel="Transfer")] = "weighted",
    top_k: Annotated[int, typer.Option(help="With --init-from auto: fuse the K best sources.", rich_help_panel="Transfer")] = 2,
    probe: Annotated[int, typer.Option(help="With --init-from auto: rank sources by zero-step accuracy on N validation examples.", rich_help_panel="Transfer")] = 64,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the interrupted run with the same options.")] = False,
    description: Annotated[str, typer.Option(help="Free text stored with the adapter.")] = "",
    tag: Annotated[list[str] | None, typer.Option("--tag", help="Tag the adapter (repeatable).")] = None,
    precision: Annotated[str | None, typer.Option(help="fp32 | bf16 backbone weights [default: bf16 where faster].")] = None,
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code", help="Allow custom model code from the hub.")] = False,
    registry: RegistryUrl = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object with ref and metrics.")] = False,
) -> None:
    """Train a prompt for TASK on a frozen backbone and register it.

    Example: eptctl train rt-polarity --method ept --steps 150

    Example: eptctl train reviews --data reviews.csv --text-column body --label-column stars

    Example: eptctl train rt-subjectivity --init-from rt-polarity@best
    """
    from eptctl import models, runs, transfer

    method_cfg = EPTConfig(method=method, prompt_length=prompt_length, short_length=short_length, rank=rank,
                           max_length=max_length, alpha=alpha, fusion=fusion, fusion_dim=fusion_dim,
                           fusion_heads=fusion_heads, projection=projection, spaces=spaces, space_rank=space_rank,
                           prompt_init=prompt_init, init_text=init_text)
    train_cfg = TrainConfig(steps=steps, epochs=epochs, batch_size=batch_size, lr_prompt=lr_prompt,
                            lr_low_rank=lr_low_rank, lr_fusion=lr_fusion, lr_head=lr_head, warmup_steps=warmup_steps,
                            objective=objective, eval_every=eval_every, seed=seed)
    custom = None if data is None else runs.DataOptions(data, text_column, text_pair_column, label_column, template, hub)
    sources = None if init_from is None else ("auto" if init_from == "auto" else transfer.parse_sources(init_from))
    distributed.init()  # under torchrun / accelerate launch: one rank of a data-parallel run; rank 0 prints
    leader = distributed.is_main()
    reg = open_registry(registry)
    stop = _StopFlag()
    view = _ProgressView(quiet=as_json or not leader)
    backbone = None
    if precision is not None:
        with distributed.main_first():
            backbone = models.load(model, precision=precision, trust_remote_code=trust_remote_code)
    try:
        with stop, view:
            outcome = runs.train_task(
                task, registry=reg, model=model, method_cfg=method_cfg, train_cfg=train_cfg, custom=custom,
                max_train=max_train, max_eval=max_eval, resume=resume, backbone=backbone, description=description,
                tags=tag, command_line=shlex.join(["eptctl", *sys.argv[1:]]), on_event=view.on_event,
                should_stop=stop.is_set, trust_remote_code=trust_remote_code, init_from=sources,
                transfer_mode=transfer_mode, top_k=top_k, probe=probe,
            )
    except TrainingInterrupted as interrupted:
        if leader:
            err.print(f"[yellow]interrupted:[/] {interrupted.message}; {interrupted.hint}")
        raise typer.Exit(130) from None
    if not leader:
        return
    rec = outcome.record
    if as_json:
        print_json({"ref": rec.ref, "id": rec.id, "task": rec.task, "method": rec.method,
                    "metrics": outcome.result.metrics, "params_by_group": rec.params_by_group,
                    "trainable_params": rec.trainable_params, "best_step": outcome.result.best_step,
                    "duration_s": round(outcome.result.duration_s, 2)})
        return
    test = outcome.result.metrics.get("test", {})
    val = outcome.result.metrics.get("validation", {})
    err.print(f"best step {outcome.result.best_step}: validation accuracy {fmt_metric(val.get('accuracy'))}, "
              f"test accuracy {fmt_metric(test.get('accuracy'))}; {fmt_count(rec.trainable_params)} trainable "
              f"parameters; {outcome.result.duration_s:.0f} s")
    typer.echo(f"registered {rec.ref} ({rec.id[:8]})")


class _StopFlag:
    """First Ctrl-C: finish the current step, checkpoint, stop. Second Ctrl-C: stop at once."""

    def __init__(self):
        self._set = False
        self._previous = None

    def is_set(self) -> bool:
        return self._set

    def _handle(self, signum, frame):
        if self._set:
            raise KeyboardInterrupt
        self._set = True
        err.print("[yellow]stopping after this step (Ctrl-C again to abort)…[/]")

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not in the main thread (e.g. under a test runner thread): no handler
            self._previous = None
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


class _ProgressView:
    """Renders training events on stderr: a progress bar with loss, steps/s and ETA, and one line per eval."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[rate]} steps/s"),
            TimeRemainingColumn(), console=err, disable=quiet, transient=False,
        )
        self.task_id = None
        self.started = None
        self.first_step = 0

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def note(self, text: str) -> None:
        if not self.quiet:
            err.print(text)

    def on_event(self, event: dict) -> None:
        kind = event["event"]
        if kind == "data":
            sizes = event["sizes"]
            self.note(f"task {event['task']}: {sizes['train']} train / {sizes['validation']} validation / "
                      f"{sizes['test']} test examples")
        elif kind == "loading_model":
            self.note(f"loading {event['model']} (the first use converts it once)…")
        elif kind == "resumed":
            self.note(f"resumed at step {event['step']} of {event['total']}")
        elif kind == "start":
            p = event["params"]
            self.note(f"trainable parameters: {p['total']:,} (" + ", ".join(
                f"{k} {v:,}" for k, v in p.items() if k != "total" and v) + ")")
            self.started, self.first_step = time.perf_counter(), event["step"]
            self.task_id = self.progress.add_task("train", total=event["total"], completed=event["step"],
                                                  loss="-", rate="-")
        elif kind == "step" and self.task_id is not None:
            elapsed = time.perf_counter() - self.started
            rate = (event["step"] - self.first_step) / elapsed if elapsed > 0 else 0.0
            self.progress.update(self.task_id, completed=event["step"], loss=f"{event['loss']:.4f}",
                                 rate=f"{rate:.2f}")
        elif kind == "eval":
            m = event["metrics"]
            self.progress.console.print(
                f"step {event['step']}/{event['total']}: validation accuracy {fmt_metric(m.get('accuracy'))}, "
                f"macro-F1 {fmt_metric(m.get('macro_f1'))} (best step {event['best_step']})"
            ) if not self.quiet else None
        elif kind == "auto_sources":
            self.note("auto-selected sources: " + ", ".join(
                f"{r.get('ref', r['id'][:8])}" + (f" (probe accuracy {r['probe_accuracy']:.3f})" if "probe_accuracy" in r else "")
                for r in event["ranked"]))
        elif kind == "fused_init":
            self.note("initialised from " + ", ".join(f"{pid[:8]}×{w:.2f}" for pid, w in event["parents"]))
        elif kind == "attention_init":
            self.note("attention over the frozen prompts of " + ", ".join(event["sources"]))
        elif kind == "final_eval":
            self.note("evaluating the best checkpoint on validation and test…")
