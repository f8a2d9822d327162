"""Finding, inspecting and organising adapters: list, show, compare, alias, tag, archive, rm, gc."""

from __future__ import annotations

from typing import Annotated

import typer

from eptctl.cli.common import (
    JsonFlag, RegistryUrl, err, fmt_count, fmt_metric, fmt_time, make_table, open_registry, out, print_json,
)
from eptctl.core.limits import SECONDS_MAX, SQL_BIGINT_MAX


def _key_metric(rec, split: str = "test") -> float | None:
    return rec.metric("accuracy", split)


def adapter_summary(rec, metric: str = "accuracy") -> dict:
    """One adapter as ``list --json`` prints it; ``metric`` is its task's primary metric (``primary`` holds its
    validation and test values; ``accuracy`` stays for classification tasks, as before)."""
    values = {"validation": rec.metric(metric, "validation"), "test": rec.metric(metric, "test")}
    return {
        "ref": rec.ref, "id": rec.id, "task": rec.task, "method": rec.method, "backbone": rec.backbone.name,
        "status": rec.status, "metric": metric, "primary": values,
        **({"accuracy": values} if metric == "accuracy" else {}),
        "trainable_params": rec.trainable_params, "created_at": rec.created_at, "aliases": rec.aliases,
        "tags": rec.tags,
    }


def primary_metrics(reg) -> dict[str, str]:
    """Task name -> its primary metric."""
    return {t.name: t.metric for t in reg.list_tasks()}


def check_sort_metric(sort: str, records) -> None:
    """``EptctlError`` when no listed adapter has the metric ``--sort`` names (``NAME`` or ``SPLIT:NAME``): a typo
    would otherwise list every adapter unsorted, with empty columns."""
    from eptctl.core.errors import EptctlError

    split, _, name = sort.rpartition(":")
    stored = {(m.split, m.name) for r in records for m in r.metrics if m.step is None}
    if not any(n == name and (not split or sp == split) for sp, n in stored):
        names = sorted({f"{sp}:{n}" if split else n for sp, n in stored})
        raise EptctlError(f"no listed adapter has a metric {sort!r}",
                          hint="sort by created or by one of: " + ", ".join(names[:12]))


def list_adapters(
    task: Annotated[str | None, typer.Option(help="Only this task.")] = None,
    method: Annotated[str | None, typer.Option(help="Only this method (pt, dept, ept).")] = None,
    backbone: Annotated[str | None, typer.Option(help="Only this backbone (name or embedding sha256 prefix).")] = None,
    tag: Annotated[str | None, typer.Option(help="Only adapters with this tag.")] = None,
    sort: Annotated[str, typer.Option(help="created, or a metric such as accuracy or test:accuracy.")] = "created",
    ascending: Annotated[bool, typer.Option("--ascending", help="Smallest first.")] = False,
    min_accuracy: Annotated[float | None, typer.Option(help="Keep adapters with accuracy ≥ this.", min=0.0, max=1.0)] = None,
    limit: Annotated[int | None, typer.Option(help="Show at most N adapters.", min=1, max=SQL_BIGINT_MAX)] = None,
    archived: Annotated[bool, typer.Option("--archived", help="Include archived adapters.")] = False,
    registry: RegistryUrl = None,
    as_json: JsonFlag = False,
) -> None:
    """List adapters, newest first (or sorted by a metric).

    Example: eptctl list --task rt-polarity --sort accuracy --limit 5
    """
    reg = open_registry(registry)
    records = reg.list_adapters(task=task, backbone=backbone, method=method, tag=tag, sort=sort,
                                descending=not ascending, limit=limit, include_archived=archived,
                                min_metric={"accuracy": min_accuracy} if min_accuracy is not None else None)
    if sort != "created" and records:
        check_sort_metric(sort, records)
    metric_of = primary_metrics(reg)
    if as_json:
        print_json([adapter_summary(r, metric_of.get(r.task, "accuracy")) for r in records])
        return
    table = make_table("ref", "id", "task", "method", "backbone", "metric", "val", "test", "params", "created",
                       "aliases", right=("val", "test", "params"))
    sorted_by = None if sort == "created" else sort.split(":")[-1]  # show what the rows are sorted by
    for r in records:
        m = sorted_by or metric_of.get(r.task, "accuracy")
        table.add_row(r.ref, r.id[:8], r.task, r.method, r.backbone.name, m, fmt_metric(r.metric(m, "validation")),
                      fmt_metric(r.metric(m, "test")), fmt_count(r.trainable_params), fmt_time(r.created_at),
                      ", ".join(r.aliases + [f"#{t}" for t in r.tags]))
    if not records:
        err.print("no adapters yet: train one with `eptctl train rt-polarity`")
        return
    out.print(table)


