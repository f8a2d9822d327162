"""Shared CLI plumbing: the registry option, consoles (data on stdout, progress and messages on stderr), JSON."""

from __future__ import annotations

import contextlib
import json
import sys
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from typer.core import TyperGroup
from rich.table import Table

from eptctl.core.progress import fmt_metric, fmt_metrics  # noqa: F401 (the CLI's formatting, shared with the reporter)

def _flags_without_type(params: list) -> list:
    """Flags take no value, so their help shows no type (typer 0.29 prints ``--help -h <bool>``, as if ``-h`` took
    a boolean): an empty metavar fills the help's type column."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


class FlagGroup(TyperGroup):
    """A command group whose help, and its commands' help, show flags without a type."""

    def get_params(self, ctx):
        return _flags_without_type(super().get_params(ctx))

    def get_command(self, ctx, cmd_name: str):
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            _flags_without_type(command.get_params(ctx))  # the help option is made once per command and kept
        return command


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


def console_progress(enabled: bool = True, delay: float = 0.0):
    """The CLI's progress on stderr: a :class:`~eptctl.core.progress.ConsoleProgress` to use as a context manager
    (live bars on a terminal, periodic lines in a log; phases shorter than ``delay`` seconds stay silent), or a
    no-op context when not ``enabled`` (``--json``, ranks other than 0)."""
    from eptctl.core.progress import ConsoleProgress

    return ConsoleProgress(delay=delay) if enabled else contextlib.nullcontext()


# Phases of eval and predict shorter than this stay silent: `eptctl predict REF "text"` prints only its result.
QUICK_PHASE_S = 2.0


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


def fmt_count(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.2f}M" if n >= 1_000_000 else f"{n / 1e3:.1f}k" if n >= 1000 else str(n)


def fmt_time(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M")
