"""What there is to train on: builtin and stored tasks, embedded and test backbones."""

from __future__ import annotations

from eptctl.cli.common import JsonFlag, RegistryUrl, make_table, open_registry, out, print_json


def tasks(registry: RegistryUrl = None, as_json: JsonFlag = False) -> None:
    """List builtin tasks (packaged data) and the tasks stored in the registry.

    Example: eptctl tasks --json
    """
    from eptctl import data
    from eptctl.workflows.tasks import stored_specs

    def row(spec, kind: str) -> dict:
        return {"name": spec.name, "kind": kind, "task_type": spec.task_type, "metric": spec.metric,
                "labels": list(spec.labels), "verbalizer": list(spec.verbalizer), "template": spec.template,
                "description": spec.description}

    rows = [row(s, "builtin") for s in data.BUILTIN_TASKS.values()]
    rows += [row(spec, "stored") for name, spec in stored_specs(open_registry(registry)).items()
             if name not in data.BUILTIN_TASKS]
    if as_json:
        print_json(rows)
        return
    table = make_table("task", "kind", "type", "metric", "labels", "description")
    for r in rows:
        table.add_row(r["name"], r["kind"], r["task_type"], r["metric"], ", ".join(r["labels"]) or "-",
                      r["description"])
    out.print(table)


def models_cmd(as_json: JsonFlag = False) -> None:
    """List embedded backbones (and whether they are installed and converted) and the random test backbones.

    Example: eptctl models
    """
    from eptctl import backbones

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
