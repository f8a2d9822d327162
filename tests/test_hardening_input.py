"""Hardening issue #29, items 6, 7, 15 and 16: markup in model cards, crafted bundles, few-shot K against the data,
column-wise and nested JSON. Real files, a real SQLite registry, the real CLI; tiny random backbones."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from cli_support import ok, run
from cli_support import user_error as refused
from registry_fixtures import backbone, new_adapter

from registry import MetricValue, ParentLink, Registry, RunInfo, TaskRecord

TINY = ["--model", "tiny-random-llama", "--steps", "2", "--batch-size", "8", "--max-train", "16", "--max-eval", "8"]
MARKUP = '"><script>alert(1)</script>'


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.setenv("EPTCTL_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("EPTCTL_REGISTRY_URL", raising=False)


def dump(db: Path) -> str:
    """The registry's content as SQL text (tasks, adapters, aliases, tags, metrics, runs, lineage)."""
    if not db.exists():
        return ""
    with sqlite3.connect(db) as conn:
        return "\n".join(conn.iterdump())


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def assert_no_live_markup(text: str) -> None:
    for raw in ("<script", '"><', "<img", "<b>", "<i>"):
        assert raw not in text, (raw, [line for line in text.splitlines() if raw in line])


# 6 -----------------------------------------------------------------------------------------------------------------
def test_card_and_bundle_readme_escape_every_user_string(tmp_path):
    """Task description, labels, verbalizer answers, template, file name, adapter description, backbone path,
    command line, device, package versions, lineage note and a file-evaluation split: all escaped."""
    url = f"sqlite:///{tmp_path / 'r.db'}"
    reg = Registry(url)
    reg.ensure_task(TaskRecord("xss", MARKUP, [f"neg{MARKUP}", "pos"], "accuracy",
                               {"kind": "file", "path": f"/data/{MARKUP}.csv", "verbalizer": [MARKUP, "<b>yes</b>"]},
                               f"<i>{{text}}</i> {MARKUP} ="))
    run_info = RunInfo(0, "d" * 64, {"eptctl": MARKUP}, f"eptctl train xss --data '{MARKUP}.csv'", 1.0, MARKUP)
    parent = reg.register(new_adapter("xss", seed=1))
    rec = reg.register(new_adapter("xss", seed=2, description=MARKUP, run=run_info, backbone=backbone(name=MARKUP),
                                   parents=[ParentLink(parent.id, 1.0, MARKUP)]))
    reg.add_metrics(rec, [MetricValue(f"data:{MARKUP}.csv", "accuracy", 0.5)])
    reg.close()
    card = ok("show", rec.id, "--card", "--registry", url).stdout
    assert_no_live_markup(card)
    assert card.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 9  # the text is there, escaped
    assert "<code>&lt;i&gt;{text}&lt;/i&gt;" in card  # free text as code keeps its characters when rendered
    ok("export", rec.id, tmp_path / "b", "--registry", url)
    assert (tmp_path / "b" / "README.md").read_text() == card
    # tags, aliases and task names never hold markup: they are refused where they enter
    refused(run("tag", rec.id, "<b>x</b>", "--registry", url), "invalid tag")
    refused(run("alias", rec.id, '"><x', "--registry", url), "invalid alias")


def test_a_trained_task_with_markup_in_its_file_template_and_labels_has_an_escaped_card(tmp_path):
    data = tmp_path / '"><img src=x onerror=alert(1)>.csv'
    data.write_text("text,label\n" + "".join(f"{'ab' * (i % 4 + 1)},<i>{'xy'[i % 2]}</i>\n" for i in range(40)))
    refused(run("train", MARKUP, "--data", data, *TINY), "invalid task name")
    ok("train", "xss", "--data", data, "--template", "<b>{text}</b> =", "--description", MARKUP, *TINY)
    card = ok("show", "xss@latest", "--card").stdout
    assert_no_live_markup(card)
    assert "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;.csv" in card and "| &lt;i&gt;x&lt;/i&gt; |" in card
    ok("export", "xss@latest", tmp_path / "b")
    assert_no_live_markup((tmp_path / "b" / "README.md").read_text())


# 7 -----------------------------------------------------------------------------------------------------------------
def _set(path: str, value):
    """An edit of the card: set the field at a dotted ``path`` (list items by index) to ``value``."""
    def edit(card):
        *parents, last = path.split(".")
        node = card
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[int(last) if isinstance(node, list) else last] = value
    return edit


