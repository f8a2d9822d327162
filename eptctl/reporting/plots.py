"""Pictures of the registry: training curves from the history recorded during training, and a heatmap of the cosine
similarity of stored prompts.

matplotlib is imported only when a picture is drawn, and only its object API on the Agg canvas is used: no pyplot
global state, no display, safe next to a program that set up another backend.
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from eptctl.core.errors import EptctlError
from eptctl.core.files import check_writable, write_atomic

PNG = (".png",)


# --- training curves ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Curve:
    """What one adapter recorded while it trained: (step, value) points, the validation rows behind each point
    (None where the history does not say), the run's step count and the step whose weights were stored."""

    ref: str
    task: str
    method: str
    metric: str  # the task's metric, e.g. accuracy
    loss: list[tuple[int, float]]
    validation: list[tuple[int, float]]
    best_step: int | None
    rows: list[int | None] = field(default_factory=list)  # validation rows of each point of ``validation``
    steps: int | None = None  # the run's optimiser steps

    @property
    def last_step(self) -> int:
        """The largest step the curve spans: the run's step count, else its last point."""
        return max([self.steps or 0, *(s for s, _ in self.loss), *(s for s, _ in self.validation)])


def curve_of(record, metric: str) -> Curve | None:
    """The adapter's recorded curves, or None when it recorded no history (e.g. registered by other code)."""
    loss, validation, rows = [], [], []
    for point in record.summary.get("history") or []:
        step = point.get("step") if isinstance(point, dict) else None
        if not isinstance(step, int):
            continue
        if _finite(point.get("loss")):
            loss.append((step, float(point["loss"])))
        value = (point.get("validation") or {}).get(metric)
        if _finite(value):
            validation.append((step, float(value)))
            rows.append(point.get("rows") if isinstance(point.get("rows"), int) else None)
    if not validation:  # adapters registered by other code may carry only the stepped metric values
        validation = sorted((m.step, m.value) for m in record.metrics
                            if m.split == "validation" and m.name == metric and m.step is not None)
        rows = [None] * len(validation)
    if not loss and not validation:
        return None
    steps = record.summary.get("steps")
    return Curve(record.ref, record.task, record.method, metric, loss, validation, record.summary.get("best_step"),
                 rows, steps if isinstance(steps, int) else None)


def select_adapters(registry, target: str) -> list:
    """A task name: its adapters (oldest first); otherwise one adapter reference (id prefix, TASK@VERSION, ...)."""
    from registry import RegistryError

    if "@" not in target and target in {t.name for t in registry.list_tasks()}:
        records = registry.list_adapters(task=target, descending=False)
        if not records:
            raise EptctlError(f"task {target!r} has no adapters: nothing to plot",
                              hint=f"train one with `eptctl train {target}`; an archived one plots by its reference")
        return records
    try:
        return [registry.resolve(target)]
    except RegistryError:
        if "@" in target:
            raise
        raise EptctlError(f"no adapter or task matches {target!r}",
                          hint="name a task (see `eptctl tasks`) or an adapter (see `eptctl list`)") from None


def training_curves(registry, target: str) -> list[Curve]:
    """Curves of the adapter or of every adapter of the task ``target``; adapters without history are left out."""
    records = select_adapters(registry, target)
    metrics = {}
    curves = []
    for rec in records:
        if rec.task not in metrics:
            metrics[rec.task] = registry.get_task(rec.task).metric
        curve = curve_of(rec, metrics[rec.task])
        if curve is not None:
            curves.append(curve)
    if not curves:
        which = f"adapter {records[0].ref} has" if len(records) == 1 else f"no adapter of task {target!r} has"
        raise EptctlError(f"{which} no recorded training history: nothing to plot",
                          hint="adapters trained with `eptctl train` record one; see `eptctl show REF --json`")
    return curves


def curves_png(curves: list[Curve], title: str) -> bytes:
    """The PNG of :func:`curves_figure`."""
    return _png(curves_figure(curves, title))


