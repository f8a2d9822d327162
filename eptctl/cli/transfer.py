"""Transfer commands: lineage, similar, continual."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.tree import Tree

from eptctl.cli.common import (
    QUICK_PHASE_S, DataDirOption, JsonFlag, RegistryUrl, console_progress, err, fmt_metric, make_table, open_registry,
    out, print_json,
)
from eptctl.backbones import DEFAULT_MODEL
from eptctl.core import events
from eptctl.core.errors import EptctlError
from eptctl.core.limits import BATCH_MAX, ROWS_MAX, SEED_MAX, STEPS_MAX
from eptctl.core.secrets import recorded_command_line


def _ancestry(reg, rec, seen: set) -> dict:
    node = {"ref": rec.ref, "id": rec.id, "task": rec.task, "method": rec.method,
            "accuracy": rec.metric("accuracy", "test"), "parents": []}
    if rec.id in seen:  # lineage is a DAG; print each adapter's ancestry once
        return node
    seen.add(rec.id)
    found = {p.id: p for p in reg.parents(rec)}
    for link in rec.parents:
        if link.parent_id in found:
            child = _ancestry(reg, found[link.parent_id], seen)
        else:  # deleted since: the link keeps its id and how this adapter was initialised
            child = {"ref": None, "id": link.parent_id, "deleted": True, "parents": []}
        child.update(weight=link.weight, how=link.how)
        node["parents"].append(child)
    return node


def _label(node: dict) -> str:
    extra = f" ×{node['weight']:.2f} ({node['how']})" if "weight" in node else ""
    if node.get("deleted"):
        return f"initialised from a deleted adapter ({node['id']}){extra}"
    return f"[bold]{node['ref']}[/] {node['method']} test acc {fmt_metric(node['accuracy'])}{extra}"


def _grow(tree: Tree, node: dict) -> None:
    for parent in node["parents"]:
        _grow(tree.add(_label(parent)), parent)


def lineage(
    ref: Annotated[str, typer.Argument(help="Adapter reference.")],
    registry: RegistryUrl = None,
    as_json: JsonFlag = False,
) -> None:
    """Print where an adapter came from (parents, recursively, with fusion weights) and what descends from it.

    Example: eptctl lineage rt-subjectivity@latest
    """
    reg = open_registry(registry)
    rec = reg.resolve(ref)
    tree = _ancestry(reg, rec, set())
    children = [{"ref": c.ref, "id": c.id, "task": c.task} for c in reg.children(rec)]
    if as_json:
        print_json({**tree, "children": children})
        return
    view = Tree(_label(tree))
    _grow(view, tree)
    out.print(view)
    if children:
        out.print("children: " + ", ".join(c["ref"] for c in children))


def similar(
    target: Annotated[str, typer.Argument(help="Adapter reference, or a task name (then --probe is needed).")],
    top_k: Annotated[int, typer.Option(help="Show the K most similar adapters.", min=1, max=ROWS_MAX)] = 5,
    probe: Annotated[int | None, typer.Option(help="Also rank as sources for the target: shared answer words, then zero-step score on N of its examples.", min=1, max=ROWS_MAX)] = None,
    model: Annotated[str | None, typer.Option(help="Backbone for --probe on a task with no adapter yet.")] = None,
    registry: RegistryUrl = None,
    as_json: JsonFlag = False,
) -> None:
    """Rank stored adapters by prompt cosine similarity (SPoT-style) and, with --probe N, as sources for the target
    the way --init-from auto does (shared answer words, then zero-step score on N examples).

    Example: eptctl similar rt-subjectivity@latest --top-k 3 --probe 64
    """
    from eptctl import backbones, data
    from eptctl.workflows import inference, transfer
    from eptctl.workflows.tasks import resolve_spec

    reg = open_registry(registry)
    try:
        rec = reg.resolve(target)
    except EptctlError:
        rec = None
    result: dict = {"target": target}
    if rec is not None:
        result["by_cosine"] = transfer.rank_by_similarity(reg, rec.id, top_k)
        spec = inference.load_adapter(reg, rec.id).spec
        backbone_name = model or rec.backbone.name
    else:
        spec = resolve_spec(target, reg)
        if probe is None:
            raise EptctlError(f"'{target}' has no adapter to compare prompts with",
                              hint=f"add --probe N to rank adapters by zero-step accuracy on {target}")
        backbone_name = model or DEFAULT_MODEL
    if probe:
        with console_progress(enabled=not as_json, delay=QUICK_PHASE_S):  # a first use converts the model
            backbone = backbones.load(backbone_name)
        examples = data.load_task(spec, max_eval=probe).validation
        ranked = transfer.probe_sources(reg, spec, backbone, examples, top_k=None)
        result["by_probe"] = [r for r in ranked if rec is None or r["id"] != rec.id][:top_k]
    if as_json:
        print_json(result)
        return
    if "by_cosine" in result:
        table = make_table("ref", "task", "method", "cosine", title=f"{target}: cosine")
        for r in result["by_cosine"]:
            table.add_row(r["ref"], r["task"], r["method"], f"{r['cosine']:.4f}")
        out.print(table)
    if "by_probe" in result:
        metric = result["by_probe"][0]["probe_metric"] if result["by_probe"] else "score"
        table = make_table("ref", "task", "method", "shared answers", f"probe {metric}",
                           title=f"{target}: as a source (shared answer words, then zero-step {metric})")
        for r in result["by_probe"]:
            table.add_row(r["ref"], r["task"], r["method"], f"{r['shared_answers']:.0%}", f"{r['probe_score']:.4f}")
        out.print(table)


def continual(
    tasks: Annotated[list[str], typer.Argument(help="Tasks in the order to learn them.")],
    model: Annotated[str, typer.Option(help="Backbone.")] = DEFAULT_MODEL,
    method: Annotated[str, typer.Option(help="pt | dept | ept")] = "ept",
    steps: Annotated[int, typer.Option(help="Steps per task (a small budget shows transfer best).", min=1, max=STEPS_MAX)] = 50,
    batch_size: Annotated[int, typer.Option(help="Examples per step.", min=1, max=BATCH_MAX)] = 16,
    max_train: Annotated[int | None, typer.Option(help="At most N training examples per task.", min=1, max=ROWS_MAX)] = None,
    max_eval: Annotated[int | None, typer.Option(help="At most N validation/test examples per task.", min=1, max=ROWS_MAX)] = None,
    train_examples: Annotated[int | None, typer.Option(help="Few-shot: K training examples per task, stratified by label, the same for every seed.", min=1, max=ROWS_MAX)] = None,
    seed: Annotated[int, typer.Option(help="Seed.", min=0, max=SEED_MAX)] = 0,
    no_transfer: Annotated[bool, typer.Option("--no-transfer", help="Random init for every task (the baseline).")] = False,
    no_baseline: Annotated[bool, typer.Option("--no-baseline", help="Skip the random-init runs (no forward transfer figure).")] = False,
    data_dir: DataDirOption = None,
    registry: RegistryUrl = None,
    as_json: JsonFlag = False,
) -> None:
    """Learn tasks in order, each from the fusion of those before; report accuracy, forgetting, forward transfer.

    Example: eptctl continual rt-polarity rt-subjectivity bbc-topic --steps 50
    """
    from eptctl.engine.config import TrainConfig
    from eptctl.methods import EPTConfig
    from eptctl.workflows import continual as continual_lib

    if len(tasks) < 2:
        raise EptctlError("continual needs at least two tasks", hint="e.g. eptctl continual rt-polarity rt-subjectivity")
    reg = open_registry(registry)
    shots = f" ({train_examples}-shot)" if train_examples else ""

    def on_event(event: events.Event) -> None:  # besides the reporter's lines and bars (stages, training)
        if isinstance(event, events.ForwardTransfer) and not as_json:
            err.print(f"  {event.task}{shots}: fused init {event.fused_init:.4f} vs random init "
                      f"{event.random_init:.4f} ({event.delta:+.4f})")

    with console_progress(enabled=not as_json) as reporter:
        report = continual_lib.continual(
            reg, tasks, model=model, method_cfg=EPTConfig(method=method),
            train_cfg=TrainConfig(steps=steps, batch_size=batch_size, seed=seed), transfer=not no_transfer,
            baseline=not no_baseline, max_train=max_train, max_eval=max_eval,
            on_event=events.tee(on_event, reporter), command_line=recorded_command_line(sys.argv),
            train_examples=train_examples)
    if as_json:
        print_json(report)
        return
    stages = [f"after {i + 1}: {t}" for i, t in enumerate(tasks)]
    table = make_table("task", *stages, right=tuple(stages), title="test accuracy: tasks × stages")
    for t in tasks:
        table.add_row(t, *["" if v is None else f"{v:.4f}" for v in report["matrix"][t]])
    out.print(table)
    out.print(f"forgetting (max over tasks): {report['max_forgetting']:.6f}; re-evaluation vs stored metrics: "
              f"{report['reeval_vs_stored_max_diff']:.6f}")
    for t, ft in report["forward_transfer"].items():
        out.print(f"forward transfer {t}{shots}: {ft['delta']:+.4f} (fused {ft['fused_init']:.4f}, random {ft['random_init']:.4f})")