def show(
    ref: Annotated[str, typer.Argument(help="Adapter: id prefix, TASK@VERSION or TASK@ALIAS.")],
    registry: RegistryUrl = None,
    as_json: JsonFlag = False,
    card: Annotated[bool, typer.Option("--card", help="Print a markdown model card instead.")] = False,
) -> None:
    """Show one adapter: config, metrics, lineage, space weights, parameters by group, backbone, artifacts.

    Example: eptctl show rt-polarity@latest
    """
    from eptctl.workflows.compare import training_settings

    reg = open_registry(registry)
    if card:
        from eptctl.interop.card import adapter_card

        typer.echo(adapter_card(reg, ref), nl=False)
        return
    rec = reg.resolve(ref)
    found, children = {p.id: p for p in reg.parents(rec)}, reg.children(rec)
    lineage = {  # a deleted parent keeps its link: its ref is None and "deleted" says why
        "parents": [{"ref": found[link.parent_id].ref if link.parent_id in found else None, "id": link.parent_id,
                     "weight": link.weight, "how": link.how, "deleted": link.parent_id not in found}
                    for link in rec.parents],
        "children": [{"ref": c.ref, "id": c.id} for c in children],
    }
    final = [m for m in rec.metrics if m.step is None]
    task = reg.get_task(rec.task)
    if as_json:
        print_json({**adapter_summary(rec, task.metric), "task_type": task.task_type, "config": rec.config,
                    "params_by_group": rec.params_by_group,
                    "metrics": final, "space_weights": rec.summary.get("space_weights"),
                    "source_weights": rec.summary.get("source_weights"), "lineage": lineage,
                    "backbone": rec.backbone, "artifacts": rec.artifacts, "run": rec.run,
                    "description": rec.description, "best_step": rec.summary.get("best_step"),
                    "training": training_settings(rec),
                    "history": rec.summary.get("history", [])})
        return
    _print_header_and_tables(rec, task, final)
    _print_details(rec, lineage)


def _print_header_and_tables(rec, task, final) -> None:
    """``show``'s first lines: the reference, the task, the metrics and the trainable parameters."""
    out.print(f"[bold]{rec.ref}[/]  id {rec.id}  ({rec.status})" + (f"  {rec.description}" if rec.description else ""))
    out.print(f"task {rec.task} ({task.task_type}, primary metric {task.metric}) · method {rec.method} · created "
              f"{fmt_time(rec.created_at)}"
              + (f" · aliases {', '.join(rec.aliases)}" if rec.aliases else "")
              + (f" · tags {', '.join(rec.tags)}" if rec.tags else ""))
    metrics = make_table("split", "metric", "value", title="metrics")
    for m in sorted(final, key=lambda m: (m.split, m.name)):
        metrics.add_row(m.split, m.name, fmt_metric(m.value))
    out.print(metrics)
    params = make_table("group", "count", right=("count",), title="trainable parameters")
    for group, count in rec.params_by_group.items():
        if count:
            params.add_row(group, f"{count:,}")
    params.add_row("[bold]total", f"[bold]{rec.trainable_params:,}")
    out.print(params)


def _print_details(rec, lineage: dict) -> None:
    """``show``'s remaining lines: gate and source weights, config, training, backbone, lineage, run, artifacts."""
    from eptctl.workflows.compare import training_settings

    gate = rec.summary.get("space_weights")
    if gate:
        out.print("space weights (gate): " + "  ".join(f"{i}:{w:.3f}" for i, w in enumerate(gate)))
    mix = rec.summary.get("source_weights")
    if mix:
        out.print("source weights (attention): " + "  ".join(f"{w:.3f}" for w in mix))
    cfg = rec.config
    out.print("config: " + ", ".join(f"{k}={v}" for k, v in cfg.items() if k != "schema_version"))
    training = training_settings(rec)
    if training:
        out.print("training: " + ", ".join(f"{k}={v}" for k, v in training.items() if v is not None))
    b = rec.backbone
    out.print(f"backbone: {b.name} (revision {b.revision or '-'}, width {b.width}, max length {b.max_length}, "
              f"embeddings sha256 {b.embedding_sha256[:12]}…, tokenizer sha256 {b.tokenizer_sha256[:12]}…)")
    for p in lineage["parents"]:
        name = f"initialised from a deleted adapter ({p['id']})" if p["deleted"] else p["ref"]
        out.print(f"parent: {name} weight {p['weight']:.3f} ({p['how']})")
    for c in lineage["children"]:
        out.print(f"child: {c['ref']}")
    if rec.run:
        out.print(f"run: seed {rec.run.seed}, {rec.run.duration_s or 0:.1f} s on {rec.run.device}, "
                  f"data {str(rec.run.data_fingerprint)[:12]}…, command: {rec.run.command_line}")
    for a in rec.artifacts:
        out.print(f"artifact {a.kind}: {a.path} ({a.size:,} bytes, sha256 {a.sha256[:12]}…)")


