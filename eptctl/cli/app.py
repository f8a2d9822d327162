"""Root Typer app; command groups register themselves here."""

from __future__ import annotations

import typer

from eptctl import __version__

app = typer.Typer(
    name="eptctl",
    help="Train, store and compare EPT soft-prompt adapters on frozen language models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command()
def version() -> None:
    """Print the eptctl version.

    Example: eptctl version
    """
    typer.echo(__version__)


def run() -> None:
    app()
