"""The CLI end to end on tiny random backbones, a real SQLite registry in a temporary EPTCTL_HOME."""

from __future__ import annotations

import json
import sqlite3

import pytest
from cli_support import ok, run, user_error


TINY = ["--model", "tiny-random-llama", "--steps", "6", "--batch-size", "8", "--max-train", "64", "--max-eval", "24"]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("cli-home")


@pytest.fixture(autouse=True)
def _env(home, monkeypatch):
    monkeypatch.setenv("EPTCTL_HOME", str(home))
    monkeypatch.delenv("EPTCTL_REGISTRY_URL", raising=False)


@pytest.fixture(scope="module")
def trained(home):
    import os

    os.environ["EPTCTL_HOME"] = str(home)
    first = json.loads(ok("train", "rt-polarity", *TINY, "--json").stdout)
    second = json.loads(ok("train", "rt-polarity", *TINY, "--method", "dept", "--seed", "1", "--json").stdout)
    return first, second


def registry_rows(home) -> int:
    with sqlite3.connect(home / "registry.db") as conn:
        return conn.execute("select count(*) from adapters").fetchone()[0]


def test_train_json_reports_ref_and_metrics(trained):
    first, second = trained
    assert first["ref"] == "rt-polarity@1" and second["ref"] == "rt-polarity@2"
    assert 0.0 <= first["metrics"]["test"]["accuracy"] <= 1.0
    assert set(first["metrics"]) == {"validation", "test"}
    assert first["params_by_group"]["fusion"] > 0 and second["params_by_group"]["fusion"] == 0


def test_list_json_and_filters(trained):
    rows = json.loads(ok("list", "--json").stdout)
    assert {r["ref"] for r in rows} == {"rt-polarity@1", "rt-polarity@2"}
    assert {"ref", "task", "method", "backbone"} <= set(rows[0])
    dept = json.loads(ok("list", "--method", "dept", "--json").stdout)
    assert [r["ref"] for r in dept] == ["rt-polarity@2"]
    table = ok("list", "--task", "rt-polarity").stdout
    assert "rt-polarity@1" in table and "tiny-random-llama" in table


def test_show_json_has_params_by_group_and_space_weights(trained):
    shown = json.loads(ok("show", "rt-polarity@1", "--json").stdout)
    assert shown["params_by_group"]["prompt"] > 0
    assert len(shown["space_weights"]) == 3 and abs(sum(shown["space_weights"]) - 1) < 1e-4
    assert shown["backbone"]["name"] == "tiny-random-llama"
    assert {a["kind"] for a in shown["artifacts"]} == {"servable", "training_state"}
    assert shown["training"]["steps"] == 6 and shown["training"]["batch_size"] == 8
    assert "training: steps=6" in ok("show", "rt-polarity@1").stdout
    text = ok("show", "rt-polarity@latest").stdout
    assert "space weights" not in text  # @latest is the dept adapter: no gate
    assert "space weights" in ok("show", "rt-polarity@1").stdout


def test_compare_shows_deltas_differing_config_and_similarity(trained):
    report = json.loads(ok("compare", "rt-polarity@1", "rt-polarity@2", "--json").stdout)
    assert "method" in report["config"] and "max_length" not in report["config"]
    # How they were trained: the seeds differ (1 vs 0), the step count does not
    assert report["config"]["train.seed"] == [0, 1] and "train.steps" not in report["config"]
    assert "max_length" in json.loads(ok("compare", "rt-polarity@1", "rt-polarity@2", "--all", "--json").stdout)["config"]
    assert -1.0 <= report["prompt_similarity"][0]["cosine"] <= 1.0
    acc = next(m for m in report["metrics"] if m["split"] == "test" and m["name"] == "accuracy")
    assert acc["deltas"][1] == pytest.approx(acc["values"][1] - acc["values"][0])
    assert "prompt cosine similarity" in ok("compare", "rt-polarity@1", "rt-polarity@2").stdout


def test_eval_reproduces_stored_metrics_and_stores_them(trained):
    first, _ = trained
    result = json.loads(ok("eval", "rt-polarity@1", "--split", "test", "--max-eval", "24", "--json").stdout)
    assert result["metrics"]["accuracy"] == pytest.approx(first["metrics"]["test"]["accuracy"], abs=1e-9)


def test_predict_texts_and_stdin(trained):
    lines = ok("predict", "rt-polarity@1", "A triumph.", "Dull.").stdout.strip().splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["text"] for r in rows] == ["A triumph.", "Dull."]
    assert all(r["label"] in ("rotten", "fresh") and set(r["scores"]) == {"rotten", "fresh"} for r in rows)
    piped = ok("predict", "rt-polarity@1", input="first line\nsecond line\n").stdout.strip().splitlines()
    assert len(piped) == 2


def test_mixed_task_predict_matches_single_adapter_predictions(trained, tmp_path):
    rows = tmp_path / "rows.csv"
    rows.write_text("task,text\nrt-polarity@1,great fun\nrt-polarity@2,boring\nrt-polarity@1,boring\n")
    mixed = [json.loads(line) for line in ok("predict", "--adapters", "rt-polarity@1,rt-polarity@2",
                                             "--task-column", "task", str(rows)).stdout.splitlines()]
    assert [m["adapter"] for m in mixed] == ["rt-polarity@1", "rt-polarity@2", "rt-polarity@1"]
    alone = json.loads(ok("predict", "rt-polarity@2", "boring").stdout)
    assert mixed[1]["scores"] == pytest.approx(alone["scores"], abs=1e-5)