def _rename_task(name: str):
    def edit(card):
        card["task"]["name"] = card["adapter"]["task"] = name
    return edit


CRAFTED = {
    "bad id": (_set("adapter.id", "../../x"), "32 lowercase hex"),
    "reserved alias": (_set("adapter.aliases", ["latest"]), "reserved"),
    "malformed alias": (_set("adapter.aliases", ["v3"]), "invalid alias"),
    "alias not a string": (_set("adapter.aliases", [["prod"]]), "adapter.aliases"),
    "malformed tag": (_set("adapter.tags", ["<b>x</b>"]), "invalid tag"),
    "tags not a list": (_set("adapter.tags", "baseline"), "adapter.tags"),
    "version not a number": (_set("adapter.version", "3"), "adapter.version"),
    "version zero": (_set("adapter.version", 0), "adapter.version"),
    "empty method": (_set("adapter.method", ""), "method"),
    "metric not finite": (_set("metrics.0.value", float("nan")), "not finite"),
    "metric step not an integer": (_set("metrics.0.step", 1.5), "step"),
    "metric split not a string": (_set("metrics.0.split", ["test"]), "split"),
    "parent id": (_set("lineage.parents", [{"id": "../y", "ref": None, "weight": 1.0, "how": "x"}]), "parent id"),
    "parent weight infinite": (_set("lineage.parents.0.weight", float("inf")), "not finite"),
    "task name": (_rename_task("a b"), "invalid task name"),
    "task type": (_set("task.task_type", "poem"), "task type"),
    "labels not strings": (_set("task.labels", [0, 1]), "task.labels"),
    "empty task metric": (_set("task.metric", ""), "task.metric"),
    "backbone width a string": (_set("backbone.width", "16"), "backbone.width"),
    "params not counts": (_set("adapter.params_by_group.prompt", "64"), "params_by_group"),
    "created_at not a date": (_set("adapter.created_at", "yesterday"), "created_at"),
}


@pytest.fixture
def bundles(tmp_path, monkeypatch):
    """A bundle of a child adapter (with a parent, an alias and a tag), and a target registry that already holds
    another task and adapter, so that "unchanged" means something."""
    from eptctl.interop.bundle import export_bundle

    src = Registry(f"sqlite:///{tmp_path / 'src.db'}")
    src.ensure_task(TaskRecord("rt", "polarity", ["neg", "pos"], template="{text} ="))
    parent = src.register(new_adapter("rt", seed=1))
    child = src.register(new_adapter("rt", seed=2, parents=[ParentLink(parent.id, 1.0, "init-weighted")],
                                     metrics=[MetricValue("test", "accuracy", 0.5, 1)], tags=["baseline"]))
    src.set_alias(child, "prod")
    export_bundle(src, child.ref, tmp_path / "bundle")
    export_bundle(src, parent.ref, tmp_path / "parent")
    src.close()
    target = tmp_path / "target"
    target.mkdir()
    monkeypatch.setenv("EPTCTL_HOME", str(target))  # the target registry's artifact store
    url = f"sqlite:///{target / 'registry.db'}"
    ok("import", tmp_path / "parent", "--registry", url)
    return tmp_path / "bundle", target, url


@pytest.mark.parametrize("case", list(CRAFTED))
def test_a_crafted_card_is_refused_before_any_write(bundles, case):
    from eptctl.interop.bundle import CARD_NAME, _card_checksum

    bundle, target, url = bundles
    edit, needle = CRAFTED[case]
    card = json.loads((bundle / CARD_NAME).read_text())
    edit(card)
    card["card_sha256"] = _card_checksum(card)  # as a careful forger would
    (bundle / CARD_NAME).write_text(json.dumps(card))
    before, files = dump(target / "registry.db"), files_under(target)
    refused(run("import", bundle, "--registry", url), CARD_NAME, "malformed", needle)
    assert dump(target / "registry.db") == before and files_under(target) == files


def test_the_untouched_bundle_imports(bundles):
    bundle, target, url = bundles
    done = json.loads(ok("import", bundle, "--registry", url, "--json").stdout)
    assert done["ref"] == "rt@2" and done["skipped_parents"] == [] and done["skipped_aliases"] == []
    rec = Registry(url).get(done["id"])
    assert rec.tags == ["baseline"] and rec.aliases == ["prod"] and rec.parents[0].how == "init-weighted"