def compare(
    refs: Annotated[list[str], typer.Argument(help="Two or more adapter references.")],
    show_all: Annotated[bool, typer.Option("--all", help="Show every config key, not only those that differ.")] = False,
    registry: RegistryUrl = None,
    as_json: JsonFlag = False,
) -> None:
    """Compare adapters: task and example counts, metrics with deltas to the first, differing config, params, train
    time, prompt similarity. Adapters of different tasks get no deltas; a caveat line says why metrics differ in
    what they measure (tasks, changed data, split sizes).

    Example: eptctl compare rt-polarity@1 rt-polarity@2
    """
    from eptctl.workflows.compare import compare_adapters

    if len(refs) < 2:
        from eptctl.core.errors import EptctlError

        raise EptctlError("compare needs at least two adapters", hint="e.g. eptctl compare rt-polarity@1 rt-polarity@2")
    reg = open_registry(registry)
    report = compare_adapters(reg, refs, all_config=show_all)
    if as_json:
        print_json(report)
        return
    names = [a["ref"] for a in report["adapters"]]
    table = make_table("", *names, right=tuple(names))
    table.add_row("task", *[a["task"] for a in report["adapters"]])
    table.add_row("examples (train/val/test)", *["-" if not a["examples"] else "/".join(
        str(a["examples"].get(k, "-")) for k in ("train", "validation", "test")) for a in report["adapters"]])
    for row in report["metrics"]:
        cells = [fmt_metric(row["values"][0])]
        for v, d in zip(row["values"][1:], row["deltas"][1:]):  # across tasks: values only (see the caveat)
            cells.append(f"{fmt_metric(v)} ({'-' if d is None else f'{d:+.4f}'})" if report["comparable"]
                         else fmt_metric(v))
        table.add_row(f"{row['split']} {row['name']}", *cells)
    table.add_row("trainable params", *[fmt_count(a["trainable_params"]) for a in report["adapters"]])
    table.add_row("train time (s)", *[("-" if a["duration_s"] is None else f"{a['duration_s']:.1f}")
                                      for a in report["adapters"]])
    for key, values in report["config"].items():
        table.add_row(f"config {key}", *[str(v) for v in values])
    out.print(table)
    sim = report["prompt_similarity"]
    out.print("prompt cosine similarity: " + "  ".join(
        f"{names[i]}~{names[j]} " + ("n/a (different backbones)" if v is None else f"{v:.3f}")
        for (i, j), v in ((tuple(p["pair"]), p["cosine"]) for p in sim)))
    for caveat in report["caveats"]:
        out.print(f"caveat: {caveat}", markup=False, highlight=False)


def alias(
    ref: Annotated[str, typer.Argument(help="Adapter reference.")],
    name: Annotated[str, typer.Argument(help="Alias name, e.g. prod (unique per task; moves if it exists).")],
    remove: Annotated[bool, typer.Option("--remove", help="Remove the alias from the task instead.")] = False,
    registry: RegistryUrl = None,
) -> None:
    """Point TASK@NAME at an adapter (or remove the alias).

    Example: eptctl alias rt-polarity@3 prod
    """
    reg = open_registry(registry)
    if remove:
        rec = reg.resolve(ref)
        reg.remove_alias(rec.task, name)
        typer.echo(f"removed {rec.task}@{name}")
        return
    rec = reg.set_alias(ref, name)
    typer.echo(f"{rec.task}@{name} -> {rec.ref}")


def tag(
    ref: Annotated[str, typer.Argument(help="Adapter reference.")],
    tags: Annotated[list[str], typer.Argument(help="Tags to add.")],
    remove: Annotated[bool, typer.Option("--remove", help="Remove these tags instead.")] = False,
    registry: RegistryUrl = None,
) -> None:
    """Add (or remove) tags on an adapter.

    Example: eptctl tag rt-polarity@3 baseline paper
    """
    reg = open_registry(registry)
    rec = reg.remove_tags(ref, tags) if remove else reg.add_tags(ref, tags)
    typer.echo(f"{rec.ref}: tags {', '.join(rec.tags) or '-'}")


def archive(
    ref: Annotated[str, typer.Argument(help="Adapter reference.")],
    restore: Annotated[bool, typer.Option("--restore", help="Un-archive instead.")] = False,
    registry: RegistryUrl = None,
) -> None:
    """Hide an adapter from listings without deleting it.

    Example: eptctl archive rt-polarity@1
    """
    rec = open_registry(registry).archive(ref, archived=not restore)
    typer.echo(f"{rec.ref}: {rec.status}")


def rm(
    ref: Annotated[str, typer.Argument(help="Adapter reference.")],
    force: Annotated[bool, typer.Option("--force", help="Delete even if other adapters descend from it.")] = False,
    registry: RegistryUrl = None,
) -> None:
    """Delete an adapter: its row, metrics and artifact files (files shared with other adapters stay).

    Example: eptctl rm rt-polarity@1
    """
    rec = open_registry(registry).delete(ref, force=force)
    typer.echo(f"deleted {rec.ref} ({rec.id[:8]})")


def gc(
    grace: Annotated[float, typer.Option(help="Keep files younger than this many seconds (running writers).", min=0.0, max=SECONDS_MAX)] = 3600,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would be removed.")] = False,
    registry: RegistryUrl = None,
) -> None:
    """Remove artifact files that no adapter references (left by crashes or deletes).

    Example: eptctl gc --dry-run
    """
    removed = open_registry(registry).gc(grace_seconds=grace, dry_run=dry_run)
    for path in removed:
        typer.echo(str(path))
    err.print(f"{'would remove' if dry_run else 'removed'} {len(removed)} file(s)")
