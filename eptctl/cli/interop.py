"""Moving adapters between registries and tools: export (eptctl bundle or PEFT prompt tuning) and import."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from eptctl.cli.common import JsonFlag, RegistryUrl, err, open_registry, print_json
from eptctl.core.errors import EptctlError

FORMATS = ("eptctl", "peft")


def export(
    ref: Annotated[str, typer.Argument(help="Adapter: id prefix, TASK@VERSION or TASK@ALIAS.")],
    directory: Annotated[Path, typer.Argument(help="Folder to write (must be new or empty unless --force).")],
    fmt: Annotated[str, typer.Option("--format", help="eptctl: a bundle `eptctl import` reads back; peft: a PEFT "
                                     "prompt-tuning adapter (pt adapters).")] = "eptctl",
    force: Annotated[bool, typer.Option("--force", help="Replace a non-empty folder.")] = False,
    lossy: Annotated[bool, typer.Option("--lossy", help="peft: export only the prompt of a dept/ept adapter, "
                                        "dropping its embedding offset.")] = False,
    no_training_state: Annotated[bool, typer.Option("--no-training-state",
                                                    help="eptctl: leave out the optimizer and RNG state.")] = False,
    registry: RegistryUrl = None,
    as_json: JsonFlag = False,
) -> None:
    """Export an adapter to a folder: an eptctl bundle (files, metrics, lineage, card) or a PEFT adapter.

    Example: eptctl export rt-polarity@best ./rt-polarity-bundle
    """
    if fmt not in FORMATS:
        raise EptctlError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}", hint="use --format peft")
    if lossy and fmt != "peft":
        raise EptctlError("--lossy only applies to --format peft", hint="an eptctl bundle always keeps everything")
    reg = open_registry(registry)
    if fmt == "peft":
        from eptctl.interop.peft_export import export_peft

        done = export_peft(reg, ref, directory, force=force, lossy=lossy)
        report = {"ref": done.record.ref, "id": done.record.id, "format": fmt, "directory": str(done.directory),
                  "task_type": done.config["task_type"], "num_virtual_tokens": done.config["num_virtual_tokens"],
                  "dropped": done.dropped}
    else:
        from eptctl.interop.bundle import export_bundle

        done = export_bundle(reg, ref, directory, force=force, training_state=not no_training_state)
        report = {"ref": done.record.ref, "id": done.record.id, "format": fmt, "directory": str(done.directory),
                  "files": done.files}
    if as_json:
        print_json(report)
        return
    typer.echo(f"exported {report['ref']} ({report['id'][:8]}) to {report['directory']} as {fmt}")
    for dropped in report.get("dropped", []):
        err.print(f"note: dropped {dropped} (--lossy)")


def import_bundle(
    directory: Annotated[Path, typer.Argument(help="A bundle folder written by `eptctl export`.")],
    registry: RegistryUrl = None,
    as_json: JsonFlag = False,
) -> None:
    """Import an exported bundle: same adapter id, same file sha256, same metrics; a second import is a no-op.

    Example: eptctl import ./rt-polarity-bundle
    """
    from eptctl.interop.bundle import import_bundle as run_import

    done = run_import(open_registry(registry), directory)
    rec = done.record
    if as_json:
        print_json({"ref": rec.ref, "id": rec.id, "source_ref": done.source_ref,
                    "already_present": done.already_present, "skipped_parents": done.skipped_parents,
                    "skipped_aliases": done.skipped_aliases, "ignored_keys": done.ignored_keys})
        return
    if done.already_present:
        typer.echo(f"already present: {rec.ref} ({rec.id[:8]})")
        return
    typer.echo(f"imported {done.source_ref} as {rec.ref} ({rec.id[:8]})")
    for p in done.skipped_parents:
        err.print(f"note: lineage link to parent {p['ref'] or '?'} ({p['id'][:8]}) skipped: not in this registry")
    for name in done.skipped_aliases:
        err.print(f"note: alias {rec.task}@{name} not set: it already names another adapter here")
    if done.ignored_keys:
        err.print(f"note: ignored card fields written by a newer eptctl: {', '.join(done.ignored_keys)}")
