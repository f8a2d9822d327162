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
