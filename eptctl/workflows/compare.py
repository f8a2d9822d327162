"""Side-by-side comparison of stored adapters (library part of `eptctl compare`)."""

from __future__ import annotations

import itertools

from eptctl.workflows.inference import load_adapter, prompt_similarity


def training_settings(record) -> dict:
    """How an adapter was trained, from its stored summary: the training config (steps, batch size, learning
    rates, objective, seed...), plus ``train_examples`` (few-shot K) and ``transfer_components`` when they were
    given. Empty for an adapter stored without a summary."""
    summary = getattr(record, "summary", None) or {}
    settings = dict(summary.get("train_config") or {})
    for key in ("train_examples", "transfer_components"):
        if key in summary:
            settings[key] = summary[key]
    return settings


def example_counts(record) -> dict[str, int] | None:
    """The rows of each split the adapter was trained and evaluated on (``train``, ``validation``, ``test``), from
    its stored summary; None for an adapter stored without them."""
    sizes = (getattr(record, "summary", None) or {}).get("data_sizes")
    return dict(sizes) if isinstance(sizes, dict) else None


def comparability(records) -> tuple[bool, list[str]]:
    """Whether the adapters' metrics may be subtracted (they belong to one task), and one caveat line per reason
    their metrics differ in what they measure: different tasks (then no deltas at all), the task's data changed
    between the runs, or a split of different sizes."""
    tasks = list(dict.fromkeys(r.task for r in records))
    if len(tasks) > 1:
        return False, [f"different tasks ({', '.join(tasks)}): their metrics are on different data, so no deltas "
                       "are shown; compare adapters of one task"]
    caveats = []
    sources = {(r.summary or {}).get("data_source_fingerprint") for r in records} - {None}
    if len(sources) > 1:
        caveats.append(f"the data of task {tasks[0]} changed between these runs: deltas compare different rows")
    counts = [example_counts(r) for r in records]
    for split in ("validation", "test"):
        sizes = [c.get(split) for c in counts if c]
        if len(set(sizes)) > 1:
            caveats.append(f"{split} metrics are on {' vs '.join(map(str, sizes))} rows: deltas mix different rows")
    return True, caveats


def compare_adapters(registry, refs: list[str], all_config: bool = False) -> dict:
    """Metrics with deltas to the first adapter (None across tasks), the config keys that differ (all with
    ``all_config``; the backbone first when it differs; how each was trained as ``train.KEY``), the prompt cosine
    of each pair (None, noted, across backbones), each adapter's task and example counts, and ``caveats``: one
    line per reason the metrics are not like for like (:func:`comparability`)."""
    servables = [load_adapter(registry, ref) for ref in refs]
    records = [s.record for s in servables]
    comparable, caveats = comparability(records)
    keys = sorted({(m.split, m.name) for r in records for m in r.metrics if m.step is None})
    metrics = []
    for split, name in keys:
        values = [r.metric(name, split) for r in records]
        base = values[0]
        deltas = [None if v is None or base is None or not comparable else v - base for v in values]
        metrics.append({"split": split, "name": name, "values": values, "deltas": deltas})
    config_keys = sorted({k for r in records for k in r.config if k != "schema_version"})
    config = {}
    backbones = [f"{r.backbone.name} ({r.backbone.embedding_sha256[:8]})" for r in records]
    if all_config or len(set(backbones)) > 1:  # an adapter is tied to its backbone: the first difference to show
        config["backbone"] = backbones
    for key in config_keys:
        values = [r.config.get(key) for r in records]
        if all_config or any(v != values[0] for v in values):
            config[key] = values
    # How each was trained (steps, learning rates, few-shot K, what a transfer took): "train." keys.
    training = [training_settings(r) for r in records]
    for key in sorted({k for t in training for k in t}):
        values = [t.get(key) for t in training]
        if all_config or any(v != values[0] for v in values):
            config[f"train.{key}"] = values
    similarity = []
    for i, j in itertools.combinations(range(len(servables)), 2):
        same = records[i].backbone.embedding_sha256 == records[j].backbone.embedding_sha256
        # Prompts live in their backbone's embedding space: across backbones a cosine means nothing.
        cosine = prompt_similarity(servables[i].adapter, servables[j].adapter) if same else None
        similarity.append({"pair": [i, j], "cosine": cosine, **({} if same else {"note": "different backbones"})})
    return {
        "adapters": [{"ref": r.ref, "id": r.id, "task": r.task, "method": r.method, "examples": example_counts(r),
                      "trainable_params": r.trainable_params, "params_by_group": r.params_by_group,
                      "duration_s": r.run.duration_s if r.run else None} for r in records],
        "comparable": comparable,
        "caveats": caveats,
        "metrics": metrics,
        "config": config,
        "prompt_similarity": similarity,
    }