def test_alias_tag_archive_rm_gc(trained, home):
    assert "rt-polarity@prod -> rt-polarity@1" in ok("alias", "rt-polarity@1", "prod").stdout
    assert json.loads(ok("show", "rt-polarity@prod", "--json").stdout)["ref"] == "rt-polarity@1"
    ok("tag", "rt-polarity@1", "baseline")
    assert [r["ref"] for r in json.loads(ok("list", "--tag", "baseline", "--json").stdout)] == ["rt-polarity@1"]
    ok("train", "rt-polarity", *TINY, "--steps", "2", "--seed", "7")
    ok("archive", "rt-polarity@3")
    assert "rt-polarity@3" not in ok("list").stdout
    assert "rt-polarity@3" in ok("list", "--archived").stdout
    shown = json.loads(ok("show", "rt-polarity@3", "--json").stdout)
    ok("rm", "rt-polarity@3")
    from pathlib import Path

    assert all(not Path(a["path"]).exists() for a in shown["artifacts"])
    assert run("show", "rt-polarity@3").exit_code == 2
    assert ok("gc", "--grace", "0").exit_code == 0


def test_tasks_models_and_db(trained):
    tasks = {t["name"]: t for t in json.loads(ok("tasks", "--json").stdout)}
    assert {"rt-polarity", "rt-subjectivity", "bbc-topic"} <= set(tasks)
    models = {m["name"]: m for m in json.loads(ok("models", "--json").stdout)}
    assert models["smollm2-135m"]["default"] and "tiny-random-t5" in models
    assert "(head)" in ok("db", "current").stdout


def test_custom_task_from_csv_is_stored_and_reusable(tmp_path):
    data = tmp_path / "pairs.csv"
    rows = ["sentence,verdict"] + [f"{'ab' * (i % 5 + 1)} item {i},{'left' if i % 2 else 'right'}" for i in range(40)]
    data.write_text("\n".join(rows) + "\n")
    args = ["--model", "tiny-random-bert", "--steps", "4", "--batch-size", "8", "--text-column", "sentence",
            "--label-column", "verdict", "--json"]
    first = json.loads(ok("train", "mytask", "--data", str(data), *args).stdout)
    assert first["ref"] == "mytask@1" and first["params_by_group"]["head"] > 0
    assert "mytask" in {t["name"] for t in json.loads(ok("tasks", "--json").stdout)}
    again = json.loads(ok("train", "mytask", "--model", "tiny-random-bert", "--steps", "2", "--json").stdout)
    assert again["ref"] == "mytask@2"


# --- errors: one line on stderr with a hint, exit code 2, nothing written ---------------------------------------
def test_user_errors_are_one_line_exit_2_and_write_nothing(trained, home, tmp_path):
    before = registry_rows(home)
    good = tmp_path / "good.csv"
    good.write_text("text,label\n" + "".join(f"t{i},{'a' if i % 2 else 'b'}\n" for i in range(20)))
    bad_label = tmp_path / "bad_label.csv"
    bad_label.write_text("text,label\nx,a\ny,zzz\n")
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\n")
    cases = [
        (("train", "no-such-task", *TINY), ("unknown task",)),
        (("show", "rt-polarity@99"), ()),
        (("show", "ffffffffffff"), ()),
        (("train", "newtask", "--data", str(tmp_path / "missing.csv"), *TINY), ("missing.csv",)),
        (("train", "newtask", "--data", str(good), "--text-column", "body", *TINY), ("body",)),
        (("train", "newtask", "--data", str(empty), *TINY), ()),
        (("train", "rt-polarity", "--method", "lora", *TINY), ("--method",)),
        (("train", "rt-polarity", "--short-length", "50", *TINY), ("--short-length",)),
        (("eval", "rt-polarity@1", "--model", "tiny-random-bert"), ("trained on",)),
        (("list", "--registry", "postgresql+psycopg://nobody:secret@127.0.0.1:1/none"), ()),
        (("predict", "rt-polarity@1", "--file", str(tmp_path / "nope.csv")), ()),
        (("list", "--sort", "acuracy"), ("acuracy", "accuracy")),
        (("list", "--sort", "train:accuracy"), ("train:accuracy",)),
        (("eval", "rt-polarity@1", "--split", "dev"), ("--split train",)),
    ]
    for args, needles in cases:
        user_error(run(*args), *needles)
    # An unknown --init-from source fails before the task's data or the model is loaded:
    # (before, the data and model progress lines came first: user_error allows the error line alone on stderr)
    user_error(run("train", "rt-polarity", *TINY, "--init-from", "rt-polarity@99"), "no version 99")
    # A label outside a stored task's label set:
    ok("train", "labelled", "--data", str(good), "--model", "tiny-random-bert", "--steps", "1", "--max-eval", "4")
    after_first = registry_rows(home)
    user_error(run("train", "labelled", "--data", str(bad_label), "--model", "tiny-random-bert"), "zzz")
    assert registry_rows(home) == after_first == before + 1
    assert "secret" not in run("list", "--registry", "postgresql+psycopg://nobody:secret@127.0.0.1:1/none").stderr
