"""The GLUE/SuperGLUE catalogue on fixture files in the hubs' exact column layouts: loading, the paper's split
protocol, one templated row per task, the metrics each task reports, the data directory and its errors, named-column
templates for custom tasks, and `python -m bench paper` end to end on a tiny T5 at toy shapes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli_support import ok, run, user_error
from eptctl import data
from eptctl.core.errors import EptctlError
from eptctl.data import glue
from glue_fixtures import phrase, write_fixtures

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"small": (24, 5, 5), "large": (12, 1000, 8), "mnli": (20, 6, 8)}


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory) -> Path:
    return write_fixtures(tmp_path_factory.mktemp("glue-data"))


@pytest.fixture
def data_dir(fixtures):
    glue.set_data_dir(fixtures)
    return fixtures


def test_catalogue_names_the_13_tasks_with_the_papers_metrics():
    assert list(glue.CATALOGUE) == [
        "glue-mnli", "glue-qqp", "glue-qnli", "glue-sst2", "glue-stsb", "glue-mrpc", "glue-rte", "glue-cola",
        "superglue-multirc", "superglue-boolq", "superglue-wic", "superglue-wsc", "superglue-cb"]
    metric = {name: task.spec.metric for name, task in glue.CATALOGUE.items()}
    assert metric["glue-cola"] == "mcc" and metric["glue-stsb"] == "pearson" and metric["superglue-multirc"] == "f1"
    assert {metric[n] for n in glue.CATALOGUE if n not in ("glue-cola", "glue-stsb", "superglue-multirc")} == \
        {"accuracy"}
    for name in ("glue-mrpc", "glue-qqp"):
        assert glue.CATALOGUE[name].also == ("f1",)
    assert glue.CATALOGUE["superglue-cb"].also == ("macro_f1",)
    assert glue.CATALOGUE["glue-stsb"].spec.task_type == "regression"
    # Every catalogue task is builtin: resolvable by name, and not a name a custom task may take.
    assert data.resolve_task("superglue-cb") is glue.CATALOGUE["superglue-cb"].spec
    assert glue.select("glue") == list(glue.GLUE) and len(glue.select("all")) == 13
    assert glue.select("cb,rte") == ["glue-rte", "superglue-cb"]
    with pytest.raises(EptctlError, match="unknown benchmark task 'nope'"):
        glue.select("nope")


def test_protocol_halves_small_validation_and_holds_out_1000_train_rows_for_large():
    small = next(t for t in glue.CATALOGUE.values() if t.protocol == "small")
    given = {"train": list(range(30)), "validation": list(range(100, 111))}
    splits = glue.protocol_splits(small, given)
    assert splits["train"] == list(range(30))  # the original train, untouched
    assert (len(splits["validation"]), len(splits["test"])) == (5, 6)
    assert sorted(splits["validation"] + splits["test"]) == list(range(100, 111))
    assert splits["validation"] != list(range(100, 105))  # shuffled before halving
    assert glue.protocol_splits(small, given) == splits  # fixed seed: the same halves every time

    large = glue.CATALOGUE["glue-qnli"]
    given = {"train": list(range(1500)), "validation": list(range(5000, 5010))}
    splits = glue.protocol_splits(large, given)
    assert len(splits["validation"]) == 1000 and len(splits["train"]) == 500
    assert sorted(splits["validation"] + splits["train"]) == list(range(1500))
    assert sorted(splits["test"]) == list(range(5000, 5010)) and splits["test"] != list(range(5000, 5010))
    with pytest.raises(EptctlError, match="more than 1000 training rows"):
        glue.protocol_splits(large, {"train": list(range(1000)), "validation": [1]})

    mnli = glue.CATALOGUE["glue-mnli"]
    splits = glue.protocol_splits(mnli, {"train": [1], "validation_mismatched": [2], "validation_matched": [3]})
    assert splits == {"train": [1], "validation": [2], "test": [3]}
    # Evaluation splits taken whole are shuffled, so --max-eval N keeps a sample, not the file's first rows.
    splits = glue.protocol_splits(mnli, {"train": [1], "validation_mismatched": list(range(20)),
                                         "validation_matched": list(range(30))})
    assert sorted(splits["test"]) == list(range(30)) and splits["test"][:5] != [0, 1, 2, 3, 4]


@pytest.mark.parametrize("name", list(glue.CATALOGUE))
def test_each_task_loads_with_the_protocols_sizes_and_disjoint_splits(data_dir, name):
    task = glue.CATALOGUE[name]
    loaded = data.load_task(task.spec)
    assert tuple(loaded.sizes.values()) == SIZES[task.protocol]
    prompts = {split: {task.spec.prompt(e) for e in loaded.split(split)} for split in data.SPLITS}
    assert sum(len(p) for p in prompts.values()) == sum(loaded.sizes.values())  # no row twice, no row in two splits
    if task.spec.task_type == "classification":
        assert set(loaded.label_counts("train").values()) != {0}
    again = data.load_task(task.spec)
    assert again.fingerprint == loaded.fingerprint  # deterministic


def _row(loaded, split: str, needle: str):
    return next(e for e in loaded.split(split) if needle in loaded.spec.prompt(e))


# One row per task, the template's output written out by hand (the texts come from glue_fixtures.phrase).
EXPECTED = {
    "glue-mnli": ("number 0.", f"premise: {phrase(0)} hypothesis: {phrase(1000, 4)}", "entailment"),
    "glue-qqp": ("number 1012.", f"question1: {phrase(1012)}? question2: {phrase(2012, 4)}?", "not_duplicate"),
    "glue-qnli": ("number 1013.", f"question: {phrase(1013)}? sentence: {phrase(2013, 4)}", "not_entailment"),
    "glue-sst2": ("number 1012.", f"sentence: {phrase(1012)}", "negative"),
    "glue-stsb": ("number 3.", f"sentence1: {phrase(3)} sentence2: {phrase(1003, 4)}", 0.6),
    "glue-mrpc": ("number 1.", f"sentence1: {phrase(1)} sentence2: {phrase(1001, 4)}", "equivalent"),
    "glue-rte": ("number 0.", f"sentence1: {phrase(0)} sentence2: {phrase(1000, 4)}", "entailment"),
    "glue-cola": ("number 5.", f"sentence: {phrase(5)}", "acceptable"),
    "superglue-multirc": ("what is 2?", f"question: what is 2? answer: quiet paragraph: Sent 1: {phrase(2)} "
                                        f"Sent 2: {phrase(1002, 4)}", "False"),
    "superglue-boolq": ("is it bright", f"question: is it bright passage: {phrase(1)} {phrase(1001, 4)}", "True"),
    "superglue-wic": ("again 0.", f"sentence1: {phrase(0)} sentence2: the river again 0. word: river", "False"),
    "superglue-wsc": ("himself 3 ", "text: * Mark * told Pete many lies about himself 3 times , which # he # later "
                                    "regretted .", "True"),
    "superglue-cb": ("number 4.", f"premise: {phrase(4)} hypothesis: {phrase(1004, 4)}", "contradiction"),
}


@pytest.mark.parametrize("name", list(glue.CATALOGUE))
def test_template_output_for_one_row_of_each_task(data_dir, name):
    needle, prompt, answer = EXPECTED[name]
    loaded = data.load_task(glue.CATALOGUE[name].spec)
    split = "test" if glue.CATALOGUE[name].protocol == "large" else "train"
    example = _row(loaded, split, needle)
    assert loaded.spec.prompt(example) == prompt
    if loaded.spec.task_type == "regression":
        assert example.value == pytest.approx(answer)
    else:
        assert loaded.spec.labels[example.label] == answer


def test_metrics_match_values_computed_by_hand():
    from eptctl.engine.metrics import classification_metrics, regression_metrics

    # CoLA: Matthews correlation (tp*tn - fp*fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)), acceptable = class 1.
    gold = [1, 1, 1, 1, 0, 0, 0, 1, 0, 1]
    pred = [1, 1, 0, 1, 0, 1, 0, 1, 1, 1]
    tp, tn, fp, fn = 5, 2, 2, 1
    mcc = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert classification_metrics(pred, gold, 2)["mcc"] == pytest.approx(mcc)
    # MultiRC: F1 over all answer options (F1a), True = class 1: 2 tp / (2 tp + fp + fn).
    answers_gold = [1, 0, 0, 1, 1, 0, 1, 0]
    answers_pred = [1, 1, 0, 0, 1, 0, 1, 1]
    tp, fp, fn = 3, 2, 1
    scores = classification_metrics(answers_pred, answers_gold, 2)
    assert scores["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn)) and scores["accuracy"] == pytest.approx(5 / 8)
    # CB: macro-F1 over its three classes, each class's F1 by hand.
    gold = [0, 0, 1, 1, 2, 2, 0]
    pred = [0, 1, 1, 1, 2, 0, 0]
    f1_by_class = [2 * 2 / (2 * 2 + 1 + 1), 2 * 2 / (2 * 2 + 1 + 0), 2 * 1 / (2 * 1 + 0 + 1)]
    assert classification_metrics(pred, gold, 3)["macro_f1"] == pytest.approx(sum(f1_by_class) / 3)
    # STS-B: Pearson correlation.
    x, y = [1.0, 2.0, 3.5, 4.0], [1.2, 1.8, 3.0, 4.6]
    mx, my = sum(x) / 4, sum(y) / 4
    r = sum((a - mx) * (b - my) for a, b in zip(x, y)) / math.sqrt(
        sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y))
    assert regression_metrics(x, y, fallback=2.5)["pearson"] == pytest.approx(r)


def test_missing_data_is_one_line_with_the_path_and_the_fetch_command(eptctl_home, tmp_path):
    empty = tmp_path / "nothing-here"
    result = run("train", "glue-rte", "--model", "tiny-random-t5", "--steps", "1", "--data-dir", empty)
    line = user_error(result, str(empty / "glue" / "rte"), "eptctl fetch glue-rte", notes=True)
    assert "train.parquet" in line
    # The default directory and the environment variable are honoured in that order.
    glue.set_data_dir(None)
    os.environ[glue.DATA_DIR_VARIABLE] = str(empty)
    try:
        assert glue.data_dir() == empty
    finally:
        del os.environ[glue.DATA_DIR_VARIABLE]
    assert glue.data_dir() == eptctl_home / "data"
    assert not (eptctl_home / "registry.db").exists() or "glue-rte" not in ok("list", "--json").stdout


def test_fetch_with_the_hub_offline_fails_fast_and_writes_nothing(eptctl_home, tmp_path):
    result = run("fetch", "rte", "--data-dir", tmp_path / "d")
    user_error(result, "nyu-mll/glue", "offline", notes=True)
    assert not (tmp_path / "d" / "glue" / "rte").exists() or not any((tmp_path / "d" / "glue" / "rte").iterdir())
    user_error(run("fetch", "mnli2"), "unknown benchmark task 'mnli2'")


def test_tasks_lists_the_catalogue_with_data_availability(eptctl_home, fixtures, tmp_path):
    rows = json.loads(ok("tasks", "--json", "--data-dir", tmp_path / "empty").stdout)
    bench = {r["name"]: r["data"] for r in rows if r["kind"] == "benchmark"}
    assert len(bench) == 13 and set(bench.values()) == {"missing"}
    rows = json.loads(ok("tasks", "--json", "--data-dir", fixtures).stdout)
    assert {r["data"] for r in rows if r["kind"] == "benchmark"} == {"here"}
    builtin = {r["name"]: r["data"] for r in rows if r["kind"] == "builtin"}
    assert builtin["rt-polarity"] == "here"


def test_train_and_eval_a_benchmark_task_from_the_data_dir(eptctl_home, fixtures):
    trained = json.loads(ok("train", "glue-cola", "--model", "tiny-random-t5", "--method", "ept", "--steps", "3",
                            "--data-dir", fixtures, "--json").stdout)
    assert "mcc" in trained["metrics"]["test"]
    again = json.loads(ok("eval", trained["ref"], "--data-dir", fixtures, "--json", "--no-store").stdout)
    assert again["metric"] == "mcc"
    assert again["metrics"]["mcc"] == pytest.approx(trained["metrics"]["test"]["mcc"], abs=1e-6)
    three = json.loads(ok("train", "superglue-wic", "--model", "tiny-random-t5", "--steps", "2",
                          "--data-dir", fixtures, "--json").stdout)
    # Three input columns do not fit predict's one or two texts: a clear error, not a silently wrong prompt.
    user_error(run("predict", three["ref"], "a", "b"), "reads 3 columns (sentence1, sentence2, word)", notes=True)


def test_custom_task_template_names_its_columns(eptctl_home, tmp_path):
    csv = tmp_path / "nli.csv"
    rows = ["premise,hypothesis,label"] + [f"{phrase(i)},{phrase(i + 50, 3)},{('yes', 'no')[i % 2]}"
                                           for i in range(40)]
    csv.write_text("\n".join(rows) + "\n")
    template = "premise: {premise} hypothesis: {hypothesis} entailed?"
    spec = data.custom_task("mynli", csv, template=template)
    assert spec.input_columns == ("premise", "hypothesis") and spec.uses_text_pair
    example = data.load_task(spec).train[0]
    assert spec.prompt(example) == f"premise: {example.text} hypothesis: {example.text_pair} entailed?"
    trained = json.loads(ok("train", "mynli", "--data", csv, "--template", template, "--model", "tiny-random-t5",
                            "--steps", "2", "--json").stdout)
    evaluated = json.loads(ok("eval", trained["ref"], "--data", csv, "--json", "--no-store").stdout)
    assert evaluated["examples"] == 40
    # predict --file reads the task's own columns from the file.
    lines = ok("predict", trained["ref"], "--file", csv).stdout.splitlines()
    assert len(lines) == 40 and json.loads(lines[0])["label"] in ("yes", "no")
    # A column the file lacks is named in a one-line error.
    user_error(run("train", "bad", "--data", csv, "--template", "{premise} / {claim}", "--model", "tiny-random-t5"),
               "'claim'", notes=True)
    user_error(run("train", "bad", "--data", csv, "--template", "{premise} / {hypothesis}", "--text-pair-column",
                   "hypothesis", "--model", "tiny-random-t5"), "names its input columns", notes=True)


def test_truncation_shortens_the_longest_column_never_the_template():
    from eptctl import backbones
    from eptctl.engine.encoding import encode_examples

    backbone = backbones.load("tiny-random-t5")
    spec = glue.CATALOGUE["superglue-multirc"].spec
    long_paragraph = " ".join(["paragraph words go on"] * 80)
    example = data.Example(text="what is it?", label=1, text_pair="an answer",
                           fields=(("paragraph", long_paragraph),))
    answers = backbone.encode_answers(spec.verbalizer)
    (encoded,) = encode_examples(backbone, spec, [example], answers, max_length=48)
    assert encoded.truncated and len(encoded.input_ids) <= 48
    text = backbone.tokenizer.decode(encoded.input_ids, skip_special_tokens=True)
    # The question, the answer and every word of the template stay; only the paragraph lost its tail.
    assert text.startswith("question: what is it? answer: an answer paragraph: p")
    assert len(text) < len(spec.prompt(example)) / 4


def test_bench_paper_table_has_the_papers_layout_and_published_averages():
    from bench.__main__ import markdown
    from bench.paper import table

    rows = table([], ["pt", "dept", "ept"], glue.select("all"))
    header = markdown(rows).splitlines()[0]
    for column in ("MNLI", "QQP", "QNLI", "SST-2", "STS-B", "MRPC", "RTE", "CoLA", "GLUE avg", "MultiRC", "BoolQ",
                   "WiC", "WSC", "CB", "SuperGLUE avg", "params"):
        assert f"| {column} |" in header
    assert [r["method"] for r in rows] == ["eptctl pt", "eptctl dept", "eptctl ept", "PT (l=100)", "DePT (s=60, r=30)"]
    assert rows[-1]["GLUE avg"] == "85.9" and rows[-1]["SuperGLUE avg"] == "76.5"  # the published DePT averages


def test_bench_paper_runs_end_to_end_on_fixtures_and_resumes(fixtures, tmp_path, monkeypatch, capsys):
    """The harness on two GLUE tasks and a SuperGLUE one at toy shapes (one step, two eval rows, batch 2, l = 4): cells,
    table, JSON, resume, other settings as other cells. Run in-process: three interpreter starts cost more than the
    cells; the real entry point is exercised by the no-data test below, the paper's sizes by ``python -m bench``."""
    from bench.__main__ import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EPTCTL_HOME", str(tmp_path / "home"))
    argv = ["paper", "--model", "tiny-random-t5", "--tasks", "cola,stsb,multirc", "--steps", "1", "--max-eval", "2",
            "--batch-size", "2", "--prompt-length", "4", "--short-length", "2", "--data-dir", str(fixtures)]

    def bench(*extra: str) -> tuple[str, str]:
        assert main([*argv, *extra]) == 0
        out = capsys.readouterr()
        return out.out, out.err

    first, _ = bench()
    header = next(line for line in first.splitlines() if line.startswith("| method"))
    for column in ("CoLA", "STS-B", "GLUE avg", "MultiRC", "SuperGLUE avg", "params"):
        assert f"| {column} |" in header
    rows = [line for line in first.splitlines() if line.startswith("| ")]
    assert [r.split("|")[1].strip() for r in rows[1:]] == [
        "eptctl pt", "eptctl dept", "eptctl ept", "PT (l=100)", "DePT (s=60, r=30)"]
    dept = next(p for p in glue.PUBLISHED if p.method.startswith("DePT"))  # a subset averages the published rows too
    assert f"| {dept.scores['superglue-multirc']:.1f} |" in rows[-1]
    report = json.loads((tmp_path / ".bench-out" / "paper.json").read_text())
    assert len(report["cells"]) == 9 and {c["metric"] for c in report["cells"]} == {"mcc", "pearson", "f1"}
    assert report["setting"]["batch_size"] == 2 and report["setting"]["prompt_length"] == 4
    second, log = bench()
    assert " seed 0: " not in second  # every cell was kept: nothing retrained
    assert "kept 9 finished cell(s)" in log
    assert [line for line in second.splitlines() if line.startswith("| eptctl")] == rows[1:4]
    # Other settings are other cells: they train, and the table shows only theirs.
    argv[4] = "rte"
    third, _ = bench("--max-eval", "3", "--method", "ept")
    assert "ept glue-rte seed 0: " in third
    report = json.loads((tmp_path / ".bench-out" / "paper.json").read_text())
    assert len(report["cells"]) == 1 and report["cells"][0]["setting"].endswith("|1|3|b2|l4|s2")


