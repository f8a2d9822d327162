"""Pictures and the HTML report: plot (training curves, prompt-similarity heatmap) and report."""

from __future__ import annotations

from typing import Annotated

import typer

from eptctl.cli.common import RegistryUrl, open_registry
from eptctl.core.errors import EptctlError


def plot(
    target: Annotated[str | None, typer.Argument(
        help="Adapter reference (one adapter) or task name (every adapter of the task, overlaid).")] = None,
    similarity: Annotated[bool, typer.Option(
        "--similarity", help="Draw the prompt cosine-similarity heatmap of the stored adapters instead.")] = False,
    task: Annotated[list[str] | None, typer.Option(
        "--task", help="With --similarity: only adapters of this task (repeat for several).")] = None,
    out: Annotated[str | None, typer.Option(
        "--out", help="PNG file to write (default: TARGET-curves.png or similarity.png here).")] = None,
    registry: RegistryUrl = None,
) -> None:
    """Write a PNG: training loss and validation metric by step (one adapter or a whole task), or with
    --similarity a heatmap of prompt cosine similarity (grouped by backbone; cells across backbones are blank).

    Example: eptctl plot rt-polarity --out rt-polarity.png
    """
    from eptctl.reporting import plots

    if similarity:
        if target is not None:
            raise EptctlError("--similarity takes no adapter or task argument",
                              hint=f"use eptctl plot --similarity --task {target}")
        path = plots.plot_similarity(open_registry(registry), tasks=task or None, out=out)
    else:
        if target is None:
            raise EptctlError("name an adapter or a task to plot, or pass --similarity",
                              hint="e.g. eptctl plot rt-polarity@latest")
        if task:
            raise EptctlError("--task only goes with --similarity", hint=f"use eptctl plot {task[0]}")
        path = plots.plot_curves(open_registry(registry), target, out=out)
    typer.echo(str(path))


def report(
    out: Annotated[str, typer.Argument(help="HTML file to write (self-contained: plots inline, no scripts).")],
    archived: Annotated[bool, typer.Option("--archived", help="Include archived adapters.")] = False,
    registry: RegistryUrl = None,
) -> None:
    """Write one self-contained HTML page of the registry: tasks, adapters, lineage, curves, prompt similarity.

    Example: eptctl report registry.html
    """
    from eptctl.reporting.html import write_report

    typer.echo(str(write_report(open_registry(registry), out, include_archived=archived)))
