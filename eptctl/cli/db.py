"""``eptctl db``: create and upgrade the registry schema. Thin: each command is one call into ``registry``."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from eptctl.cli.common import RegistryUrl

db_app = typer.Typer(help="The registry database: schema revision and upgrades.", no_args_is_help=True)


@db_app.command()
def upgrade(registry: RegistryUrl = None) -> None:
    """Create the registry schema, or migrate it to the version this eptctl needs.

    Example: eptctl db upgrade --registry postgresql+psycopg://me@dbhost/eptctl
    """
    import registry as reg

    url = reg.resolve_url(registry)
    before, after = reg.upgrade(url)
    state = "already at" if before == after else f"{before or 'empty'} ->"
    typer.echo(f"{reg.mask_url(url)}: {state} {after}")


@db_app.command()
def current(
    registry: RegistryUrl = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON object instead of a line.")] = False,
) -> None:
    """Print the schema revision of the registry database, and whether it is up to date.

    Example: eptctl db current
    """
    import registry as reg

    from registry.migrate import check_known

    url = reg.resolve_url(registry)
    revision, head = reg.current_revision(url), reg.head_revision()
    check_known(revision, reg.mask_url(url))
    if as_json:
        typer.echo(json.dumps({"url": reg.mask_url(url), "revision": revision, "head": head}))
        return
    if revision == head:
        state = "(head)"
    elif revision is None:
        state = f"(empty; `eptctl db upgrade` creates it at {head})"
    else:
        state = f"(out of date; head is {head}: run `eptctl db upgrade`)"
    typer.echo(f"{reg.mask_url(url)}: {revision or 'no schema'} {state}")
