"""Export bundles: one adapter as a self-describing folder, importable into any registry with its identity intact.

    DIR/eptctl-bundle.json          the card: format, task, config, metrics, lineage, backbone, run, files + sha256
    DIR/servable.safetensors        the registry's file, byte for byte
    DIR/training_state.safetensors  if the adapter has one (and it was not left out)
    DIR/README.md                   the model card (eptctl.interop.card)

Import keeps the adapter id, the file bytes (so their sha256) and every metric value; the version is the task's next
one in the target registry. Everything is verified before anything is written, so a tampered or truncated bundle
imports nothing. The card carries a checksum of its own content, so an edited card is refused too.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path

from eptctl import __version__
from eptctl.interop.card import render_card
from eptctl.core.errors import EptctlError
from eptctl.core.files import check_target, write_folder
from eptctl.data.task_types import DEFAULT_TASK_TYPE

CARD_NAME = "eptctl-bundle.json"
FORMAT = "eptctl-bundle"
FORMAT_VERSION = 1
FILE_NAMES = {"servable": "servable.safetensors", "training_state": "training_state.safetensors",
              "readme": "README.md"}
ARTIFACT_KINDS = ("servable", "training_state")
CARD_KEYS = ("format", "format_version", "eptctl_version", "exported_at", "adapter", "task", "backbone", "metrics",
             "run", "lineage", "files", "card_sha256")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_ADAPTER_ID = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class ExportResult:
    record: object  # registry.AdapterRecord
    directory: Path
    files: dict[str, dict]  # kind -> {"path", "sha256", "size"}


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: its card and the bytes of each file, by kind."""

    directory: Path
    card: dict
    files: dict[str, bytes]


@dataclass(frozen=True)
class ImportResult:
    record: object  # registry.AdapterRecord in the target registry
    source_ref: str  # the adapter's ref in the registry it was exported from
    already_present: bool
    skipped_parents: list[dict] = field(default_factory=list)  # {"id", "ref"}: parents not in the target registry
    skipped_aliases: list[str] = field(default_factory=list)  # taken in the target task by another adapter
    ignored_keys: list[str] = field(default_factory=list)  # card fields a newer eptctl wrote, unknown here


# --- export -----------------------------------------------------------------------------------------------------------
def export_bundle(registry, ref, directory: str | Path, *, force: bool = False, training_state: bool = True
                  ) -> ExportResult:
    """Write the adapter ``ref`` names as a bundle folder (refused if ``directory`` is not empty, unless ``force``)."""
    rec = registry.resolve(ref)
    check_target(directory, force)  # before reading anything: a wrong target fails fast
    data = {"servable": registry.artifact_bytes(rec, "servable")}
    if training_state and rec.artifact("training_state") is not None:
        data["training_state"] = registry.artifact_bytes(rec, "training_state")
    task = registry.get_task(rec.task)
    parents, children = registry.parents(rec), registry.children(rec)
    data["readme"] = render_card(rec, task, parents, children).encode()
    files = {kind: {"path": FILE_NAMES[kind], "sha256": hashlib.sha256(b).hexdigest(), "size": len(b)}
             for kind, b in data.items()}
    card = _card(rec, task, parents, files)
    out = {FILE_NAMES[kind]: b for kind, b in data.items()}
    out[CARD_NAME] = (json.dumps(card, indent=2, ensure_ascii=False) + "\n").encode()
    path = write_folder(directory, out, force=force)
    return ExportResult(rec, path, files)


