"""The Typer application. This package is the only place that imports typer and rich."""

from __future__ import annotations


def main() -> None:
    from eptctl.cli.app import run

    run()