def test_bench_paper_without_data_says_where_and_how(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EPTCTL_HOME": str(tmp_path / "home")}
    result = subprocess.run([sys.executable, "-m", "bench", "paper", "--model", "tiny-random-t5", "--tasks", "rte",
                             "--data-dir", str(tmp_path / "none")], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "eptctl fetch glue-rte" in result.stderr and "Traceback" not in result.stderr


def test_data_directory_mistakes_are_named(tmp_path):
    import shutil

    root = tmp_path / "d"
    flat = root / "rte"  # the benchmark level forgotten
    flat.mkdir(parents=True)
    with pytest.raises(EptctlError, match="needs a 'glue' level"):
        glue.split_files(glue.CATALOGUE["glue-rte"], root)
    folder = root / "glue" / "rte"
    folder.mkdir(parents=True)
    (folder / "train.csv").write_text("sentence1,sentence2,label\n")
    with pytest.raises(EptctlError, match="it holds train.csv"):
        glue.split_files(glue.CATALOGUE["glue-rte"], root)
    (folder / "train.jsonl").write_text("")
    (folder / "train.parquet").write_text("")
    (folder / "validation.jsonl").write_text("")
    with pytest.raises(EptctlError, match="holds the train split twice: train.parquet, train.jsonl"):
        glue.split_files(glue.CATALOGUE["glue-rte"], root)
    assert not glue.available(glue.CATALOGUE["glue-rte"], root)
    shutil.rmtree(root)


def _rte_with(tmp_path, rows) -> Path:
    folder = tmp_path / "glue" / "rte"
    folder.mkdir(parents=True)
    good = [{"sentence1": phrase(i), "sentence2": phrase(i + 9), "label": i % 2, "idx": i} for i in range(6)]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in good + rows))
    (folder / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in good))
    return tmp_path


