"""``GET /v1/models``: the references a client can send as ``model``, each also as ``REF:raw``.

Listed: every adapter loaded in the server, each task's ``TASK@latest`` and every user alias (``TASK@prod``) whose
adapter was trained on the served backbone (a ``TASK@latest`` on another backbone would be refused with 409, so it
is left out). ``root`` and ``parent`` are the backbone's name, as vLLM lists a LoRA adapter over its base model.
"""

from __future__ import annotations

from registry import AdapterQuery

from eptctl.serving.openai_inputs import RAW


def model_list(registry, cache, backbone_name: str) -> dict:
    """The ``/v1/models`` answer (reads the registry: call it off the event loop)."""
    embedding = cache.backbone.fingerprint()["embedding_sha256"]
    tasks = {t.name: t for t in registry.list_tasks()}
    entries: dict[str, object] = {}  # ref -> the adapter record it names
    for servable in cache.servable():
        entries[servable.record.ref] = servable.record
    latest: dict[str, object] = {}
    for record in registry.list_adapters(AdapterQuery(sort="created")):
        if record.version > getattr(latest.get(record.task), "version", 0):
            latest[record.task] = record
        if record.backbone.embedding_sha256 == embedding:
            for alias in record.aliases:
                entries[f"{record.task}@{alias}"] = record
    for task, record in latest.items():
        if record.backbone.embedding_sha256 == embedding:
            entries[f"{task}@latest"] = record
    data = []
    for ref, record in sorted(entries.items()):
        for model in (ref, ref + RAW):
            data.append(_entry(model, record, tasks.get(record.task), backbone_name, raw=model.endswith(RAW)))
    return {"object": "list", "data": data}


def _entry(model: str, record, task, backbone_name: str, raw: bool) -> dict:
    return {"id": model, "object": "model", "created": int(record.created_at.timestamp()), "owned_by": "eptctl",
            "root": backbone_name, "parent": backbone_name,
            "eptctl": {"adapter": record.ref, "adapter_id": record.id, "task": record.task,
                       "task_type": getattr(task, "task_type", None), "labels": list(getattr(task, "labels", [])),
                       "raw": raw, "aliases": list(record.aliases),
                       "metrics": {f"{m.split}:{m.name}": m.value for m in record.metrics if m.step is None}}}