# 16 ----------------------------------------------------------------------------------------------------------------
def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _labelled(n: int = 40) -> list[dict]:
    return [{"text": "ab" * (i % 4 + 1) if i % 2 else "yz" * (i % 3 + 1), "label": "xy"[i % 2]} for i in range(n)]


def test_column_wise_json_is_read_as_rows_everywhere(tmp_path):
    columns = {key: [row[key] for row in _labelled()] for key in ("text", "label")}
    (tmp_path / "cols.json").write_text(json.dumps(columns, indent=1))  # a pretty-printed document
    (tmp_path / "cols1.json").write_text(json.dumps({"text": ["a", "b"], "task": ["cw", "cw"]}))  # one line
    ok("train", "cw", "--data", tmp_path / "cols.json", *TINY)
    rows = [json.loads(line) for line in ok("predict", "cw@latest", "--file", tmp_path / "cols1.json").stdout.splitlines()]
    as_args = [json.loads(line) for line in ok("predict", "cw@latest", "a", "b").stdout.splitlines()]
    assert [r["text"] for r in rows] == ["a", "b"] and rows == as_args
    mixed = ok("predict", "--adapters", "cw@latest", "--task-column", "task", tmp_path / "cols1.json").stdout
    assert len(mixed.splitlines()) == 2
    assert json.loads(ok("eval", "cw@latest", "--data", tmp_path / "cols.json", "--json").stdout)["examples"] == 40
    (tmp_path / "ragged.json").write_text(json.dumps({"text": ["a", "b"], "label": ["x"]}))
    refused(run("predict", "cw@latest", "--file", tmp_path / "ragged.json"), "column-wise", "text 2, label 1")


NOT_TEXT = {"an object": {"nested": 1}, "a list": ["a", "b"], "a number": 12, "a boolean": True}


@pytest.mark.parametrize("kind", list(NOT_TEXT))
def test_a_text_field_that_is_not_a_string_is_refused_in_training_evaluation_and_prediction(tmp_path, kind):
    value = NOT_TEXT[kind]
    home = tmp_path / "home"
    ok("train", "good", "--data", _jsonl(tmp_path / "good.jsonl", _labelled()), *TINY)
    bad_rows = _labelled()
    bad_rows[2] = {**bad_rows[2], "text": value, "task": "good"}
    bad = _jsonl(tmp_path / "bad.jsonl", bad_rows)
    before = dump(home / "registry.db")
    refused(run("train", "bad", "--data", bad, *TINY), "row 3", "column 'text'", f"holds {kind}")
    refused(run("eval", "good@latest", "--data", bad), "row 3", "column 'text'", f"holds {kind}")
    refused(run("predict", "good@latest", "--file", bad), "row 3", "column 'text'", f"holds {kind}")
    tasks = _jsonl(tmp_path / "tasks.jsonl", [{**row, "task": "good"} for row in bad_rows])
    refused(run("predict", "--adapters", "good@latest", "--task-column", "task", tasks), "row 3", "column 'text'")
    assert dump(home / "registry.db") == before


def test_pairs_named_columns_and_generation_targets_are_checked_too(tmp_path):
    pair = [{"a": f"x{i}", "b": {"deep": i} if i == 4 else f"y{i}", "label": "pq"[i % 2]} for i in range(20)]
    refused(run("train", "p", "--data", _jsonl(tmp_path / "p.jsonl", pair), "--text-column", "a",
                "--text-pair-column", "b", *TINY), "row 5", "column 'b'", "an object")
    refused(run("train", "n", "--data", tmp_path / "p.jsonl", "--template", "{a} / {b} =", *TINY),
            "row 5", "column 'b'")
    gen = [{"input": f"w{i}", "output": [f"w{i}"] if i == 7 else f"w{i} w{i}"} for i in range(20)]
    refused(run("train", "g", "--data", _jsonl(tmp_path / "g.jsonl", gen), "--task-type", "generation",
                "--text-column", "input", "--target-column", "output", *TINY), "row 8", "column 'output'", "a list")