def _card(rec, task, parents, files: dict) -> dict:
    refs = {p.id: p.ref for p in parents}
    card = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "eptctl_version": __version__,
        "exported_at": datetime.now(timezone.utc).isoformat(),
        "adapter": {
            "id": rec.id, "ref": rec.ref, "task": rec.task, "version": rec.version, "method": rec.method,
            "status": rec.status, "created_at": rec.created_at.isoformat(), "description": rec.description,
            "config": rec.config, "params_by_group": rec.params_by_group, "trainable_params": rec.trainable_params,
            "summary": rec.summary, "tags": list(rec.tags), "aliases": list(rec.aliases),
        },
        "task": {"name": task.name, "description": task.description, "labels": list(task.labels),
                 "metric": task.metric, "source": task.source, "template": task.template,
                 # bundles of the default type (classification) keep the exact card of earlier versions
                 **({"task_type": task.task_type} if task.task_type != DEFAULT_TASK_TYPE else {})},
        "backbone": asdict(rec.backbone),
        "metrics": [asdict(m) for m in rec.metrics],
        "run": None if rec.run is None else asdict(rec.run),
        "lineage": {"parents": [{"id": p.parent_id, "ref": refs.get(p.parent_id), "weight": p.weight, "how": p.how}
                                for p in rec.parents]},
        "files": files,
    }
    card["card_sha256"] = _card_checksum(card)
    return card


