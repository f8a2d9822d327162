"""The Registry API on a real SQLite file and the real PostgreSQL server: every test runs on both."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch
from registry_fixtures import TASK, backbone, db_url, new_adapter, pg_url, reg, sqlite_url  # noqa: F401

from registry import (
    AdapterRecord,
    MetricValue,
    ParentLink,
    Registry,
    RegistryError,
    RunInfo,
    TaskRecord,
    mask_url,
)


def val(value, split="validation", name="accuracy", step=None):
    return MetricValue(split, name, value, step)


def test_register_round_trip(reg):
    run = RunInfo(7, "sha256:data", {"torch": torch.__version__}, "eptctl train rt-polarity", 12.5, "cpu")
    state = {"optimizer.exp_avg.prompt": torch.zeros(4, 16), "rng.cpu": torch.arange(5, dtype=torch.uint8)}
    new = new_adapter(
        metadata={"note": "hello"},
        training_state=state,
        training_metadata={"optimizer": '{"lr": 0.3}'},
        metrics=[val(0.81), val(0.79, "test"), val(0.5, step=10)],
        run=run,
        description="first try",
        tags=["baseline", "cpu"],
        summary={"space_weights": [0.25, 0.75], "history": [{"step": 10, "loss": 0.7}]},
    )
    rec = reg.register(new)
    assert len(rec.id) == 32 and rec.ref == f"{TASK}@1" and rec.version == 1 and rec.status == "ready"
    assert rec.created_at.tzinfo is not None
    assert rec.config == new.config and rec.method == "ept" and rec.description == "first try"
    assert rec.params_by_group == new.params_by_group and rec.trainable_params == 128
    assert rec.backbone == backbone() and rec.run == run and rec.summary == new.summary
    assert rec.tags == ["baseline", "cpu"] and rec.aliases == [] and rec.parents == []
    assert sorted(m.value for m in rec.metrics) == [0.5, 0.79, 0.81]
    assert rec.metric("accuracy") == 0.81 and rec.metric("accuracy", "test") == 0.79  # final value beats step 10
    assert {a.kind for a in rec.artifacts} == {"servable", "training_state"}
    for art in rec.artifacts:
        path = Path(art.path)
        assert path.name == f"{art.sha256}.safetensors" and path.parent.name == art.sha256[:2]
        assert path.stat().st_size == art.size
        assert path.is_relative_to(Path(os.environ["EPTCTL_HOME"]) / "artifacts")

    tensors, meta = reg.load_servable(rec.ref)
    assert torch.equal(tensors["prompt"], new.servable["prompt"]) and set(tensors) == {"prompt", "a"}
    assert meta["note"] == "hello" and meta["eptctl.kind"] == "servable" and meta["eptctl.task"] == TASK
    assert '"prompt_length": 4' in meta["eptctl.config"] and '"width": 16' in meta["eptctl.backbone"]
    state_back, state_meta = reg.load_training_state(rec)
    assert torch.equal(state_back["rng.cpu"], state["rng.cpu"]) and state_meta["optimizer"] == '{"lr": 0.3}'

    plain = reg.register(new_adapter(seed=1))
    assert plain.version == 2 and plain.run is None and reg.load_training_state(plain) is None
    assert reg.get(rec.id) == rec


def test_records_behave_as_frozen_dataclasses(reg):
    """Records decode their JSON fields lazily; nothing outside can tell (see registry/stored.py)."""
    import copy
    import dataclasses
    import json
    import pickle

    run = RunInfo(1, "fp", {"torch": "2.13"}, "eptctl train", 1.5, "cpu")
    new = new_adapter(seed=1, run=run, summary={"history": [{"step": 1, "loss": 0.5}]})
    rec = reg.register(new)
    listed = reg.list_adapters()[0]
    assert isinstance(listed, AdapterRecord) and listed == rec and listed.run == run
    assert json.loads(json.dumps(listed.summary)) == new.summary and listed.config == new.config
    plain = AdapterRecord(**{f.name: getattr(rec, f.name) for f in dataclasses.fields(AdapterRecord)})
    assert plain == listed and listed == plain
    as_dict = dataclasses.asdict(reg.get(rec.id))  # nothing read yet on this one
    assert as_dict["config"] == new.config and as_dict["run"]["package_versions"] == {"torch": "2.13"}
    changed = dataclasses.replace(reg.get(rec.id), status="archived", config={"x": 1})
    assert changed.status == "archived" and changed.config == {"x": 1} and changed.summary == new.summary
    with pytest.raises(dataclasses.FrozenInstanceError):
        listed.config = {}
    for clone in (pickle.loads(pickle.dumps(reg.get(rec.id))), copy.deepcopy(reg.get(rec.id))):
        assert clone == rec and clone.config == new.config and clone.run == run
    assert "config={'prompt_length': 4" in repr(reg.get(rec.id))


def test_resolve_every_form(reg, monkeypatch):
    a = reg.register(new_adapter(seed=1, metrics=[val(0.7)]))
    b = reg.register(new_adapter(seed=2, metrics=[val(0.9)]))
    c = reg.register(new_adapter(seed=3, metrics=[val(0.8)]))
    assert reg.resolve(f"{TASK}@2").id == b.id and reg.resolve(f"{TASK}@v2").id == b.id
    assert reg.resolve(f"{TASK}@latest").id == c.id and reg.resolve(TASK).id == c.id
    assert reg.resolve(f"{TASK}@best").id == b.id
    assert reg.resolve(a.id).id == a.id and reg.resolve(a.id[:8].upper()).id == a.id
    assert reg.resolve(b).id == b.id
    reg.set_alias(a.ref, "prod")
    assert reg.resolve(f"{TASK}@prod").id == a.id

    for ref, words in [
        ("nope@1", "unknown task 'nope'"),
        (f"{TASK}@9", "has no version 9"),
        (f"{TASK}@staging", "has no alias 'staging'"),
        ("0000000000", "no adapter matches"),
        ("hello world", "no adapter matches"),
    ]:
        with pytest.raises(RegistryError, match=words) as info:
            reg.resolve(ref)
        assert info.value.hint

    # Two ids sharing a prefix: the short prefix is ambiguous, a longer one is not.
    ids = iter([uuid.UUID("abcd" + "0" * 28), uuid.UUID("abcd" + "1" * 28)])
    monkeypatch.setattr("registry.api.uuid.uuid4", lambda: next(ids))
    reg.register(new_adapter(seed=4))
    reg.register(new_adapter(seed=5))
    with pytest.raises(RegistryError, match="matches several adapters"):
        reg.resolve("abcd")
    assert reg.resolve("abcd1").id == "abcd" + "1" * 28


def test_best_uses_validation_then_test_and_skips_archived(reg):
    with pytest.raises(RegistryError, match="has no ready adapter"):
        reg.resolve(f"{TASK}@latest")
    test_only = reg.register(new_adapter(seed=1, metrics=[val(0.95, "test")]))
    assert reg.resolve(f"{TASK}@best").id == test_only.id  # no validation value anywhere: test counts
    on_val = reg.register(new_adapter(seed=2, metrics=[val(0.6), val(0.5, "test")]))
    assert reg.resolve(f"{TASK}@best").id == on_val.id  # once any adapter has a validation value, it decides
    late = reg.register(new_adapter(seed=3, metrics=[val(0.7), val(0.9, step=5)]))
    assert reg.resolve(f"{TASK}@best").id == late.id  # its final (step-less) 0.7; the 0.9 of step 5 does not count
    reg.archive(late.ref)
    assert reg.resolve(f"{TASK}@best").id == on_val.id and reg.resolve(f"{TASK}@latest").id == on_val.id
    assert reg.resolve(late.ref).status == "archived"  # archived adapters still resolve by version
    reg.archive(late.ref, archived=False)
    assert reg.resolve(f"{TASK}@latest").id == late.id


def test_best_errors_without_metric(reg):
    reg.register(new_adapter(seed=1))
    with pytest.raises(RegistryError, match="has a 'accuracy' metric on validation or test") as info:
        reg.resolve(f"{TASK}@best")
    assert f"{TASK}@latest" in info.value.hint


def test_list_filters_sort_and_limit(reg):
    reg.ensure_task(TaskRecord("sst2", "Sentences", ["neg", "pos"]))
    a = reg.register(new_adapter(seed=1, metrics=[val(0.70)], tags=["base"]))
    b = reg.register(new_adapter(seed=2, method="pt", metrics=[val(0.90), val(0.60, "test")]))
    c = reg.register(new_adapter(seed=3, backbone=backbone(name="other", embedding_sha256="1234abcd" * 8)))
    d = reg.register(new_adapter("sst2", seed=4, metrics=[val(0.80)], tags=["base", "x"]))

    def refs(**kw):
        return [r.ref for r in reg.list_adapters(**kw)]

    assert refs() == [d.ref, c.ref, b.ref, a.ref]  # newest first
    assert refs(descending=False) == [a.ref, b.ref, c.ref, d.ref]
    assert refs(task=TASK) == [c.ref, b.ref, a.ref]
    assert refs(method="pt") == [b.ref]
    assert refs(backbone="other") == [c.ref] and refs(backbone="1234abcd12") == [c.ref]
    assert refs(backbone="tiny-random-llama", task="sst2") == [d.ref]
    assert refs(tag="base") == [d.ref, a.ref] and refs(tag="x") == [d.ref]
    assert refs(sort="accuracy") == [b.ref, d.ref, a.ref, c.ref]  # no metric: last
    assert refs(sort="accuracy", descending=False) == [a.ref, d.ref, b.ref, c.ref]
    assert refs(sort="test:accuracy")[0] == b.ref
    assert refs(min_metric={"accuracy": 0.75}) == [d.ref, b.ref]
    assert refs(min_metric={"accuracy": 0.75, "test:accuracy": 0.5}) == [b.ref]
    assert refs(sort="accuracy", limit=2) == [b.ref, d.ref]
    reg.archive(a.ref)
    assert a.ref not in refs() and refs(include_archived=True, limit=1, descending=False) == [a.ref]
    with pytest.raises(RegistryError, match="unknown task"):
        reg.list_adapters(task="nope")
    listed = reg.list_adapters(task="sst2")[0]
    assert listed == reg.get(d.id)  # a listing carries the same full records as get


def test_aliases_and_tags(reg):
    a = reg.register(new_adapter(seed=1))
    b = reg.register(new_adapter(seed=2))
    assert reg.set_alias(a.ref, "prod").aliases == ["prod"]
    assert reg.set_alias(b.ref, "prod").aliases == ["prod"]  # moves
    assert reg.get(a.id).aliases == [] and reg.resolve(f"{TASK}@prod").id == b.id
    for bad, words in [("latest", "reserved"), ("best", "reserved"), ("v2", "invalid alias"), ("a b", "invalid")]:
        with pytest.raises(RegistryError, match=words):
            reg.set_alias(a.ref, bad)
    reg.remove_alias(TASK, "prod")
    with pytest.raises(RegistryError, match="has no alias 'prod'"):
        reg.remove_alias(TASK, "prod")

    assert reg.add_tags(a.ref, ["x", "y"]).tags == ["x", "y"]
    assert reg.add_tags(a.ref, ["y", "z"]).tags == ["x", "y", "z"]  # idempotent
    assert reg.remove_tags(a.ref, ["x", "absent"]).tags == ["y", "z"]
    with pytest.raises(RegistryError, match="invalid tag"):
        reg.add_tags(a.ref, [""])


def test_add_metrics_replaces_same_key_and_moves_best(reg):
    a = reg.register(new_adapter(seed=1, metrics=[val(0.8)]))
    b = reg.register(new_adapter(seed=2, metrics=[val(0.7)]))
    assert reg.resolve(f"{TASK}@best").id == a.id
    rec = reg.add_metrics(b.id, [val(0.9), val(0.5, name="f1")])
    assert rec.metric("accuracy") == 0.9 and rec.metric("f1") == 0.5 and len(rec.metrics) == 2
    assert reg.resolve(f"{TASK}@best").id == b.id
    with pytest.raises(RegistryError, match="is nan"):
        reg.add_metrics(b.ref, [val(float("nan"))])


def test_final_value_follows_steps_in_sql_and_in_records(reg):
    """The value that ranks is the step-less one, else the highest step; SQL and AdapterRecord.metric agree."""
    a = reg.register(new_adapter(seed=1, metrics=[val(0.5)]))
    b = reg.register(new_adapter(seed=2, metrics=[val(0.9, step=5)]))

    def ranked():
        return [r.ref for r in reg.list_adapters(sort="accuracy")], reg.resolve(f"{TASK}@best").ref

    assert ranked() == ([b.ref, a.ref], b.ref)
    assert reg.add_metrics(b.ref, [val(0.4, step=10)]).metric("accuracy") == 0.4  # a later step takes over
    assert ranked() == ([a.ref, b.ref], a.ref)
    assert reg.add_metrics(b.ref, [val(0.7, step=3), val(0.6)]).metric("accuracy") == 0.6  # step-less wins
    assert ranked() == ([b.ref, a.ref], b.ref)
    assert reg.add_metrics(b.ref, [val(0.3)]).metric("accuracy") == 0.3  # replaces the step-less value
    assert ranked() == ([a.ref, b.ref], a.ref)
    assert len(reg.get(b.id).metrics) == 4
    assert [r.ref for r in reg.list_adapters(min_metric={"accuracy": 0.45})] == [a.ref]


def test_same_bytes_share_one_file_until_the_last_reference_goes(reg):
    a = reg.register(new_adapter(seed=1))
    b = reg.register(new_adapter(seed=1))  # same tensors, config and backbone: same bytes
    c = reg.register(new_adapter(seed=2))
    assert a.artifacts[0].sha256 == b.artifacts[0].sha256 != c.artifacts[0].sha256
    shared = Path(a.artifacts[0].path)
    assert reg.delete(a.ref).id == a.id
    assert shared.exists() and torch.equal(reg.load_servable(b)[0]["prompt"], new_adapter(seed=1).servable["prompt"])
    reg.delete(b.id)
    assert not shared.exists() and Path(c.artifacts[0].path).exists()
    with pytest.raises(RegistryError, match="has no version 1"):
        reg.resolve(a.ref)
    with pytest.raises(RegistryError, match="no adapter with id"):
        reg.load_servable(a)  # a record of a deleted adapter
    assert reg.register(new_adapter(seed=3)).version == 4  # versions are never reused


def test_lineage_and_delete_of_a_parent(reg):
    p1 = reg.register(new_adapter(seed=1))
    p2 = reg.register(new_adapter(seed=2))
    links = [ParentLink(p2.id, 0.7, "init-weighted"), ParentLink(p1.id, 0.3, "init-weighted")]
    child = reg.register(new_adapter(seed=3, parents=links))
    assert child.parents == links
    assert [r.id for r in reg.parents(child.ref)] == [p2.id, p1.id]  # in the order given
    assert [r.id for r in reg.children(p1.ref)] == [child.id] and reg.children(child.ref) == []
    with pytest.raises(RegistryError, match="is a parent of 1 other adapter") as info:
        reg.delete(p1.ref)
    assert "--force" in info.value.hint and reg.resolve(p1.id)
    reg.delete(p1.ref, force=True)
    # The child keeps the deleted parent's id and how it was initialised; only live parents resolve.
    assert reg.get(child.id).parents == links
    assert [r.id for r in reg.parents(child.ref)] == [p2.id]
    with pytest.raises(RegistryError, match="unknown parent"):
        reg.register(new_adapter(seed=4, parents=[ParentLink("f" * 32, 1.0, "attention")]))


def test_corrupt_artifacts_name_the_adapter_and_the_file(reg):
    ok = reg.register(new_adapter(seed=1))
    truncated = reg.register(new_adapter(seed=2))
    modified = reg.register(new_adapter(seed=3))
    path_t = Path(truncated.artifacts[0].path)
    path_t.write_bytes(path_t.read_bytes()[:-7])
    path_m = Path(modified.artifacts[0].path)
    data = bytearray(path_m.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit of a tensor: still a valid safetensors file, wrong bytes
    path_m.write_bytes(bytes(data))
    for rec, path in [(truncated, path_t), (modified, path_m)]:
        with pytest.raises(RegistryError) as info:
            reg.load_servable(rec.ref)
        assert rec.ref in info.value.message and str(path) in info.value.message and "corrupt" in info.value.message
        assert "\n" not in info.value.message and info.value.hint
    path_t.unlink()
    with pytest.raises(RegistryError, match="missing"):
        reg.load_servable(truncated)
    assert torch.equal(reg.load_servable(ok.ref)[0]["a"], new_adapter(seed=1).servable["a"])


def test_gc_removes_only_old_unreferenced_files(reg):
    kept = reg.register(new_adapter(seed=1))
    orphan = reg.store.put(Blob_of(new_adapter(seed=9).servable))
    tmp = orphan.parent / ".tmp-crashed.safetensors"
    tmp.write_bytes(b"partial")
    foreign = orphan.parent / "README"
    foreign.write_text("not ours")
    assert reg.gc() == []  # everything is younger than the default grace period of an hour
    assert sorted(reg.gc(grace_seconds=0, dry_run=True)) == sorted([orphan, tmp]) and orphan.exists()
    assert sorted(reg.gc(grace_seconds=0)) == sorted([orphan, tmp])
    assert not orphan.exists() and not tmp.exists() and foreign.exists()
    assert Path(kept.artifacts[0].path).exists() and reg.gc(grace_seconds=0) == []


def Blob_of(tensors):  # noqa: N802  (reads like the type it builds)
    from registry.store import serialize

    return serialize(tensors, {})


def test_register_rewrites_a_shared_file_removed_before_commit(reg):
    """gc or delete may remove identical bytes between a register's file write and its commit."""
    first = reg.register(new_adapter(seed=1))
    path = Path(first.artifacts[0].path)
    reg.delete(first.ref)
    assert not path.exists()
    again = reg.register(new_adapter(seed=1))
    assert Path(again.artifacts[0].path) == path and path.exists() and reg.load_servable(again)