def test_benchmark_labels_are_checked_against_the_hubs(tmp_path):
    root = _rte_with(tmp_path / "a", [{"sentence1": "x", "sentence2": "y", "label": 5, "idx": 9}])
    with pytest.raises(EptctlError, match="label 5 in row 7") as err:
        glue.read_splits(glue.CATALOGUE["glue-rte"], root)
    assert "0=entailment, 1=not_entailment" in err.value.hint
    root = _rte_with(tmp_path / "b", [{"sentence1": "x", "sentence2": "y", "label": None, "idx": 9}])
    with pytest.raises(EptctlError, match="row 7 of .* has no label"):
        glue.read_splits(glue.CATALOGUE["glue-rte"], root)


def test_template_options_need_data_and_never_name_the_label(eptctl_home, tmp_path, data_dir):
    user_error(run("train", "glue-rte", "--template", "x: {sentence1}", "--model", "tiny-random-t5"),
               "--template describe a custom task's data file and need --data")
    user_error(run("train", "superglue-cb", "--text-column", "premise", "--model", "tiny-random-t5"),
               "--text-column")
    csv = tmp_path / "nli.csv"
    csv.write_text("premise,hypothesis,label\n" + "".join(f"{phrase(i)},{phrase(i + 9)},{i % 2}\n" for i in range(30)))
    user_error(run("train", "leak", "--data", csv, "--template", "p: {premise} h: {hypothesis} l: {label}",
                   "--model", "tiny-random-t5"), "names the label column 'label'", notes=True)
    ok("train", "pairs", "--data", csv, "--template", "p: {premise} h: {hypothesis}", "--model", "tiny-random-t5",
       "--steps", "1")
    user_error(run("train", "pairs", "--data", csv, "--template", "P: {premise} H: {hypothesis}", "--model",
                   "tiny-random-t5", "--steps", "1"), "another template makes another task", notes=True)


