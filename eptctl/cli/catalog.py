"""What there is to train on: builtin and stored tasks, embedded and test backbones."""

from __future__ import annotations

from eptctl.cli.common import JsonFlag, RegistryUrl, make_table, open_registry, out, print_json


def tasks(registry: RegistryUrl = None, as_json: JsonFlag = False) -> None:
    """List builtin tasks (packaged data) and the tasks stored in the registry.

    Example: eptctl tasks --json
    """
    from eptctl import data
    from eptctl.workflows.tasks import stored_specs

    rows = [{"name": s.name, "kind": "builtin", "labels": list(s.labels), "verbalizer": list(s.verbalizer),
             "template": s.template, "description": s.description} for s in data.BUILTIN_TASKS.values()]
    for name, spec in stored_specs(open_registry(registry)).items():
        if name not in data.BUILTIN_TASKS:
            rows.append({"name": name, "kind": "stored", "labels": list(spec.labels),
                         "verbalizer": list(spec.verbalizer), "template": spec.template,
                         "description": spec.description})
    if as_json:
        print_json(rows)
        return
    table = make_table("task", "kind", "labels", "description")
    for r in rows:
        table.add_row(r["name"], r["kind"], ", ".join(r["labels"]), r["description"])
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