def test_register_writes_again_a_file_removed_between_its_write_and_its_transaction(reg, monkeypatch):
    """No file is written inside the transaction: the insert finds the file gone under its lock and rolls back,
    and register writes the file again and retries (as after a concurrent gc or delete of identical bytes)."""
    from registry.sql_store import SqlAlchemyStore

    real, calls = SqlAlchemyStore.insert_adapter, []

    def removed_first(self, new, blobs, insertion, present):
        calls.append(insertion.adapter_id)
        if len(calls) == 1:
            for blob in blobs.values():
                reg.store.remove(blob.relpath)
        return real(self, new, blobs, insertion, present)

    monkeypatch.setattr(SqlAlchemyStore, "insert_adapter", removed_first)
    rec = reg.register(new_adapter(seed=1))
    assert len(calls) == 2 and rec.version == 1  # the rolled-back attempt took no version
    assert Path(rec.artifacts[0].path).exists() and reg.load_servable(rec)


def test_tasks(reg):
    task = reg.get_task(TASK)
    assert task.labels == ["negative", "positive"] and task.metric == "accuracy" and task.created_at is not None
    same = reg.ensure_task(TaskRecord(TASK, "changed?", ["x"]))
    assert same == task  # an existing task is returned, not changed
    new = reg.ensure_task(TaskRecord("ag-news", "News", ["w", "s", "b", "t"], "macro_f1", {"kind": "csv"}, "{text}"))
    assert new.source == {"kind": "csv"} and new.template == "{text}" and new.metric == "macro_f1"
    assert [t.name for t in reg.list_tasks()] == ["ag-news", TASK]
    with pytest.raises(RegistryError, match="unknown task 'nope'"):
        reg.get_task("nope")
    with pytest.raises(RegistryError, match="unknown task 'nope'"):
        reg.register(new_adapter("nope"))
    with pytest.raises(RegistryError, match="invalid task name"):
        reg.ensure_task(TaskRecord("a@b", "", []))