def _card_checksum(card: dict) -> str:
    body = {k: v for k, v in card.items() if k != "card_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# --- read and verify --------------------------------------------------------------------------------------------------
def read_bundle(directory: str | Path) -> Bundle:
    """The bundle in ``directory``, after checking the card and every file; one-line errors name the bad file."""
    directory = Path(directory).expanduser()
    card_path = directory / CARD_NAME
    if not directory.is_dir():
        raise EptctlError(f"no bundle at {directory}: not a folder", hint="export one with `eptctl export REF DIR`")
    try:
        text = card_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EptctlError(f"{directory} is not an eptctl bundle: {CARD_NAME} is missing",
                          hint="export one with `eptctl export REF DIR`") from None
    except (OSError, UnicodeDecodeError) as err:
        raise EptctlError(f"cannot read bundle card {card_path}: {err}", hint="re-export the bundle") from None
    try:
        card = json.loads(text)
    except json.JSONDecodeError as err:
        raise EptctlError(f"bundle card {card_path} is not valid JSON ({err.msg}, line {err.lineno})",
                          hint="the bundle is damaged: re-export it") from None
    _check_card(card, card_path)
    files = {kind: _read_file(directory, kind, entry) for kind, entry in card["files"].items()}
    for kind in ARTIFACT_KINDS:
        if kind in files:
            _check_safetensors(directory / card["files"][kind]["path"], files[kind])
    return Bundle(directory, card, files)


def _check_card(card, card_path: Path) -> None:
    def bad(what: str) -> EptctlError:
        return EptctlError(f"bundle card {card_path} is malformed: {what}", hint="the bundle is damaged: re-export it")

    if not isinstance(card, dict) or card.get("format") != FORMAT:
        raise bad(f"'format' is not {FORMAT!r}")
    version = card.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise bad("'format_version' is not a positive integer")
    if version > FORMAT_VERSION:
        raise EptctlError(f"bundle {card_path.parent} has format version {version}; this eptctl reads up to "
                          f"{FORMAT_VERSION}", hint="upgrade eptctl: pip install -U eptctl")
    if card.get("card_sha256") != _card_checksum(card):
        raise EptctlError(f"bundle card {card_path} was changed after export (its checksum does not match)",
                          hint="re-export the bundle; a card cannot be edited by hand")
    for key, kind in (("adapter", dict), ("task", dict), ("backbone", dict), ("metrics", list), ("lineage", dict),
                      ("files", dict)):
        if not isinstance(card.get(key), kind):
            raise bad(f"{key!r} is missing or not a {kind.__name__}")
    files = card["files"]
    if "servable" not in files or set(files) - set(FILE_NAMES):
        raise bad(f"'files' must name a servable file and only {', '.join(FILE_NAMES)}")
    for kind, entry in files.items():
        if not (isinstance(entry, dict) and entry.get("path") == FILE_NAMES[kind]
                and isinstance(entry.get("sha256"), str) and _SHA256.fullmatch(entry["sha256"])
                and isinstance(entry.get("size"), int) and entry["size"] >= 0):
            raise bad(f"entry {kind!r} of 'files' needs path {FILE_NAMES[kind]!r}, a sha256 and a size")


def _read_file(directory: Path, kind: str, entry: dict) -> bytes:
    path = directory / entry["path"]  # a fixed name per kind (checked above): nothing outside the folder is read
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise EptctlError(f"bundle file {path} is missing", hint="the bundle is incomplete: re-export it") from None
    except OSError as err:
        raise EptctlError(f"cannot read bundle file {path}: {err.strerror}", hint="check its permissions") from None
    if len(data) != entry["size"]:
        raise EptctlError(f"bundle file {path} has {len(data):,} bytes, the card says {entry['size']:,} "
                          "(truncated or changed)", hint="the bundle is damaged: re-export it")
    actual = hashlib.sha256(data).hexdigest()
    if actual != entry["sha256"]:
        raise EptctlError(f"bundle file {path} does not match its sha256 in the card ({actual[:12]}…, expected "
                          f"{entry['sha256'][:12]}…)", hint="the bundle was modified: re-export it")
    return data


def _check_safetensors(path: Path, data: bytes) -> None:
    from safetensors.torch import load

    try:
        load(data)
    except Exception as err:  # safetensors raises its own error types for a bad header or size
        raise EptctlError(f"bundle file {path} is not a readable safetensors file ({err})",
                          hint="the bundle is damaged: re-export it") from None


# --- import -----------------------------------------------------------------------------------------------------------
def import_bundle(registry, directory: str | Path) -> ImportResult:
    """Register the bundle's adapter in ``registry`` under its own id. Importing it again is a no-op
    (``already_present``); lineage links go to the parents that exist here, the others are reported.

    The whole card is checked before the first write (the task's creation included): the shape and type of every
    field, then the registry's own rules (id, task name, tags, aliases, metrics, task type). Raises ``EptctlError``
    (one line, a hint) for a damaged, tampered or crafted bundle; the registry and its artifact store are then left
    exactly as they were.
    """
    from registry import RegistryError

    bundle = read_bundle(directory)
    card, card_path = bundle.card, bundle.directory / CARD_NAME
    ignored: list[str] = []
    try:
        new, adapter_id, created_at, alias_names, task = _records(card, ignored)
        _check_importable(new, adapter_id, alias_names, task)
    except (EptctlError, KeyError, TypeError, ValueError, AttributeError) as err:
        what = err.message if isinstance(err, EptctlError) else f"{type(err).__name__}: {err}"
        raise EptctlError(f"bundle card {card_path} is malformed: {what}",
                          hint="the bundle is damaged or was edited: re-export it from its registry") from None
    source_ref = str(card["adapter"].get("ref") or adapter_id)
    existing = _get(registry, adapter_id, RegistryError)
    if existing is not None:
        return _already_present(existing, bundle, source_ref)
    _check_task(registry, task, RegistryError)
    kept, skipped = [], []
    for link, entry in zip(new.parents, card["lineage"]["parents"]):
        if _get(registry, link.parent_id, RegistryError) is not None:
            kept.append(link)
        else:
            skipped.append({"id": link.parent_id, "ref": entry.get("ref")})
    new = replace(new, parents=kept)
    files = {kind: bundle.files[kind] for kind in ARTIFACT_KINDS if kind in bundle.files}
    # one transaction creates the task (when missing) and the adapter: a refusal at any point leaves neither
    rec = registry.import_adapter(new, adapter_id=adapter_id, created_at=created_at, files=files,
                                  alias_names=alias_names, task=task)
    return ImportResult(rec, source_ref, False, skipped, [a for a in alias_names if a not in rec.aliases], ignored)


def _known(cls, values: dict, where: str, ignored: list[str]) -> dict:
    """The fields of dataclass ``cls`` in ``values``; other keys (written by a newer eptctl) are noted in
    ``ignored`` as ``where.key`` and dropped, so an older reader still imports what it understands."""
    names = {f.name for f in fields(cls)}
    ignored.extend(f"{where}.{key}" for key in values if key not in names and f"{where}.{key}" not in ignored)
    return {k: v for k, v in values.items() if k in names}


# The JSON type of each card field a reader uses (None: null allowed). A value of another type is refused rather
# than coerced: str() of a list would make a tag "['a']", int() of 1.5 a step 1.
_NUMBER = (int, float)
_SHAPES = {
    "adapter": {"id": str, "ref": (str, None), "task": str, "version": int, "method": str, "created_at": str,
                "description": (str, None), "config": dict, "params_by_group": dict, "summary": (dict, None),
                "tags": list, "aliases": list},
    "task": {"name": str, "description": (str, None), "labels": list, "metric": str, "source": dict, "template": str,
             "task_type": (str, None)},
    "backbone": {"name": str, "revision": (str, None), "embedding_sha256": str, "tokenizer_sha256": str,
                 "width": int, "max_length": int},
    "run": {"seed": (int, None), "data_fingerprint": (str, None), "package_versions": dict,
            "command_line": (str, None), "duration_s": (*_NUMBER, None), "device": (str, None)},
    "metrics[]": {"split": str, "name": str, "value": _NUMBER, "step": (int, None)},
    "lineage.parents[]": {"id": str, "ref": (str, None), "weight": _NUMBER, "how": str},
}


def _shaped(values, where: str) -> dict:
    """``values`` (a card object) if each field ``_SHAPES[where]`` lists has its JSON type; ``TypeError`` naming
    the field otherwise. Booleans are not numbers here."""
    if not isinstance(values, dict):
        raise TypeError(f"{where} is a {type(values).__name__}, not an object")
    for key, types in _SHAPES[where].items():
        allowed = tuple(type(None) if t is None else t for t in (types if isinstance(types, tuple) else (types,)))
        value = values.get(key)
        if key in values and (not isinstance(value, allowed) or isinstance(value, bool)):
            names = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
            raise TypeError(f"{where}.{key} is {json.dumps(value)[:40]}, not {names}")
    return values


def _strings(values, where: str) -> list[str]:
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise TypeError(f"{where} must be a list of strings")
    return list(values)


def _records(card: dict, ignored: list[str] | None = None):
    """(NewAdapter, id, created_at, aliases, TaskRecord) from a card; KeyError/TypeError/ValueError if malformed
    (a field missing or of the wrong type). Keys this eptctl does not know are skipped and listed in ``ignored``."""
    from registry import BackboneFingerprint, MetricValue, NewAdapter, ParentLink, RunInfo, TaskRecord

    ignored = [] if ignored is None else ignored
    ignored.extend(k for k in card if k not in CARD_KEYS)
    a, t = _shaped(card["adapter"], "adapter"), _shaped(card["task"], "task")
    metrics = [MetricValue(m["split"], m["name"], _finite(m["value"]), m["step"])
               for m in (_shaped(m, "metrics[]") for m in card["metrics"])]
    parents = [ParentLink(p["id"], _finite(p["weight"]), p["how"])
               for p in (_shaped(p, "lineage.parents[]") for p in card["lineage"]["parents"])]
    run = None if card.get("run") is None else RunInfo(**_known(RunInfo, _shaped(card["run"], "run"), "run", ignored))
    if not all(isinstance(n, int) and not isinstance(n, bool) for n in a["params_by_group"].values()):
        raise TypeError("adapter.params_by_group must map group names to integer counts")
    backbone = _known(BackboneFingerprint, _shaped(card["backbone"], "backbone"), "backbone", ignored)
    new = NewAdapter(task=t["name"], method=a["method"], config=a["config"], params_by_group=a["params_by_group"],
                     backbone=BackboneFingerprint(**backbone), servable={}, metrics=metrics, parents=parents,
                     run=run, description=a.get("description") or "", tags=_strings(a.get("tags", []), "adapter.tags"),
                     summary=dict(a.get("summary") or {}))
    if a["task"] != t["name"]:
        raise ValueError(f"adapter task {a['task']!r} is not the task {t['name']!r}")
    if a.get("version", 1) < 1:  # not used here (the target gives the next version), but a sign of a forged card
        raise ValueError(f"adapter.version {a['version']} is not a positive integer")
    task = TaskRecord(name=t["name"], description=t["description"] or "", labels=_strings(t["labels"], "task.labels"),
                      metric=t["metric"], source=t["source"], template=t["template"],
                      task_type=t.get("task_type") or DEFAULT_TASK_TYPE)
    return new, a["id"], _timestamp(a["created_at"]), _strings(a.get("aliases", []), "adapter.aliases"), task


def _check_importable(new, adapter_id: str, alias_names: list[str], task) -> None:
    """The registry's rules for what the card would write, checked before anything is: ``ensure_task`` and
    ``import_adapter`` check the same, but only after the task exists. Raises ``EptctlError`` (the registry's
    ``RegistryError``), ``ValueError`` or ``TypeError``."""
    from registry.checks import check_new
    from registry.refs import check_alias, check_tag, check_task_name

    from eptctl.data.task_types import TASK_TYPES

    if not _ADAPTER_ID.fullmatch(adapter_id):
        raise ValueError(f"adapter id {adapter_id[:40]!r} is not 32 lowercase hex digits")
    for link in new.parents:
        if not _ADAPTER_ID.fullmatch(link.parent_id):
            raise ValueError(f"parent id {link.parent_id[:40]!r} is not 32 lowercase hex digits")
    check_task_name(task.name)
    if task.task_type not in TASK_TYPES:
        raise ValueError(f"task type {task.task_type!r} is not one of {', '.join(TASK_TYPES)}")
    if not task.metric:
        raise ValueError("task.metric is empty")
    for name in alias_names:
        check_alias(name)
    for tag in new.tags:
        check_tag(tag)
    check_new(new, tensors=False)
    json.dumps([task.labels, task.source])


def _timestamp(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"adapter.created_at {text[:40]!r} is not an ISO 8601 time") from None


def _finite(value) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"value {value} is not finite")
    return value


