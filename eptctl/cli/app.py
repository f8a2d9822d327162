"""Root Typer app. Command modules register themselves on ``app``; user errors become one line and exit code 2."""

from __future__ import annotations

import os
import sys

import click
import typer

from eptctl import __version__
from eptctl.cli.common import FlagGroup
from eptctl.cli.db import db_app
from eptctl.core.errors import EptctlError

EXIT_USER_ERROR = 2
# typer vendors its own click, whose UsageError (bad option, bad value, missing argument) is a base of BadParameter
USAGE_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


def echo_error(err: EptctlError) -> None:
    if os.environ.get("RANK", "0") != "0":  # under torchrun every rank hits the same error: rank 0 reports it
        return
    line = f"error: {err.message}"
    if err.hint:
        line += f"  (hint: {err.hint})"
    click.echo(line, err=True)


class _Root(FlagGroup):
    """Turns every EptctlError raised anywhere below the root into a one-line message, no traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except EptctlError as err:
            echo_error(err)
            raise SystemExit(EXIT_USER_ERROR) from None
        except USAGE_ERROR as err:  # a bad option or value: one line like every other user error, not a usage box
            command = " ".join(ctx.command_path.split()[1:] + ([ctx.invoked_subcommand] if ctx.invoked_subcommand
                                                                 else []))
            echo_error(EptctlError(err.format_message().rstrip("."), hint=f"see `eptctl {command} -h`"))
            raise SystemExit(EXIT_USER_ERROR) from None


app = typer.Typer(
    name="eptctl",
    cls=_Root,
    help="Train, store and compare EPT soft-prompt adapters on frozen language models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _root() -> None:
    """Train, store and compare EPT soft-prompt adapters on frozen language models."""


@app.command()
def version() -> None:
    """Print the eptctl version.

    Example: eptctl version
    """
    typer.echo(__version__)


def _register_commands() -> None:
    from eptctl.cli import adapters, catalog, serve, server, train, transfer
    from eptctl.cli import interop
    from eptctl.cli import report

    app.command("train")(train.train)
    app.command("eval")(serve.eval_adapter)
    app.command("predict")(serve.predict)
    app.command("serve")(server.serve)
    app.command("list")(adapters.list_adapters)
    app.command("show")(adapters.show)
    app.command("compare")(adapters.compare)
    app.command("alias")(adapters.alias)
    app.command("tag")(adapters.tag)
    app.command("archive")(adapters.archive)
    app.command("rm")(adapters.rm)
    app.command("gc")(adapters.gc)
    app.command("lineage")(transfer.lineage)
    app.command("similar")(transfer.similar)
    app.command("continual")(transfer.continual)
    app.command("export")(interop.export)
    app.command("import")(interop.import_bundle)
    app.command("plot")(report.plot)
    app.command("report")(report.report)
    app.command("tasks")(catalog.tasks)
    app.command("fetch")(catalog.fetch)
    app.command("models")(catalog.models_cmd)
    app.add_typer(db_app, name="db")
    from eptctl.cli.engine import engine_app

    app.add_typer(engine_app, name="engine")


_register_commands()


def run() -> None:
    try:
        app()
    except EptctlError as err:  # raised while building the app (e.g. during import of an optional command)
        echo_error(err)
        sys.exit(EXIT_USER_ERROR)
