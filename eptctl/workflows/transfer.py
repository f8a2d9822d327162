"""Transfer across tasks: fused initialisation from stored adapters, prompt similarity, zero-step probes.

A new adapter can start from the weighted combination of stored adapters' components (prompt, A, B, fusion,
projection, gate; never a task-specific head). Sources must share the new adapter's backbone (embedding fingerprint)
and shapes; anything else is refused with the list of offending sources and why.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from eptctl.core import events
from eptctl.core.errors import EptctlError
from eptctl.engine import training_state
from eptctl.engine.loop import new_adapter
from eptctl.workflows.inference import ServableAdapter, evaluate_examples, load_adapter, prompt_similarity

HOW_WEIGHTED = "init-weighted"
TASK_SPECIFIC = ("head.",)  # heads map to a task's own labels: never transferred


@dataclass(frozen=True)
class Source:
    """One stored adapter to start from and its (unnormalised) weight."""

    ref: str
    weight: float = 1.0


TRANSFER_MODES = ("weighted", "attention")
# What a fused start takes from its sources; the rest keeps the fresh initialisation of a new adapter.
TRANSFER_COMPONENTS = {
    "prompt": ("decomposition.prompt",),
    "prompt+low-rank": ("decomposition.prompt", "decomposition.lora_a", "decomposition.lora_b"),
    "all": None,  # every component but a task head
}


@dataclass(frozen=True)
class TransferOptions:
    """How a new adapter starts from stored ones (``--init-from``, ``--transfer-mode``, ``--top-k``, ``--probe``).

    ``sources``: the adapters, or ``"auto"`` to pick the ``top_k`` best sources (:func:`probe_sources`: shared
    answer words, then zero-step score on ``probe`` validation examples). ``mode``: ``weighted`` (start from the
    weighted sum of their components) or ``attention`` (learn an attention mixture over their frozen prompts,
    ATTEMPT-style). ``components`` (weighted mode): what is taken from the sources, ``prompt``, ``prompt+low-rank``
    (the prompt and the offset's A and B; the default, measured best in docs/transfer.md) or ``all``; the other
    components start fresh.
    """

    sources: list[Source] | str
    mode: str = "weighted"
    top_k: int = 1
    probe: int = 64
    components: str = "prompt+low-rank"

    def __post_init__(self) -> None:
        if self.mode not in TRANSFER_MODES:
            raise EptctlError(f"--transfer-mode must be weighted or attention, got {self.mode!r}",
                              hint="use --transfer-mode weighted")
        if self.components not in TRANSFER_COMPONENTS:
            raise EptctlError(f"--transfer-components must be one of {', '.join(TRANSFER_COMPONENTS)}, got "
                              f"{self.components!r}", hint="use --transfer-components prompt+low-rank (the default)")


@dataclass
class TransferStart:
    """What a run starts from: init tensors, lineage links, and the method config (attention mode adds the number
    of source prompts). ``attention_sources``: the source records whose learned weights become the lineage."""

    init_tensors: dict[str, torch.Tensor]
    method_cfg: object  # EPTConfig
    parents: list = field(default_factory=list)  # registry ParentLink
    attention_sources: list = field(default_factory=list)  # registry AdapterRecord


_SHAPE_KEYS = ("method", "prompt_length", "short_length", "rank", "max_length", "fusion", "fusion_dim",
               "fusion_heads", "projection", "spaces", "space_rank")


def prepare_transfer(registry, options: TransferOptions, backbone, method_cfg, spec, validation, seed: int,
                     emit: events.EventHandler = events.ignore) -> TransferStart:
    """Resolve ``options`` against ``registry`` into a :class:`TransferStart` for a new adapter of ``spec``.

    ``validation``: the target task's validation examples (``auto`` probes the first ``options.probe``). Raises
    ``EptctlError`` when no compatible source exists or a source has another backbone or shape.
    """
    template = new_adapter(backbone, method_cfg, spec.head_size, seed)
    sources = options.sources
    if sources == "auto":
        wanted = {k: method_cfg.to_dict()[k] for k in _SHAPE_KEYS}
        candidates = best_per_task(registry, [
            rec for rec in registry.list_adapters(backbone=backbone.fingerprint()["embedding_sha256"][:16])
            if rec.task != spec.name and all(rec.config.get(k) == v for k, v in wanted.items())])
        if not candidates:
            raise EptctlError("--init-from auto found no compatible stored adapter on this backbone",
                              hint="train a source task first with the same method and shape options")
        ranked = probe_sources(registry, spec, backbone, validation[: options.probe], candidates, options.top_k)
        if not ranked:  # encoder adapters carry task heads and cannot be probed: newest compatible ones
            ranked = [{"id": rec.id, "ref": rec.ref} for rec in candidates[: options.top_k]]
        emit(events.SourcesChosen(ranked=ranked))
        sources = [Source(r["id"], 1.0) for r in ranked]
    if options.mode == "attention":
        init_tensors, records = attention_init(registry, list(sources), backbone, template)
        emit(events.AttentionInit(sources=[r.ref for r in records]))
        return TransferStart(init_tensors, dataclasses.replace(method_cfg, source_prompts=len(records)),
                             attention_sources=records)
    fused, parents = fused_init(registry, list(sources), backbone, template)
    keep = TRANSFER_COMPONENTS[options.components]
    if keep is not None:
        fused = {k: v for k, v in fused.items() if k.startswith(keep)}
    emit(events.FusedInit(parents=[(registry.resolve(p.parent_id).ref, p.weight) for p in parents]))
    return TransferStart(fused, method_cfg, parents=parents)


def best_per_task(registry, candidates: list) -> list:
    """One candidate per task, in first-seen order: the one ``TASK@best`` names (the best on validation) when it is
    among ``candidates``, else the task's first candidate. A quick 10-step try stored beside a task's real adapter
    would otherwise compete with it as a source (and can win a 64-row probe by chance)."""
    by_task: dict[str, list] = {}
    for rec in candidates:
        by_task.setdefault(rec.task, []).append(rec)
    chosen = []
    for task, records in by_task.items():
        try:
            best_id = registry.resolve(f"{task}@best").id
        except EptctlError:  # no adapter of the task has its metric stored
            best_id = None
        chosen.append(next((rec for rec in records if rec.id == best_id), records[0]))
    return chosen


def parse_sources(text: str) -> list[Source]:
    """``REF[:WEIGHT],REF[:WEIGHT],...`` (weights default to 1 and are normalised later)."""
    sources = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        ref, sep, weight = part.rpartition(":") if ":" in part else (part, "", "")
        if not sep:
            ref, weight = part, "1"
        try:
            value = float(weight)
        except ValueError:
            raise EptctlError(f"--init-from: weight {weight!r} of {ref!r} is not a number",
                              hint="use REF:WEIGHT, e.g. rt-polarity@1:0.7,rt-subjectivity@2:0.3") from None
        sources.append(Source(ref, value))
    if not sources:
        raise EptctlError("--init-from names no adapter", hint="e.g. --init-from rt-polarity@latest")
    return sources


def normalise(weights: list[float]) -> list[float]:
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise EptctlError(f"fusion weights must be non-negative with a positive sum, got {weights}",
                          hint="e.g. --init-from a@1:0.5,b@2:0.5")
    total = sum(weights)
    return [w / total for w in weights]


def best_state(registry, record) -> dict[str, torch.Tensor]:
    """The adapter's trained components (its best checkpoint), from its training-state artifact."""
    loaded = registry.load_training_state(record)
    if loaded is None:
        raise EptctlError(f"adapter {record.ref} has no training state to initialise from",
                          hint="use an adapter trained by eptctl train")
    return training_state.best_components(*loaded, where=f"adapter {record.ref}")


def fuse_states(states: list[dict[str, torch.Tensor]], weights: list[float]) -> dict[str, torch.Tensor]:
    """Weighted sum of component tensors (weights normalised); a single source with weight 1 is reproduced exactly."""
    weights = normalise(weights)
    keys = [k for k in states[0] if not k.startswith(TASK_SPECIFIC)]
    fused = {}
    for key in keys:
        tensors = [s[key] for s in states]
        if any(t.shape != tensors[0].shape for t in tensors):
            raise EptctlError(f"sources disagree on the shape of {key}: {[tuple(t.shape) for t in tensors]}",
                              hint="fuse adapters trained with the same --prompt-length/--short-length/--rank")
        if len(tensors) == 1:
            fused[key] = tensors[0].clone()
        else:
            fused[key] = sum(w * t.float() for w, t in zip(weights, tensors))
    return fused


def check_sources(records, target_fingerprint: dict, target_shapes: dict[str, tuple]) -> None:
    """Refuse sources from another backbone or of another shape, naming each and why."""
    problems = []
    for rec, state in records:
        if rec.backbone.embedding_sha256 != target_fingerprint["embedding_sha256"]:
            problems.append(f"{rec.ref}: trained on backbone '{rec.backbone.name}', not '{target_fingerprint['name']}'")
            continue
        for key, shape in target_shapes.items():
            if key.startswith(TASK_SPECIFIC):
                continue
            if key not in state:
                problems.append(f"{rec.ref}: has no {key} (method {rec.method})")
                break
            if tuple(state[key].shape) != tuple(shape):
                problems.append(f"{rec.ref}: {key} has shape {tuple(state[key].shape)}, the new adapter needs {tuple(shape)}")
                break
    if problems:
        raise EptctlError("incompatible --init-from sources: " + "; ".join(problems),
                          hint="use sources of the same backbone, method and shape (eptctl show REF lists them)")


def fused_init(registry, sources: list[Source], backbone, adapter_template) -> tuple[dict[str, torch.Tensor], list]:
    """Init tensors for a new adapter shaped like ``adapter_template`` and the lineage links to its parents."""
    from registry import ParentLink

    records = [registry.resolve(s.ref) for s in sources]
    states = [best_state(registry, rec) for rec in records]
    shapes = {k: tuple(v.shape) for k, v in adapter_template.state_dict().items()}
    check_sources(list(zip(records, states)), backbone.fingerprint(), shapes)
    weights = normalise([s.weight for s in sources])
    fused = fuse_states(states, weights)
    parents = [ParentLink(parent_id=rec.id, weight=w, how=HOW_WEIGHTED) for rec, w in zip(records, weights)]
    return fused, parents


# --- similarity and probes ------------------------------------------------------------------------------------------
def rank_by_similarity(registry, ref: str, top_k: int | None = None) -> list[dict]:
    """Stored adapters on the same backbone ranked by cosine similarity of materialized prompts (SPoT-style)."""
    target = load_adapter(registry, ref)
    rows = []
    for rec in registry.list_adapters(backbone=target.record.backbone.embedding_sha256[:16]):
        if rec.id == target.record.id:
            continue
        other = load_adapter(registry, rec.id)
        rows.append({"ref": rec.ref, "id": rec.id, "task": rec.task, "method": rec.method,
                     "cosine": prompt_similarity(target.adapter, other.adapter)})
    rows.sort(key=lambda r: r["cosine"], reverse=True)
    return rows[:top_k] if top_k else rows


def shared_answers(source_spec, target_spec) -> float:
    """Fraction of the target's answer words (verbalizer, case-insensitive) that the source task answers with too;
    0 for tasks without a verbalizer (generation, regression)."""
    target = {a.strip().lower() for a in target_spec.verbalizer}
    if not target:
        return 0.0
    return len(target & {a.strip().lower() for a in source_spec.verbalizer}) / len(target)


def probe_sources(registry, spec, backbone, examples, candidates=None, top_k: int | None = None) -> list[dict]:
    """Stored adapters of this backbone ranked as sources for ``spec``, best first.

    Each row has ``shared_answers`` (:func:`shared_answers`: a prompt trained to produce the target's answer words
    carries what a few target examples cannot teach) and the zero-step score of the adapter's prompt on ``examples``
    of the target task (its template and answers) in the task's primary metric (``probe_score``, named in
    ``probe_metric``; ``probe_accuracy`` too for classification). Ranked by shared answers, then by probe score:
    zero-step scores mostly measure how a prompt biases the answer prior (docs/transfer.md#choosing-sources).
    Encoder adapters are skipped: their heads belong to their own labels."""
    fp = backbone.fingerprint()
    records = candidates if candidates is not None else registry.list_adapters(backbone=fp["embedding_sha256"][:16])
    rows = []
    for rec in records:
        servable = load_adapter(registry, rec.id)
        if servable.adapter.has_head:
            continue
        as_target = ServableAdapter(rec, servable.adapter, spec, servable.config)
        metrics = evaluate_examples(backbone, as_target, examples)
        score = metrics.get(spec.metric, 0.0)
        rows.append({"ref": rec.ref, "id": rec.id, "task": rec.task, "method": rec.method,
                     "shared_answers": round(shared_answers(servable.spec, spec), 4),
                     "probe_metric": spec.metric, "probe_score": score,
                     **({"probe_accuracy": score} if spec.metric == "accuracy" else {})})
    rows.sort(key=lambda r: (r["shared_answers"], r["probe_score"]), reverse=True)
    return rows[:top_k] if top_k else rows


HOW_ATTENTION = "attention"


def attention_init(registry, sources: list[Source], backbone, adapter_template) -> tuple[dict[str, torch.Tensor], list]:
    """The frozen source prompts (materialized, [t, s, d]) for an attention mixture, and the source records."""
    servables = [load_adapter(registry, s.ref) for s in sources]
    shape = tuple(adapter_template.decomposition.prompt.shape)
    check_sources([(sv.record, {"prompt": sv.adapter.prompt}) for sv in servables], backbone.fingerprint(),
                  {"prompt": shape})
    prompts = torch.stack([sv.adapter.prompt.float() for sv in servables])
    return {"mixture.sources": prompts}, [sv.record for sv in servables]
