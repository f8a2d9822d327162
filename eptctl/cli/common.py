"""Shared CLI plumbing: the registry option, consoles (data on stdout, progress and messages on stderr), JSON."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

RegistryUrl = Annotated[
    str | None,
    typer.Option(
        "--registry",
        envvar="EPTCTL_REGISTRY_URL",
        show_envvar=True,
        help="Database URL, e.g. postgresql+psycopg://user@host/db (default: sqlite:///$EPTCTL_HOME/registry.db)",
    ),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _use_data_dir(value):
    if value is not None:
        from eptctl.data.glue import set_data_dir

        set_data_dir(value)
    return value


# Where the GLUE/SuperGLUE tasks read their files; set for the whole process as the option is parsed.
DataDirOption = Annotated[str | None, typer.Option(
    "--data-dir", callback=_use_data_dir, show_default=False,
    help="Folder with the GLUE/SuperGLUE files (DIR/glue/rte/train.parquet...; default: $EPTCTL_DATA_DIR, else "
         "$EPTCTL_HOME/data).")]
# The columns of a user's data file, shared by train, eval and predict.
TextColumnOption = Annotated[str, typer.Option(help="Column with the input text.")]
TextPairColumnOption = Annotated[str | None, typer.Option(help="Column with a second text (pair tasks).")]
LabelColumnOption = Annotated[str | None, typer.Option(
    "--label-column", "--target-column", show_default=False,
    help="Column with the label (classification; default: label) or the target text or number (generation, "
         "regression; default: target).")]


# Piped output is not cut to 80 columns: tables stay whole for grep and for files.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)  # data
err = Console(stderr=True, width=None if sys.stderr.isatty() else 200)  # progress, notes


def make_table(*columns: str, right: tuple[str, ...] = (), title: str | None = None) -> Table:
    """The house table: no outer edge, bold header; columns named in ``right`` are right-aligned (numbers)."""
    table = Table(title=title, show_edge=False, header_style="bold")
    for col in columns:
        table.add_column(col, justify="right" if col in right else "left")
    return table


def open_registry(url: str | None):
    from registry import Registry

    return Registry(url)


def to_jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        return {k: to_jsonable(getattr(value, k)) for k in value.__dataclass_fields__}
    return value


def print_json(value: Any) -> None:
    typer.echo(json.dumps(to_jsonable(value), indent=None, sort_keys=False))


def fmt_metric(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def fmt_metrics(values: dict[str, float], primary: str | None = None, limit: int = 4) -> str:
    """``name value`` pairs, the primary metric first: ``rouge_l 0.3120, exact_match 0.0400``."""
    names = sorted(values, key=lambda name: name != primary)[:limit]
    counts = ("unparseable",)  # a count of rows, not a score
    return ", ".join(f"{name} {int(values[name]) if name in counts else fmt_metric(values[name])}"
                     for name in names) or "-"


def fmt_count(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.2f}M" if n >= 1_000_000 else f"{n / 1e3:.1f}k" if n >= 1000 else str(n)


def fmt_time(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M")