def test_predict_from_a_file_on_a_three_column_task_says_so(eptctl_home, data_dir, tmp_path):
    trained = json.loads(ok("train", "superglue-wic", "--model", "tiny-random-t5", "--steps", "1", "--json").stdout)
    rows = tmp_path / "rows.csv"
    rows.write_text("sentence1,sentence2,word\na b,c d,b\n")
    user_error(run("predict", trained["ref"], "--file", rows), "reads 3 columns", notes=True)


def test_fetch_suggests_a_close_name(eptctl_home):
    user_error(run("fetch", "glue-rtee"), "did you mean 'glue-rte'?")


def test_rows_with_an_empty_input_are_dropped_as_the_hubs_qqp_needs(tmp_path):
    root = _rte_with(tmp_path, [{"sentence1": "x", "sentence2": "", "label": 0, "idx": 9}])
    splits = glue.read_splits(glue.CATALOGUE["glue-rte"], root)
    assert len(splits["train"]) == 6  # the seventh row has no second sentence


def test_eval_from_a_file_refuses_tasks_that_rewrite_their_rows(eptctl_home, data_dir, fixtures):
    trained = json.loads(ok("train", "superglue-wsc", "--model", "tiny-random-t5", "--steps", "1", "--json").stdout)
    user_error(run("eval", trained["ref"], "--data", fixtures / "super_glue" / "wsc.fixed" / "validation.jsonl"),
               "rewrites its rows", notes=True)


def test_http_refuses_a_mismatched_input_alone_not_its_batch(eptctl_home, data_dir, fixtures, eptctl_server):
    from concurrent.futures import ThreadPoolExecutor

    wic = json.loads(ok("train", "superglue-wic", "--model", "tiny-random-t5", "--steps", "1", "--json").stdout)
    cb = json.loads(ok("train", "superglue-cb", "--model", "tiny-random-t5", "--steps", "1", "--json").stdout)
    server = eptctl_server(eptctl_home, "--max-wait-ms", "200", model="tiny-random-t5")
    bad = {"adapter": wic["ref"], "inputs": [{"text": "a", "text_pair": "b"}]}
    good = {"adapter": cb["ref"], "inputs": [{"text": "a premise", "text_pair": "a hypothesis"}]}
    with ThreadPoolExecutor(4) as pool:  # sent together, so a batcher would put them in one batch
        answers = list(pool.map(server.post, [bad, good, bad, good]))
    assert [a.status_code for a in answers] == [422, 200, 422, 200], [a.text for a in answers]
    assert "reads 3 columns" in answers[0].json()["error"]
    assert server.stop() == 0
