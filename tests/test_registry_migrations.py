"""Schema migrations: up, down and up again on both backends, no drift, refusal of stale schemas, the wheel."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from registry_fixtures import db_url, pg_url, sqlite_url  # noqa: F401
from typer.testing import CliRunner

from registry import Registry, RegistryError, current_revision, downgrade, head_revision, mask_url, upgrade
from registry.db import create_engine
from registry.schema import metadata

REPO = Path(__file__).resolve().parent.parent


def tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def drift(url: str) -> list:
    """What ``alembic check`` would report: differences between the models and the migrated database."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade_without_drift(db_url):
    head = head_revision()
    assert current_revision(db_url) is None
    assert upgrade(db_url) == (None, head)
    assert tables(db_url) == set(metadata.tables) | {"alembic_version"}
    assert drift(db_url) == []
    assert downgrade(db_url) == (head, None)
    assert tables(db_url) <= {"alembic_version"} and current_revision(db_url) is None
    assert upgrade(db_url) == (None, head)
    assert drift(db_url) == [] and current_revision(db_url) == head


def test_migrations_keep_the_data(db_url):
    from registry_fixtures import new_adapter

    from registry import MetricValue, TaskRecord

    with Registry(db_url) as reg:
        reg.ensure_task(TaskRecord("t", "", ["a", "b"]))
        parent = reg.register(new_adapter("t", seed=1, metrics=[MetricValue("validation", "accuracy", 0.5)]))
        reg.register(new_adapter("t", seed=2, tags=["x"]))
    assert downgrade(db_url, "0001") == (head_revision(), "0001")
    assert upgrade(db_url) == ("0001", head_revision())
    with Registry(db_url) as reg:
        assert [r.version for r in reg.list_adapters(task="t")] == [2, 1]
        assert reg.resolve("t@best").id == parent.id and reg.resolve("t@2").tags == ["x"]


def test_every_constraint_and_index_is_named():
    for table in metadata.tables.values():
        for item in [*table.constraints, *table.indexes]:
            assert item.name, f"unnamed {type(item).__name__} on {table.name}"


def test_out_of_date_schema_is_refused_with_the_exact_command(db_url):
    upgrade(db_url, "0001")
    with pytest.raises(RegistryError, match="is out of date") as info:
        Registry(db_url)
    assert info.value.hint == f"eptctl db upgrade --registry {mask_url(db_url)}"
    result = CliRunner().invoke(_app(), ["db", "upgrade", "--registry", db_url])
    assert result.exit_code == 0, result.output
    assert "0001 -> " + head_revision() in result.output
    Registry(db_url).close()


def test_default_url_hint_and_env_url(sqlite_url, eptctl_home, monkeypatch):
    monkeypatch.delenv("EPTCTL_REGISTRY_URL", raising=False)
    upgrade(None, "0001")  # the default database: $EPTCTL_HOME/registry.db
    with pytest.raises(RegistryError) as info:
        Registry()
    assert info.value.hint == "eptctl db upgrade"
    monkeypatch.setenv("EPTCTL_REGISTRY_URL", sqlite_url)
    upgrade(None, "0001")
    with pytest.raises(RegistryError) as info:
        Registry()
    assert info.value.hint == f"eptctl db upgrade --registry {sqlite_url}"


def test_newer_or_foreign_schemas_are_refused(sqlite_url, eptctl_home, tmp_path):
    Registry(sqlite_url).close()
    engine = create_engine(sqlite_url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(RegistryError, match="newer than this eptctl") as info:
        Registry(sqlite_url)
    assert "upgrade eptctl" in info.value.hint
    foreign = f"sqlite:///{tmp_path / 'foreign.db'}"
    engine = create_engine(foreign)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE tasks (x INTEGER)"))
    engine.dispose()
    with pytest.raises(RegistryError, match="has registry tables but no schema revision"):
        Registry(foreign)


def _app():
    from eptctl.cli.app import app

    return app


def test_cli_db_current_and_upgrade(sqlite_url, eptctl_home, monkeypatch):
    runner = CliRunner()
    head = head_revision()
    out = runner.invoke(_app(), ["db", "current", "--registry", sqlite_url])
    assert out.exit_code == 0 and "no schema" in out.output and "db upgrade" in out.output
    out = runner.invoke(_app(), ["db", "upgrade", "--registry", sqlite_url])
    assert out.exit_code == 0 and f"empty -> {head}" in out.output
    monkeypatch.setenv("EPTCTL_REGISTRY_URL", sqlite_url)  # the same database, through the environment
    out = runner.invoke(_app(), ["db", "upgrade"])
    assert out.exit_code == 0 and f"already at {head}" in out.output
    out = runner.invoke(_app(), ["db", "current", "--json"])
    assert out.exit_code == 0 and f'"revision": "{head}"' in out.output
    out = runner.invoke(_app(), ["db", "current"])
    assert f"{head} (head)" in out.output


def test_cli_commands_have_examples():
    from eptctl.cli.db import current, upgrade as upgrade_cmd

    for command in (current, upgrade_cmd):
        assert "Example: eptctl db " in command.__doc__


def test_cli_never_prints_the_password():
    url = "postgresql+psycopg://alice:s3cr3t-pw@127.0.0.1:1/eptctl"
    out = CliRunner().invoke(_app(), ["db", "current", "--registry", url])
    assert out.exit_code != 0 and "s3cr3t" not in out.output


def test_cli_user_error_is_one_line_with_exit_code_2():
    url = "postgresql+psycopg://alice:s3cr3t-pw@127.0.0.1:1/eptctl"
    out = CliRunner().invoke(_app(), ["db", "upgrade", "--registry", url])
    assert out.exit_code == 2
    assert out.output.startswith("error: cannot reach the registry database at postgresql+psycopg://alice:***@")
    assert len(out.output.strip().splitlines()) == 1


def _repo_files() -> list[str]:
    """Tracked files and untracked ones git does not ignore: what a clean checkout plus work in progress holds."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return [f for f in out.split("\0") if f and (REPO / f).is_file()]


def test_wheel_ships_the_migrations(tmp_path):
    """A non-editable wheel, installed outside the repo, creates a fresh database with `eptctl db upgrade`."""
    src = tmp_path / "src"
    for rel in _repo_files():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, src / rel)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist", src], check=True)
    (wheel,) = (tmp_path / "dist").glob("eptctl-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {"migrations/env.py", "migrations/script.py.mako", "registry/api.py"} <= set(names)
    assert any(n.startswith("migrations/versions/0001_") for n in names)
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", site, wheel], check=True)

    env = {k: v for k, v in os.environ.items() if k not in ("EPTCTL_REGISTRY_URL", "PYTHONPATH")}
    env.update(PYTHONPATH=str(site), EPTCTL_HOME=str(tmp_path / "home"))
    show = "import eptctl, registry, migrations as m; print(eptctl.__file__, registry.__file__, m.__file__)"
    where = subprocess.run(
        [sys.executable, "-c", show], cwd=tmp_path, env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert all(Path(p).is_relative_to(site) for p in where), where
    db = tmp_path / "fresh.db"
    proc = subprocess.run(
        [sys.executable, "-m", "eptctl", "db", "upgrade", "--registry", f"sqlite:///{db}"],
        cwd=tmp_path, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"empty -> {head_revision()}" in proc.stdout and current_revision(f"sqlite:///{db}") == head_revision()
