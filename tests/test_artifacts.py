"""The artifact root: ``$EPTCTL_ARTIFACTS`` (a folder, a ``file://`` URL or any fsspec URL) while rows stay in the
database; two hosts sharing one PostgreSQL registry and one artifact folder."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
import torch
from registry_fixtures import TASK, new_adapter, pg_url, sqlite_url  # noqa: F401

from registry import Registry, RegistryError, TaskRecord
from registry.store import ARTIFACTS_ENV, ArtifactStore, FsspecStore, open_store, serialize

TESTS = Path(__file__).parent


def _open(url: str, artifacts=None) -> Registry:
    reg = Registry(url, artifacts=artifacts)
    reg.ensure_task(TaskRecord(TASK, "Movie review polarity", ["negative", "positive"]))
    return reg


def test_env_root_holds_the_files_and_rows_point_there(sqlite_url, eptctl_home, tmp_path, monkeypatch):  # noqa: F811
    root = tmp_path / "shared-artifacts"
    monkeypatch.setenv(ARTIFACTS_ENV, str(root))
    reg = _open(sqlite_url)
    rec = reg.register(new_adapter(seed=1, training_state={"optim.0.exp_avg": torch.zeros(3)}))
    assert {a.kind for a in rec.artifacts} == {"servable", "training_state"}
    for art in rec.artifacts:
        path = Path(art.path)
        assert path.is_relative_to(root) and path.exists()
        assert hashlib.sha256(path.read_bytes()).hexdigest() == art.sha256
    assert not (eptctl_home / "artifacts").exists()  # nothing went to the default root
    with reg._db.read() as conn:
        rows = conn.exec_driver_sql("select path, sha256 from artifacts").all()
    # Rows hold paths relative to the root (hosts may mount a shared root at different places).
    assert sorted(root / p for p, _ in rows) == sorted(Path(a.path) for a in rec.artifacts)
    assert torch.equal(reg.load_servable(rec)[0]["prompt"], new_adapter(seed=1).servable["prompt"])

    orphan = reg.store.put(serialize(new_adapter(seed=9).servable, {}))
    assert orphan.is_relative_to(root) and reg.gc(grace_seconds=0) == [orphan] and not orphan.exists()
    reg.delete(rec.ref)
    assert not any(Path(a.path).exists() for a in rec.artifacts)
    reg.close()


def test_file_url_is_a_local_folder(tmp_path):
    store = open_store(f"file://{tmp_path}/arts")
    assert isinstance(store, ArtifactStore) and store.root == tmp_path / "arts"
    assert isinstance(open_store(tmp_path), ArtifactStore) and isinstance(open_store("memory://x"), FsspecStore)
    with pytest.raises(ValueError, match="local path"):
        open_store("file://otherhost/data")


def test_fsspec_url_round_trip_checksums_and_gc(sqlite_url, eptctl_home):  # noqa: F811
    url = f"memory://eptctl-test-{uuid.uuid4().hex[:8]}/artifacts"
    reg = _open(sqlite_url, artifacts=url)
    rec = reg.register(new_adapter(seed=2))
    art = rec.artifact("servable")
    assert art.path == f"{url}/{art.sha256[:2]}/{art.sha256}.safetensors"
    assert torch.equal(reg.load_servable(rec.ref)[0]["a"], new_adapter(seed=2).servable["a"])
    assert not (eptctl_home / "artifacts").exists()
    fs = reg.store.fs
    key = reg.store.path(f"{art.sha256[:2]}/{art.sha256}.safetensors").key
    assert fs.ls(key.rsplit("/", 1)[0], detail=False) == [key]  # the temp file was moved, not left behind

    # A second registry on the same root (same process: memory:// is per process) sees and loads the file.
    other = Registry(sqlite_url, artifacts=url)
    assert torch.equal(other.load_servable(rec.ref)[0]["prompt"], new_adapter(seed=2).servable["prompt"])

    good = fs.cat_file(key)
    fs.pipe_file(key, good[:-4] + b"\0\0\0\0")
    with pytest.raises(RegistryError, match="corrupt"):
        reg.load_servable(rec.ref)
    fs.rm_file(key)
    with pytest.raises(RegistryError, match="missing"):
        reg.load_servable(rec.ref)
    fs.pipe_file(key, good)

    orphan = reg.store.put(serialize(new_adapter(seed=9).servable, {}))
    tmp = reg.store.path(f"{art.sha256[:2]}/.tmp-crashed.safetensors")
    fs.pipe_file(tmp.key, b"partial")
    assert reg.gc() == []  # younger than the grace period
    assert sorted(reg.gc(grace_seconds=0)) == sorted([orphan, tmp]) and not orphan.exists() and not tmp.exists()
    reg.delete(rec.ref)
    assert not fs.exists(key)
    other.close()
    reg.close()


HOST = textwrap.dedent("""
    import json, sys, time
    sys.path.insert(0, sys.argv[2])
    from registry_fixtures import TASK, new_adapter
    from registry import Registry, TaskRecord

    reg = Registry()  # $EPTCTL_REGISTRY_URL and $EPTCTL_ARTIFACTS
    reg.ensure_task(TaskRecord(TASK, "Movie review polarity", ["negative", "positive"]))
    mine = reg.register(new_adapter(seed=int(sys.argv[1])))
    deadline = time.monotonic() + 120
    while len(reg.list_adapters()) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)  # the other host registers at the same time
    seen = {}
    for rec in reg.list_adapters():
        tensors, _ = reg.load_servable(rec)
        seen[rec.id] = {"ref": rec.ref, "mine": rec.id == mine.id, "path": rec.artifact("servable").path,
                        "prompt": tensors["prompt"].tolist()}
    print(json.dumps(seen))
""")


@pytest.mark.postgres
def test_two_hosts_share_one_postgres_registry_and_one_artifact_folder(pg_url, tmp_path):  # noqa: F811
    shared = tmp_path / "nfs" / "eptctl-artifacts"
    procs = []
    for seed in (1, 2):
        env = {**os.environ, "EPTCTL_HOME": str(tmp_path / f"host{seed}"), "EPTCTL_REGISTRY_URL": pg_url,
               ARTIFACTS_ENV: str(shared)}
        procs.append(subprocess.Popen([sys.executable, "-c", HOST, str(seed), str(TESTS)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    seen = []
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err[-3000:]
        seen.append(json.loads(out))
    a, b = seen
    assert len(a) == 2 and a.keys() == b.keys()  # each host sees both adapters
    assert sorted(v["ref"] for v in a.values()) == [f"{TASK}@1", f"{TASK}@2"]
    for adapter_id in a:
        assert a[adapter_id]["mine"] != b[adapter_id]["mine"]  # one written by each host
        assert a[adapter_id]["prompt"] == b[adapter_id]["prompt"]  # and loaded from the shared folder by both
        assert Path(a[adapter_id]["path"]).is_relative_to(shared)
    expected = {tuple(map(tuple, new_adapter(seed=s).servable["prompt"].tolist())) for s in (1, 2)}
    assert {tuple(map(tuple, v["prompt"])) for v in a.values()} == expected
    assert not (tmp_path / "host1" / "artifacts").exists() and not (tmp_path / "host2" / "artifacts").exists()