def test_numbers_in_a_csv_text_column_stay_text_and_int_labels_still_work(tmp_path):
    (tmp_path / "n.csv").write_text("text,label\n" + "".join(f"{i * 7},{i % 2}\n" for i in range(40)))
    ok("train", "nums", "--data", tmp_path / "n.csv", *TINY)
    assert Registry().get_task("nums").labels == ["0", "1"]
    out = json.loads(ok("predict", "nums@latest", "--file", tmp_path / "n.csv").stdout.splitlines()[1])
    assert out["text"] == "7"
    labels = _jsonl(tmp_path / "ints.jsonl", [{"text": row["text"], "label": i % 2} for i, row in enumerate(_labelled())])
    ok("train", "ints", "--data", labels, *TINY)


# 15 ----------------------------------------------------------------------------------------------------------------
def test_few_shot_k_larger_than_the_data_records_and_says_what_was_used(tmp_path):
    from eptctl import data
    from eptctl.core import events
    from eptctl.engine.config import TrainConfig
    from eptctl.methods import EPTConfig
    from eptctl.workflows.train import train_task

    rows = _jsonl(tmp_path / "d.jsonl", _labelled(48))
    spec = data.custom_task("fs", rows)
    loaded = data.load_task(spec, train_examples=1000)
    assert loaded.train_examples == len(loaded.train) == 38
    assert "only 5 validation rows" in loaded.notes[-1]  # the small-split note (#32); the rest is about K

    def few_shot(notes) -> tuple:
        return tuple(n for n in notes if "validation rows" not in n)

    assert few_shot(loaded.notes) == ("--train-examples 1000: the training split has 38 examples; training on 38 "
                                      "(recorded as train_examples = 38)",)
    exact = data.load_task(spec, train_examples=10)
    assert exact.train_examples == 10 and few_shot(exact.notes) == ()
    assert data.load_task(spec).train_examples is None
    capped = data.load_task(spec, train_examples=20, max_train=5)
    assert capped.train_examples == 5 and "--max-train 5" in few_shot(capped.notes)[0]
    seen: list[events.Event] = []
    reg = Registry(f"sqlite:///{tmp_path / 'r.db'}")
    record = train_task("fs", registry=reg, model="tiny-random-llama", custom=data.DataOptions(str(rows)),
                        method_cfg=EPTConfig(method="pt", prompt_length=4, max_length=32),
                        train_cfg=TrainConfig(steps=1, batch_size=8), train_examples=1000, max_eval=8,
                        on_event=seen.append).record
    assert record.summary["train_examples"] == 38 == record.summary["data_sizes"]["train"]
    assert [e.text for e in seen if isinstance(e, events.Note)] == list(loaded.notes)
    reg.close()


def test_few_shot_k_below_the_number_of_labels_is_refused_before_any_work(tmp_path):
    rows = _jsonl(tmp_path / "d.jsonl", _labelled(48))
    home = tmp_path / "home"
    Registry().close()  # the registry exists (empty): the refusals must leave it so
    before = dump(home / "registry.db")
    refused(run("train", "fs", "--data", rows, "--train-examples", "1", *TINY), "--train-examples 1",
            "2 labels", "--train-examples 2")
    refused(run("train", "tweet-sentiment", "--train-examples", "2", *TINY), "3 labels")
    assert dump(home / "registry.db") == before
    gen = _jsonl(tmp_path / "g.jsonl", [{"input": f"w{i}", "target": f"w{i} w{i}"} for i in range(20)])
    trained = json.loads(ok("train", "g", "--data", gen, "--task-type", "generation", "--text-column", "input",
                            "--train-examples", "1", *TINY, "--json").stdout)  # no labels: one example is fine
    assert Registry().resolve(trained["ref"]).summary["train_examples"] == 1


def test_eptctl_train_says_when_it_trains_on_fewer_examples_than_asked(tmp_path):
    rows = _jsonl(tmp_path / "d.jsonl", _labelled(48))
    result = ok("train", "fs", "--data", rows, "--train-examples", 1000, "--model", "tiny-random-llama",
                "--steps", "1", "--batch-size", "8", "--max-eval", "8")
    assert "note: --train-examples 1000: the training split has 38 examples; training on 38" in result.stderr
    shown = json.loads(ok("show", "fs@latest", "--json").stdout)
    assert shown["training"]["train_examples"] == 38