def _get(registry, adapter_id: str, not_found: type):
    try:
        return registry.get(adapter_id)
    except not_found:
        return None


def _already_present(existing, bundle: Bundle, source_ref: str) -> ImportResult:
    """The same id again: fine if the files both sides have are the same bytes (a bundle exported without its
    training state, or with it, is the same adapter), an error if they differ."""
    for kind in ARTIFACT_KINDS:
        art = existing.artifact(kind)
        entry = bundle.card["files"].get(kind)
        if entry is not None and art is not None and art.sha256 != entry["sha256"]:
            raise EptctlError(f"adapter {existing.id} is already in this registry as {existing.ref}, with a "
                              f"different {kind} file than the bundle's", hint=f"see `eptctl show {existing.ref}`")
    return ImportResult(existing, source_ref, True)


def _check_task(registry, task, not_found: type) -> None:
    try:
        have = registry.get_task(task.name)
    except not_found:
        return
    if have.task_type != task.task_type:
        raise EptctlError(f"task {task.name!r} in this registry is a {have.task_type} task; the bundle's adapter was "
                          f"trained for a {task.task_type} task of that name",
                          hint="import into a registry without this task")
    if list(have.labels) != list(task.labels):
        raise EptctlError(f"task {task.name!r} in this registry has labels {', '.join(have.labels)}; the bundle's "
                          f"adapter was trained for {', '.join(task.labels)}",
                          hint="import into a registry without this task, or one whose task has the same labels")
