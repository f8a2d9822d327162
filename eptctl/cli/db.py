"""``eptctl db``: create and upgrade the registry schema. Thin: each command is one call into ``registry``."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from eptctl.cli.common import FlagGroup, RegistryUrl, open_registry

db_app = typer.Typer(help="The registry database: schema revision, upgrades and secret scrubbing.",
                     no_args_is_help=True, cls=FlagGroup)


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


@db_app.command("scrub-secrets")
def scrub_secrets(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list the adapters; change nothing.")] = False,
    registry: RegistryUrl = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON object instead of lines.")] = False,
) -> None:
    """Mask passwords and tokens in the command lines stored with earlier runs (eptctl masks new ones itself).

    Example: eptctl db scrub-secrets --dry-run
    """
    reg = open_registry(registry)
    try:
        found = reg.scrub_secrets(dry_run=dry_run)
    finally:
        reg.close()
    if as_json:
        typer.echo(json.dumps({"dry_run": dry_run, "adapters": [{"ref": r.ref, "id": r.id} for r in found]}))
        return
    for rec in found:
        typer.echo(f"{rec.ref} ({rec.id[:12]})")
    verb = "would mask" if dry_run else "masked"
    typer.echo(f"{verb} the secrets in {len(found)} stored command line(s)"
               + (" (run it without --dry-run to rewrite them)" if dry_run and found else ""))