def curves_figure(curves: list[Curve], title: str):
    """A matplotlib ``Figure`` with two panels over training steps: the loss at every step (raw and a running mean)
    and the validation metric at every validation, one colour per adapter, the kept step starred. A point on more
    rows than the others (the final evaluation on the whole split) is a hollow diamond; an adapter validated once
    says so on the panel. The x axis runs from step 0 to the end of the longest run, in whole steps."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(11, 4.2), layout="constrained")
    loss_ax, val_ax = fig.subplots(1, 2)
    singles = []
    for curve, colour in zip(curves, _colours(len(curves))):
        label = f"{curve.ref} ({curve.method})"
        _draw_loss(loss_ax, curve, colour, label)
        if curve.validation:
            _draw_validation(val_ax, curve, colour, label)
        if len(curve.validation) == 1:
            singles.append(curve)
    metric = curves[0].metric
    loss_ax.set(title="training loss (every step)", xlabel="step", ylabel="loss")
    val_ax.set(title=f"validation {metric} (★ the kept step: its weights are stored)", xlabel="step", ylabel=metric)
    right = max(curve.last_step for curve in curves)
    for ax in (loss_ax, val_ax):
        ax.grid(alpha=0.3)
        ax.set_xlim(0, right + max(1, right // 20))  # the whole run from step 0, whatever was recorded
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.lines:
            ax.legend(fontsize="small", loc="best")
        else:
            ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes, color="grey")
    if singles:
        val_ax.text(0.02, 0.03, _single_note(singles), transform=val_ax.transAxes, fontsize="small", color="dimgrey",
                    va="bottom", wrap=True)
    fig.suptitle(title)
    return fig


def _draw_loss(ax, curve: Curve, colour, label: str) -> None:
    if not curve.loss:
        return
    steps, values = zip(*curve.loss)
    smooth = _running_mean(values, max(1, len(values) // 20))
    if len(values) > 1 and smooth != list(values):
        ax.plot(steps, values, color=colour, alpha=0.3, linewidth=0.8)
    ax.plot(steps, smooth, color=colour, linewidth=1.6, label=label, marker="o" if len(values) == 1 else None)


def _draw_validation(ax, curve: Curve, colour, label: str) -> None:
    """The points on the in-run subset joined by a line, the final evaluation on more rows as a hollow diamond
    (dotted to the last subset point), and a star on the kept step."""
    points = list(zip(curve.validation, curve.rows))
    known = [r for _, r in points if r is not None]
    subset = min(known) if known else None
    on_subset = [p for p, r in points if subset is None or r is None or r == subset]
    wider = [(p, r) for p, r in points if subset is not None and r is not None and r > subset]
    if on_subset:
        steps, values = zip(*on_subset)
        rows = f", {subset} rows" if subset is not None and wider else ""
        ax.plot(steps, values, color=colour, marker="o", markersize=3.5, linewidth=1.4, label=f"{label}{rows}")
    kept = dict(curve.validation).get(curve.best_step)
    if kept is not None:
        ax.plot([curve.best_step], [kept], color=colour, marker="*", markersize=12, linestyle="none", zorder=3)
    for (step, value), rows in wider:
        if on_subset:
            ax.plot([on_subset[-1][0], step], [on_subset[-1][1], value], color=colour, linestyle=":", linewidth=1.2)
        ax.plot([step], [value], color=colour, marker="D", markersize=11, markerfacecolor="none", linestyle="none",
                label=f"{curve.ref}: all {rows} validation rows", zorder=4)  # around the star when it is kept


def _single_note(curves: list[Curve]) -> str:
    """The note on a panel whose adapters were validated once: a single point is no curve."""
    which = curves[0].ref if len(curves) == 1 else f"{len(curves)} adapters"
    step = curves[0].validation[0][0]
    where = f"at step {step}" if len(curves) == 1 else "each"
    return (f"{which}: validated once ({where}), so no curve; `eptctl train` validates 4 times by default, or every "
            "N steps with --eval-every N")


# --- prompt similarity ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SimilarityMatrix:
    """Cosine similarity of materialized prompts; ``None`` where two adapters sit on different backbones (their
    embedding spaces differ, so a cosine would mean nothing). Adapters are ordered by backbone group."""

    refs: list[str]
    backbones: list[str]  # the group label of each adapter: backbone name and embedding fingerprint
    values: list[list[float | None]]

    @property
    def groups(self) -> list[tuple[str, int]]:
        """(backbone label, number of adapters) in order."""
        out: list[tuple[str, int]] = []
        for label in self.backbones:
            if out and out[-1][0] == label:
                out[-1] = (label, out[-1][1] + 1)
            else:
                out.append((label, 1))
        return out


def similarity_matrix(registry, tasks: list[str] | None = None, include_archived: bool = False) -> SimilarityMatrix:
    """Pairwise prompt cosine of the stored adapters, of the given tasks or of all, oldest first per backbone."""
    from eptctl.workflows.inference import load_adapter, prompt_similarity

    def adapters_of(task):
        return registry.list_adapters(task=task, descending=False, include_archived=include_archived)

    records = [r for t in dict.fromkeys(tasks) for r in adapters_of(t)] if tasks else adapters_of(None)
    if len(records) < 2:
        scope = f"task(s) {', '.join(tasks)}" if tasks else "the registry"
        raise EptctlError(f"{scope} holds {len(records)} adapter(s): a similarity heatmap needs two or more",
                          hint="train more adapters, or widen --task")
    first_seen: dict[str, int] = {}
    for i, rec in enumerate(records):
        first_seen.setdefault(rec.backbone.embedding_sha256, i)
    records.sort(key=lambda r: first_seen[r.backbone.embedding_sha256])  # stable: keeps task/version order within
    prompts = [load_adapter(registry, rec.id).adapter for rec in records]
    n = len(records)
    values: list[list[float | None]] = [[None] * n for _ in range(n)]
    for i in range(n):
        for j in range(i, n):
            if records[i].backbone.embedding_sha256 == records[j].backbone.embedding_sha256:
                values[i][j] = values[j][i] = 1.0 if i == j else prompt_similarity(prompts[i], prompts[j])
    labels = [f"{r.backbone.name} ({r.backbone.embedding_sha256[:8]})" for r in records]
    return SimilarityMatrix([r.ref for r in records], labels, values)


def similarity_png(matrix: SimilarityMatrix, title: str = "prompt cosine similarity") -> bytes:
    """The PNG of :func:`similarity_figure`."""
    return _png(similarity_figure(matrix, title))


def similarity_figure(matrix: SimilarityMatrix, title: str = "prompt cosine similarity"):
    """A matplotlib ``Figure``: a heatmap in [-1, 1]; lines separate backbone groups and cells across groups stay
    blank; the title counts the adapters of each backbone."""
    import matplotlib
    import numpy as np
    from matplotlib.figure import Figure

    n = len(matrix.refs)
    grid = np.ma.masked_invalid(np.array([[math.nan if v is None else v for v in row] for row in matrix.values]))
    side = min(24.0, 3.5 + 0.45 * n)
    fig = Figure(figsize=(side + 1.5, side), layout="constrained")
    ax = fig.subplots()
    # Masked cells are transparent over a hatched background: blank, yet unlike a cosine of 0 (white).
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad=(0, 0, 0, 0))
    ax.patch.set(hatch="///", edgecolor="#c8c8c8")
    image = ax.imshow(grid, cmap=cmap, vmin=-1, vmax=1)
    fig.colorbar(image, ax=ax, shrink=0.8, label="cosine")
    ax.set_xticks(range(n), matrix.refs, rotation=60, ha="right", fontsize="small")
    ax.set_yticks(range(n), matrix.refs, fontsize="small")
    if n <= 16:  # numbers in the cells while they stay legible
        for i in range(n):
            for j in range(n):
                value = matrix.values[i][j]
                if value is not None:
                    ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize="x-small",
                            color="white" if abs(value) > 0.6 else "black")
    groups = matrix.groups
    edge = -0.5
    for _, size in groups[:-1]:
        edge += size
        ax.axhline(edge, color="black", linewidth=1.2)
        ax.axvline(edge, color="black", linewidth=1.2)
    note = "; ".join(f"{size} adapter{'s' if size != 1 else ''} on {label}" for label, size in groups)
    if len(groups) > 1:
        note += "\nhatched cells: different backbones, not comparable"
    ax.set_title(f"{title}\n{note}", fontsize="medium")
    return fig


# --- files ----------------------------------------------------------------------------------------------------------
def plot_curves(registry, target: str, out: str | Path | None = None) -> Path:
    """Write the training-curve PNG of an adapter or a task; returns the path written."""
    path = check_writable(out or f"{_slug(target)}-curves.png", PNG)
    curves = training_curves(registry, target)
    title = f"{curves[0].task}: {len(curves)} adapters" if len(curves) > 1 else curves[0].ref
    return write_atomic(path, curves_png(curves, title))


def plot_similarity(registry, tasks: list[str] | None = None, out: str | Path | None = None) -> Path:
    """Write the prompt-similarity heatmap PNG of the stored adapters (of ``tasks``); returns the path written."""
    path = check_writable(out or "similarity.png", PNG)
    return write_atomic(path, similarity_png(similarity_matrix(registry, tasks)))


def _png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)  # attach the raster canvas explicitly: no backend selection happens anywhere
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def _colours(n: int) -> list:
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if n <= 10 else "viridis"]
    return [cmap(i) if n <= 10 else cmap(i / max(1, n - 1)) for i in range(n)]


def _running_mean(values, window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "adapter"