def test_schema_methods_and_sqlite_pragmas(reg, db_url):
    from registry import head_revision
    from registry.db import create_engine

    assert repr(reg) == f"Registry({reg.display_url!r})"
    assert reg.current_revision() == head_revision() and reg.upgrade() == (head_revision(), head_revision())
    if db_url.startswith("sqlite"):
        # reg's own pooled connection created the schema with foreign keys off: they must be back on
        for engine in (reg._db.engine, create_engine(db_url)):
            with engine.connect() as conn:
                pragmas = [conn.exec_driver_sql(f"PRAGMA {p}").scalar() for p in ("journal_mode", "foreign_keys")]
                assert pragmas == ["wal", 1] and conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 5000


def test_display_url_masks_the_password(tmp_path, eptctl_home):
    url = "postgresql+psycopg://alice:s3cr3t-pw@127.0.0.1:1/eptctl"
    assert mask_url(url) == "postgresql+psycopg://alice:***@127.0.0.1:1/eptctl"
    with pytest.raises(RegistryError) as info:
        Registry(url)
    err = info.value
    assert err.message == "cannot reach the registry database at postgresql+psycopg://alice:***@127.0.0.1:1/eptctl"
    assert "s3cr3t" not in str(err) and "--registry" in err.hint
    with pytest.raises(RegistryError, match="cannot reach the registry database at sqlite:///"):
        Registry(f"sqlite:///{tmp_path}/no/such/dir/registry.db")
    reg = Registry()  # default: the SQLite file in $EPTCTL_HOME
    assert reg.display_url == f"sqlite:///{eptctl_home / 'registry.db'}"
    reg.close()


def test_importing_the_registry_does_not_import_cli_frameworks_or_torch():
    code = "import sys, registry; print([m for m in ('typer', 'rich', 'torch') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_listing_10000_adapters_uses_a_fixed_number_of_statements(sqlite_url, eptctl_home):
    """10,000 adapters with 3 metrics, an alias, a tag and a run each, listed in full with the same few SQL statements
    as 10 adapters (no query per adapter). How long it takes is measured by `python -m bench registry`
    (docs/benchmarks.md section 4), not here: a wall-clock bound failed on a loaded 2-core machine."""
    import sqlalchemy as sa

    from bench.registry import seed_adapters

    r = Registry(sqlite_url)
    seed_adapters(r, 10_000)
    statements = []
    sa.event.listen(r._db.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    assert len(r.list_adapters(limit=10)) == 10
    small = len(statements)
    statements.clear()
    records = r.list_adapters()
    r.close()
    assert len(records) == 10_000 and len(records[0].metrics) == 3 and records[0].tags and records[0].aliases
    assert len(statements) == small <= 10  # the same few statements for 10 adapters as for 10,000
