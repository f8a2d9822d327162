"""`eptctl plot` and `eptctl report` on tiny random backbones, a real SQLite registry in a temporary EPTCTL_HOME,
and the report rendered by a real headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from cli_support import ok, run, user_error

from eptctl.core.errors import EptctlError

TINY = ["--steps", "6", "--eval-every", "2", "--batch-size", "8", "--max-eval", "12"]
LLAMA = ["--model", "tiny-random-llama", *TINY]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NASTY = '<b>bold</b> & <script>alert("x")</script>'  # user text that must reach the page escaped


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("report-home")


@pytest.fixture(autouse=True)
def _env(home, monkeypatch):
    monkeypatch.setenv("EPTCTL_HOME", str(home))
    monkeypatch.delenv("EPTCTL_REGISTRY_URL", raising=False)


@pytest.fixture(scope="module")
def trained(home, tmp_path_factory):
    """alpha@1 (tiny llama), alpha@2 (tiny bert: another backbone), beta@1 (tiny llama, fused from alpha@1)."""
    from tiny_task import synthetic_texts

    os.environ["EPTCTL_HOME"] = str(home)
    folder = tmp_path_factory.mktemp("data")
    for task, seed in (("alpha", 0), ("beta", 1)):
        texts, labels = synthetic_texts(60, seed)
        rows = "".join(f"{t},{('cat', 'dog')[y]}\n" for t, y in zip(texts, labels))
        (folder / f"{task}.csv").write_text("text,label\n" + rows)
    ok("train", "alpha", "--data", folder / "alpha.csv", *LLAMA, "--description", NASTY)
    ok("train", "alpha", "--model", "tiny-random-bert", *TINY)
    ok("train", "beta", "--data", folder / "beta.csv", *LLAMA, "--init-from", "alpha@1")
    return ["alpha@1", "alpha@2", "beta@1"]


def assert_png(path: Path, min_size: int = 10_000) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > min_size, (path, len(data))


# --- plot -----------------------------------------------------------------------------------------------------------
def test_plot_one_adapter_and_a_task(trained, tmp_path, monkeypatch):
    one = tmp_path / "one.png"
    assert ok("plot", "alpha@1", "--out", one).stdout.strip() == str(one)
    assert_png(one)
    task = tmp_path / "task.png"
    ok("plot", "alpha", "--out", task)
    assert_png(task)
    assert task.read_bytes() != one.read_bytes()
    monkeypatch.chdir(tmp_path)  # without --out: a file named after the target, here
    assert ok("plot", "alpha@1").stdout.strip() == "alpha-1-curves.png"
    assert_png(tmp_path / "alpha-1-curves.png")
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temp file behind


def test_curves_come_from_the_recorded_history(trained):
    from eptctl.reporting.plots import training_curves
    from registry import Registry

    with Registry() as reg:
        curves = training_curves(reg, "alpha")
        assert [c.ref for c in curves] == trained[:2]  # a task: all its adapters, oldest first, overlaid
        first = curves[0]
        assert first.metric == "accuracy" and [s for s, _ in first.loss] == list(range(1, 7))
        assert [s for s, _ in first.validation] == [2, 4, 6] and first.best_step in (2, 4, 6)
        assert all(0 <= v <= 1 for _, v in first.validation)
        assert [c.ref for c in training_curves(reg, "alpha@2")] == ["alpha@2"]


def test_similarity_heatmap_groups_backbones_and_blanks_cross_backbone_cells(trained, tmp_path):
    from eptctl.reporting.plots import similarity_matrix
    from registry import Registry

    out = tmp_path / "similarity.png"
    assert ok("plot", "--similarity", "--out", out).stdout.strip() == str(out)
    assert_png(out)
    ok("plot", "--similarity", "--task", "alpha", "--task", "beta", "--out", tmp_path / "two.png")
    assert_png(tmp_path / "two.png")
    with Registry() as reg:
        m = similarity_matrix(reg)
    assert m.refs == ["alpha@1", "beta@1", "alpha@2"]  # grouped by backbone, in order of first appearance
    assert [size for _, size in m.groups] == [2, 1] and m.groups[1][0].startswith("tiny-random-bert")
    n = len(m.refs)
    assert all(m.values[i][i] == 1.0 for i in range(n))
    assert all(m.values[i][j] == m.values[j][i] for i in range(n) for j in range(n))
    assert m.values[0][2] is None and m.values[1][2] is None  # another backbone: no cosine
    assert -1.0 <= m.values[0][1] <= 1.0 and m.values[0][1] != 1.0


def test_plot_errors_are_one_line_exit_2_and_write_nothing(trained, tmp_path):
    good = tmp_path / "good.png"
    ok("plot", "alpha@1", "--out", good)
    before = good.read_bytes()
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    cases = [
        (("plot", "alpha@99", "--out", good), ("no version 99",)),
        (("plot", "no-such-thing", "--out", good), ("no adapter or task", "no-such-thing")),
        (("plot", "no-such-task@1", "--out", good), ("unknown task",)),
        (("plot", "alpha@1", "--out", tmp_path / "missing" / "x.png"), ("does not exist",)),
        (("plot", "alpha@1", "--out", a_file / "x.png"), ("cannot write",)),
        (("plot", "alpha@1", "--out", tmp_path), ("folder",)),
        (("plot", "alpha@1", "--out", tmp_path / "x.svg"), (".png",)),
        (("plot", "--similarity", "--task", "beta", "--out", good), ("two or more",)),
        (("plot", "--similarity", "--task", "nope", "--out", good), ("unknown task",)),
        (("plot", "--similarity", "alpha", "--out", good), ("--similarity",)),
        (("plot", "--out", good), ("--similarity",)),
        (("plot", "alpha", "--task", "alpha", "--out", good), ("--task",)),
    ]
    for args, needles in cases:
        user_error(run(*args), *needles, quiet_stdout=True)
    assert good.read_bytes() == before  # a failed plot never replaces a good file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "good.png"]


def test_adapter_without_history_and_task_without_adapters(tmp_path, monkeypatch):
    from registry import Registry, TaskRecord
    from registry_fixtures import new_adapter

    monkeypatch.setenv("EPTCTL_HOME", str(tmp_path / "bare-home"))
    with Registry() as reg:
        for name in ("bare", "empty"):
            reg.ensure_task(TaskRecord(name, "", ["a", "b"]))
        reg.register(new_adapter(task="bare"))  # registered by other code: no summary history
    out = tmp_path / "x.png"
    user_error(run("plot", "bare@1", "--out", out), "bare@1", "no recorded training history", quiet_stdout=True)
    user_error(run("plot", "bare", "--out", out), "no recorded training history", quiet_stdout=True)
    user_error(run("plot", "empty", "--out", out), "no adapters", "nothing to plot", quiet_stdout=True)
    user_error(run("plot", "--similarity", "--out", out), "two or more", quiet_stdout=True)
    assert not out.exists()


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    from eptctl.core import files as outfile

    target = tmp_path / "keep.png"
    target.write_bytes(b"old")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(outfile.os, "replace", broken_replace)
    with pytest.raises(EptctlError, match="No space left"):
        outfile.write_atomic(target, b"new")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["keep.png"]


def test_library_imports_without_cli_frameworks_or_matplotlib():
    code = ("import sys, eptctl.reporting.plots, eptctl.reporting.html, eptctl.core.files;"
            "print(json.dumps([m for m in ('typer', 'rich', 'matplotlib', 'torch') if m in sys.modules]))")
    proc = subprocess.run([sys.executable, "-c", "import json;" + code], capture_output=True, text=True)
    assert proc.returncode == 0 and json.loads(proc.stdout) == [], proc.stdout + proc.stderr


# --- report ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def report_html(trained, tmp_path_factory):
    path = tmp_path_factory.mktemp("report") / "registry.html"
    assert ok("report", path).stdout.strip() == str(path)
    return path


def test_report_is_self_contained_and_lists_every_adapter(trained, report_html):
    text = report_html.read_text(encoding="utf-8")
    assert '<table id="adapters">' in text and '<table id="tasks">' in text
    for ref in trained:
        assert f"<code>{ref}</code>" in text
    assert text.count('src="data:image/png;base64,') == 3  # curves of two tasks and the similarity heatmap
    lowered = text.lower()
    assert "<script" not in lowered and "<link" not in lowered and "http://" not in lowered
    assert "https://" not in lowered and "@import" not in lowered
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in text  # the description, escaped
    lineage = text.split('id="lineage"')[1].split("</ul>")[0]
    assert lineage.index("alpha@1") < lineage.index("beta@1")  # the child nests under its parent
    assert "init-weighted" in lineage


def test_report_errors_write_nothing(trained, tmp_path):
    user_error(run("report", tmp_path / "missing" / "r.html"), "does not exist", quiet_stdout=True)
    user_error(run("report", tmp_path / "r.png"), ".html", quiet_stdout=True)
    assert not list(tmp_path.iterdir())


class _Table(HTMLParser):
    """The cells of ``<table id="adapters">``, row by row, from an HTML text."""

    def __init__(self):
        super().__init__()
        self.rows: list[list[str]] = []
        self.depth = 0  # > 0 inside the adapters table
        self.cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table" and (self.depth or dict(attrs).get("id") == "adapters"):
            self.depth += 1
        elif self.depth and tag == "tr":
            self.rows.append([])
        elif self.depth and tag in ("td", "th"):
            self.cell = []
        elif tag == "br" and self.cell is not None:
            self.cell.append(" ")

    def handle_endtag(self, tag):
        if tag == "table" and self.depth:
            self.depth -= 1
        elif tag in ("td", "th") and self.cell is not None:
            self.rows[-1].append(" ".join("".join(self.cell).split()))
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


@pytest.fixture(scope="module")
def chromium() -> str:
    """Path of headless Chromium; resolved before the module's training fixtures so a skip costs nothing."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    reason = "headless Chromium is not installed (apt-get install chromium)"
    if os.environ.get("CI"):
        pytest.fail(reason)  # CI installs it (.ci/run): its absence there is a broken setup, not a skip
    pytest.skip(reason)


def test_report_renders_in_headless_chromium(chromium, trained, report_html, tmp_path):
    flags = ["--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}",
             "--disable-dev-shm-usage"]
    proc = subprocess.run([chromium, *flags, "--dump-dom", report_html.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = _Table()
    table.feed(proc.stdout)
    assert table.rows and table.rows[0][:3] == ["ref", "id", "task"], table.rows[:1]
    refs = [row[0].split()[0] for row in table.rows[1:]]
    assert refs == trained  # task, then version; the browser built exactly one row per adapter
    assert NASTY in table.rows[1][0]  # shown as text, not run or parsed as markup
    shot = tmp_path / "shot.png"
    proc = subprocess.run([chromium, *flags, f"--screenshot={shot}", "--window-size=1280,2000", report_html.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert_png(shot, min_size=50_000)  # a page with its tables and pictures drawn, not a blank one
