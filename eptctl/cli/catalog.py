"""What there is to train on: builtin and stored tasks, embedded and test backbones."""

from __future__ import annotations

from typing import Annotated

import typer

from eptctl.cli.common import DataDirOption, JsonFlag, RegistryUrl, err, make_table, open_registry, out, print_json


def tasks(registry: RegistryUrl = None, data_dir: DataDirOption = None, as_json: JsonFlag = False) -> None:
    """List builtin tasks (packaged data), the GLUE/SuperGLUE benchmark tasks with whether their data is in the data
    directory, and the tasks stored in the registry.

    Example: eptctl tasks --json

    Example: eptctl tasks --data-dir ~/glue-data
    """
    from eptctl import data
    from eptctl.data import glue
    from eptctl.workflows.tasks import stored_specs

    def row(spec, kind: str, available: bool = True) -> dict:
        return {"name": spec.name, "kind": kind, "task_type": spec.task_type, "metric": spec.metric,
                "labels": list(spec.labels), "verbalizer": list(spec.verbalizer), "template": spec.template,
                "description": spec.description, "data": "here" if available else "missing"}

    rows = [row(s, "builtin") for name, s in data.BUILTIN_TASKS.items() if name not in glue.CATALOGUE]
    rows += [row(t.spec, "benchmark", glue.available(t)) for t in glue.CATALOGUE.values()]
    rows += [row(spec, "stored") for name, spec in stored_specs(open_registry(registry)).items()
             if name not in data.BUILTIN_TASKS]
    if as_json:
        print_json(rows)
        return
    table = make_table("task", "kind", "type", "metric", "labels", "data", "description")
    for r in rows:
        shown = "[green]here[/]" if r["data"] == "here" else "[yellow]missing[/]"
        table.add_row(r["name"], r["kind"], r["task_type"], r["metric"], ", ".join(r["labels"]) or "-", shown,
                      r["description"])
    out.print(table)
    if any(r["data"] == "missing" for r in rows):
        err.print(f"benchmark data is read from {glue.data_dir()}; fetch a task's files with "
                  "`eptctl fetch TASK` where the network allows (see docs/tasks.md)")


def fetch(
    names: Annotated[list[str], typer.Argument(metavar="TASK", help="Benchmark tasks: names, glue, superglue or all.")],
    data_dir: DataDirOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Download GLUE/SuperGLUE tasks from the Hugging Face Hub into the data directory (needs network).

    Example: eptctl fetch glue-rte superglue-cb --data-dir ~/glue-data

    Example: eptctl fetch all
    """
    from eptctl.data import glue

    written = {}
    for name in glue.select(",".join(names)):
        files = glue.fetch(glue.CATALOGUE[name])
        written[name] = [str(f) for f in files]
        if not as_json:
            err.print(f"{name}: {len(files)} file(s) in {files[0].parent}")
    if as_json:
        print_json(written)


def models_cmd(as_json: JsonFlag = False) -> None:
    """List embedded backbones (and whether they are installed and converted) and the random test backbones.

    Converted models live in one cache for every eptctl home on the machine: $EPTCTL_MODELS, default
    ~/.cache/eptctl/models.

    Example: eptctl models
    """
    from eptctl import backbones
    from eptctl.core.home import models_dir

    rows = backbones.known_models()
    if as_json:
        print_json(rows)
        return
    table = make_table("model", "family", "source", "installed", "cached", "description")
    for r in rows:
        name = r["name"] + (" (default)" if r["default"] else "")
        table.add_row(name, r["family"], r["source"], "yes" if r["installed"] else "no",
                      "yes" if r["cached"] else "no", r["description"])
    out.print(table)
    err.print(f"model cache: {models_dir(create=False)} (shared by every eptctl home; $EPTCTL_MODELS moves it)")
