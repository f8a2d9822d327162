"""The paper's benchmark: the 13 GLUE and SuperGLUE tasks, their templates, metrics and split protocol.

The data is never downloaded behind the user's back. Each task reads the files of its Hugging Face Hub dataset
(``nyu-mll/glue``, ``aps/super_glue``) from a local folder, the data directory (``--data-dir``, else
``$EPTCTL_DATA_DIR``, else ``$EPTCTL_HOME/data``), laid out as the hub holds them::

    DATA_DIR/glue/mnli/train.parquet                    (or train.jsonl, or shards train-00000-of-00002.parquet)
    DATA_DIR/glue/mnli/validation_matched.parquet
    DATA_DIR/super_glue/cb/validation.jsonl

``eptctl fetch TASK`` writes that layout from the hub where the network allows.

Split protocol (DePT, Shi & Lipani 2023, ``src/tasks.py``; the same as ATTEMPT and Compacter before it): the hub's
test splits have no labels, so

- ``small`` (CoLA, RTE, MRPC, STS-B and the five SuperGLUE tasks): the original train split trains; the original
  validation split, shuffled with a fixed seed, is halved: the first half validates, the second half tests;
- ``large`` (QQP, QNLI, SST-2): 1,000 shuffled training rows are held out for validation, the rest trains, and the
  original validation split tests;
- ``mnli``: train trains, ``validation_mismatched`` validates, ``validation_matched`` tests.

DePT shuffles with ``torch.randperm`` seeded 42; eptctl shuffles with Python's ``random`` seeded ``SPLIT_SEED`` (the
data layer does not import torch), so the rule and the sizes are DePT's but the rows in each half differ.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from eptctl.core.errors import EptctlError
from eptctl.core.home import eptctl_home
from eptctl.data.rows import RawRow
from eptctl.data.spec import TaskSpec
from eptctl.data.task_types import DEFAULT_TASK_TYPE
from eptctl.data.splits import SPLIT_SEED, shuffled

DATA_DIR_VARIABLE = "EPTCTL_DATA_DIR"
HOLD_OUT = 1000  # rows of train that validate a large task (DePT)
READABLE_SUFFIXES = (".parquet", ".jsonl", ".json")
HUB_NAMES = {"glue": "nyu-mll/glue", "super_glue": "aps/super_glue"}

_data_dir_override: Path | None = None


def set_data_dir(path: str | Path | None) -> None:
    """Use ``path`` as the data directory in this process (the CLI's ``--data-dir``); None: back to the default."""
    global _data_dir_override
    _data_dir_override = None if path is None else Path(path).expanduser()


def data_dir() -> Path:
    """The data directory: ``set_data_dir``'s, else ``$EPTCTL_DATA_DIR``, else ``$EPTCTL_HOME/data``."""
    if _data_dir_override is not None:
        return _data_dir_override
    env = os.environ.get(DATA_DIR_VARIABLE)
    return Path(env).expanduser() if env else eptctl_home() / "data"


@dataclass(frozen=True)
class PublishedRow:
    """One method's published T5-Base scores (percent; CoLA: Matthews correlation x 100), task name -> score."""

    method: str
    params: str
    scores: dict
    source: str


@dataclass(frozen=True)
class BenchmarkTask:
    """A GLUE or SuperGLUE task: its hub dataset and config, input columns, label names as the hub's ClassLabel has
    them (so both parquet files and JSON Lines with integer labels map onto them), template, metric and split rule.
    ``prepare`` rewrites a row's input columns before templating (WSC marks its two spans); ``also`` names metrics
    reported beside the primary one."""

    spec: TaskSpec
    benchmark: str  # "glue" or "super_glue": the folder under the data directory
    config: str  # the hub config: the folder under the benchmark's
    protocol: str
    label_column: str = "label"
    also: tuple[str, ...] = ()
    prepare: Callable[[dict], dict] | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def columns(self) -> tuple[str, ...]:
        """The input columns, in input order (the spec's)."""
        return self.spec.input_columns

    @property
    def hub_name(self) -> str:
        return HUB_NAMES[self.benchmark]

    @property
    def hub_splits(self) -> tuple[str, ...]:
        """The hub splits the protocol reads."""
        return ("train", "validation_mismatched", "validation_matched") if self.protocol == "mnli" \
            else ("train", "validation")

    def folder(self, root: Path | None = None) -> Path:
        return (root or data_dir()) / self.benchmark / self.config

    @property
    def fetch_command(self) -> str:
        return f"eptctl fetch {self.name}"


def _mark_span(words: list[str], index: int, text: str, mark: str) -> None:
    """Surrounds the ``len(text.split())`` words at ``index`` with ``mark`` (T5's WSC input), in place."""
    n = max(1, len(text.split()))
    if not 0 <= index <= len(words) - n:
        raise EptctlError(f"span '{text}' at word {index} lies outside its text",
                          hint="check span1_index/span2_index (0-based word positions)")
    words[index:index + n] = [f"{mark} {' '.join(words[index:index + n])} {mark}"]


def wsc_marked(row: dict) -> dict:
    """WSC's text with the candidate referent (span 1) between ``*`` and the pronoun (span 2) between ``#``, as T5
    and DePT feed it (Raffel et al. 2020, appendix; DePT ``src/tasks.py``). Word indices are 0-based."""
    words = str(row["text"]).split()
    i1, i2 = int(row["span1_index"]), int(row["span2_index"])
    # Mark the later span first, so the earlier one's index still points at its words.
    for index, text, mark in sorted([(i1, row["span1_text"], "*"), (i2, row["span2_text"], "#")], reverse=True):
        _mark_span(words, index, str(text), mark)
    return {**row, "text": " ".join(words)}


_TAG = re.compile(r"<[^>]+>")


def multirc_plain(row: dict) -> dict:
    """MultiRC's paragraph without its HTML markup (``<b>Sent 1: </b>...<br>``), as DePT strips it."""
    return {**row, "paragraph": " ".join(_TAG.sub(" ", str(row["paragraph"])).split())}


def _task(name, benchmark, config, description, columns, template, labels, verbalizer, protocol, *, metric="",
          task_type=DEFAULT_TASK_TYPE, value_range=None, also=(), prepare=None) -> BenchmarkTask:
    source = {"kind": "benchmark", "benchmark": benchmark, "config": config}
    spec = TaskSpec(name, description, labels, verbalizer, template, metric=metric, source=source,
                    task_type=task_type, input_columns=columns, value_range=value_range)
    return BenchmarkTask(spec, benchmark, config, protocol, also=also, prepare=prepare)


_NLI3 = ("entailment", "neutral", "contradiction")
_NLI2 = ("entailment", "not_entailment")
_BOOL = ("False", "True")
_BOOL_WORDS = ("false", "true")

# Templates follow DePT's text-to-text format (field names as prefixes, no task prefix); answers are T5's words for
# the labels (DePT's targets are the label indices as strings: "0", "1").
CATALOGUE: dict[str, BenchmarkTask] = {
    task.name: task
    for task in (
        _task("glue-mnli", "glue", "mnli", "MultiNLI: does the premise entail, contradict or leave open the hypothesis?",
              ("premise", "hypothesis"), "premise: {premise} hypothesis: {hypothesis}", _NLI3, _NLI3, "mnli"),
        _task("glue-qqp", "glue", "qqp", "Quora Question Pairs: are the two questions duplicates?",
              ("question1", "question2"), "question1: {question1} question2: {question2}",
              ("not_duplicate", "duplicate"), ("not duplicate", "duplicate"), "large", also=("f1",)),
        _task("glue-qnli", "glue", "qnli", "Question NLI: does the sentence answer the question?",
              ("question", "sentence"), "question: {question} sentence: {sentence}", _NLI2,
              ("entailment", "not entailment"), "large"),
        _task("glue-sst2", "glue", "sst2", "Stanford Sentiment Treebank: is the sentence negative or positive?",
              ("sentence",), "sentence: {sentence}", ("negative", "positive"), ("negative", "positive"), "large"),
        _task("glue-stsb", "glue", "stsb", "STS Benchmark: how similar are the two sentences, from 0 to 5?",
              ("sentence1", "sentence2"), "sentence1: {sentence1} sentence2: {sentence2}", (), (), "small",
              task_type="regression", value_range=(0.0, 5.0), also=("spearman",)),
        _task("glue-mrpc", "glue", "mrpc", "Microsoft Research Paraphrase Corpus: do the sentences say the same?",
              ("sentence1", "sentence2"), "sentence1: {sentence1} sentence2: {sentence2}",
              ("not_equivalent", "equivalent"), ("not equivalent", "equivalent"), "small", also=("f1",)),
        _task("glue-rte", "glue", "rte", "Recognising Textual Entailment: does the first sentence entail the second?",
              ("sentence1", "sentence2"), "sentence1: {sentence1} sentence2: {sentence2}", _NLI2,
              ("entailment", "not entailment"), "small"),
        _task("glue-cola", "glue", "cola", "Corpus of Linguistic Acceptability: is the sentence grammatical?",
              ("sentence",), "sentence: {sentence}", ("unacceptable", "acceptable"), ("unacceptable", "acceptable"),
              "small", metric="mcc", also=("accuracy",)),
        _task("superglue-multirc", "super_glue", "multirc",
              "MultiRC: is the answer to the question about the paragraph correct?",
              ("question", "answer", "paragraph"), "question: {question} answer: {answer} paragraph: {paragraph}",
              _BOOL, _BOOL_WORDS, "small", metric="f1", also=("accuracy",), prepare=multirc_plain),
        _task("superglue-boolq", "super_glue", "boolq", "BoolQ: the yes/no answer to a question about a passage",
              ("question", "passage"), "question: {question} passage: {passage}", _BOOL, _BOOL_WORDS, "small"),
        _task("superglue-wic", "super_glue", "wic", "Words in Context: is the word used in the same sense in both?",
              ("sentence1", "sentence2", "word"), "sentence1: {sentence1} sentence2: {sentence2} word: {word}",
              _BOOL, _BOOL_WORDS, "small"),
        _task("superglue-wsc", "super_glue", "wsc.fixed",
              "Winograd Schema Challenge: does the pronoun (#...#) refer to the marked phrase (*...*)?",
              ("text",), "text: {text}", _BOOL, _BOOL_WORDS, "small", prepare=wsc_marked),
        _task("superglue-cb", "super_glue", "cb", "CommitmentBank: is the hypothesis entailed, contradicted or neither?",
              ("premise", "hypothesis"), "premise: {premise} hypothesis: {hypothesis}",
              ("entailment", "contradiction", "neutral"), ("entailment", "contradiction", "neutral"), "small",
              also=("macro_f1",)),
    )
}
GLUE = tuple(name for name, task in CATALOGUE.items() if task.benchmark == "glue")
SUPERGLUE = tuple(name for name, task in CATALOGUE.items() if task.benchmark == "super_glue")

# Published T5-Base rows for the reproduction table. DePT's row matches the test results of its released
# checkpoints (github.com/ZhengxiangShi/DePT, checkpoints/*/test_results.json). PT's row is DePT's Table 1 report of
# Lester et al. (2021) as two independent readings agree; the three SuperGLUE cells they disagree on are left out.
PUBLISHED = (
    PublishedRow("PT (l=100)", "76.8K", {
        "glue-mnli": 81.3, "glue-qqp": 89.7, "glue-qnli": 92.8, "glue-sst2": 90.9, "glue-stsb": 89.5,
        "glue-mrpc": 68.1, "glue-rte": 54.7, "glue-cola": 10.6, "superglue-wsc": 51.9, "superglue-cb": 67.9,
    }, "DePT (Shi & Lipani 2023), Table 1"),
    PublishedRow("DePT (s=60, r=30)", "76.8K", {
        "glue-mnli": 85.0, "glue-qqp": 90.4, "glue-qnli": 93.2, "glue-sst2": 94.2, "glue-stsb": 90.8,
        "glue-mrpc": 90.7, "glue-rte": 79.1, "glue-cola": 63.8, "superglue-multirc": 74.3, "superglue-boolq": 79.3,
        "superglue-wic": 68.7, "superglue-wsc": 67.3, "superglue-cb": 92.9,
    }, "DePT Table 1 = its released checkpoints' test_results.json"),
)


def select(names: str) -> list[str]:
    """``all``, ``glue``, ``superglue`` or a comma-separated list of catalogue names (``cb`` and ``glue-cb`` style
    short names are accepted) -> catalogue names in catalogue order. ``EptctlError`` for an unknown name."""
    wanted: list[str] = []
    for part in (p.strip() for p in names.split(",") if p.strip()):
        group = {"all": tuple(CATALOGUE), "glue": GLUE, "superglue": SUPERGLUE, "super_glue": SUPERGLUE}.get(part)
        if group is None:
            matches = [n for n in CATALOGUE if n == part or n.split("-", 1)[1] == part]
            if not matches:
                close = difflib.get_close_matches(part, [*CATALOGUE, *(n.split("-", 1)[1] for n in CATALOGUE)], n=1)
                raise EptctlError(f"unknown benchmark task '{part}'" + (f"; did you mean '{close[0]}'?" if close
                                                                        else ""),
                                  hint=f"use all, glue, superglue or names from: {', '.join(CATALOGUE)}")
            group = tuple(matches)
        wanted += [n for n in group if n not in wanted]
    if not wanted:
        raise EptctlError("no benchmark task selected", hint="name tasks, or all, glue or superglue (e.g. rte,cb)")
    return [n for n in CATALOGUE if n in wanted]


def split_files(task: BenchmarkTask, root: Path | None = None) -> dict[str, list[Path]]:
    """The files of each hub split the protocol reads, under ``root`` (default: the data directory).

    A split is ``SPLIT.parquet``, ``SPLIT.jsonl`` or ``SPLIT.json``, or parquet shards ``SPLIT-*.parquet`` (the
    hub's own layout) or ``SPLIT/*.parquet``. Raises ``EptctlError`` naming the expected path, what the folder holds
    instead, and the command that fetches the data when a split is missing, or when a split is there twice.
    """
    folder = task.folder(root)
    found: dict[str, list[Path]] = {}
    missing = []
    for split in task.hub_splits:
        files = _files_of(folder, split)
        if files:
            found[split] = files
        else:
            missing.append(split)
    if missing:
        raise EptctlError(
            f"task '{task.name}' has no data in {folder} (missing: {', '.join(f'{s}.parquet' for s in missing)}; "
            f".jsonl, .json or the hub's shards also do){_what_is_there(task, folder)}",
            hint=f"where the network allows, run `{task.fetch_command}` (it writes there), or put the files of "
                 f"{task.hub_name} ({task.config}) there and point --data-dir or ${DATA_DIR_VARIABLE} at the root",
        )
    return found


def _what_is_there(task: BenchmarkTask, folder: Path) -> str:
    """A clause for the missing-data error: the files the folder holds instead, or a folder one level off."""
    if folder.is_dir():
        names = sorted(p.name for p in folder.iterdir())[:6]
        return f"; it holds {', '.join(names)}" if names else "; it is empty"
    flat = folder.parent.parent / task.config
    if flat.is_dir():
        return f"; {flat} exists: the layout needs a '{task.benchmark}' level ({folder})"
    return ""


def _files_of(folder: Path, split: str) -> list[Path]:
    if not folder.is_dir():
        return []
    singles = [folder / f"{split}{suffix}" for suffix in READABLE_SUFFIXES if (folder / f"{split}{suffix}").is_file()]
    shards = sorted(folder.glob(f"{split}-*.parquet"))
    if not shards and (folder / split).is_dir():
        shards = sorted((folder / split).glob("*.parquet"))
    forms = [*singles, *([shards[0]] if shards else [])]
    if len(forms) > 1:
        raise EptctlError(f"{folder} holds the {split} split twice: {', '.join(f.name for f in forms)}",
                          hint="keep one of them")
    return singles or shards


def available(task: BenchmarkTask, root: Path | None = None) -> bool:
    """Whether every split the task reads is present under ``root`` (default: the data directory)."""
    folder = task.folder(root)
    try:
        return all(_files_of(folder, split) for split in task.hub_splits)
    except EptctlError:  # a split there twice: not usable as it is (loading says why)
        return False


def protocol_splits(task: BenchmarkTask, given: dict[str, list]) -> dict[str, list]:
    """The paper's train/validation/test from the hub splits (``given``: split name -> rows), by the task's rule
    (module docstring). Deterministic: the same rows whatever the training seed. ``EptctlError`` when a split is
    too small to halve or to hold ``HOLD_OUT`` rows out of."""
    # Evaluation splits taken whole are shuffled too: --max-eval N keeps their first N rows, which must be a sample.
    if task.protocol == "mnli":
        return {"train": given["train"], "validation": shuffled(given["validation_mismatched"], SPLIT_SEED),
                "test": shuffled(given["validation_matched"], SPLIT_SEED)}
    if task.protocol == "large":
        train = shuffled(given["train"], SPLIT_SEED)
        if len(train) <= HOLD_OUT:
            raise EptctlError(f"task '{task.name}' needs more than {HOLD_OUT} training rows to hold {HOLD_OUT} out for "
                              f"validation, its data has {len(train)}", hint="check the train file")
        return {"train": train[HOLD_OUT:], "validation": train[:HOLD_OUT],
                "test": shuffled(given["validation"], SPLIT_SEED)}
    original = shuffled(given["validation"], SPLIT_SEED)
    if len(original) < 2:
        raise EptctlError(f"task '{task.name}' needs at least 2 validation rows to halve into validation and test, "
                          f"its data has {len(original)}", hint="check the validation file")
    half = len(original) // 2
    return {"train": given["train"], "validation": original[:half], "test": original[half:]}


def read_splits(task: BenchmarkTask, root: Path | None = None) -> dict[str, list[RawRow]]:
    """The task's rows in the paper's train/validation/test (``protocol_splits``), read from the data directory.

    Every row must be labelled (the splits read are the hub's labelled ones); a row with an empty input column is
    dropped (QQP's train has two). Each row's first column is its ``text``, the second its ``text_pair``, the others
    its ``fields``; ``prepare`` has been applied. Raises ``EptctlError`` for missing files, columns or labels.
    """
    from eptctl.data.tables import read_split_files

    given = {}
    for split, files in split_files(task, root).items():
        where = f"{task.folder(root)} ({split})"
        needed = sorted({*task.columns, *_prepare_columns(task)})
        table = read_split_files(files, needed, where, label_column=task.label_column)
        rows = []
        for number, row in enumerate(table, start=1):
            _check_label(task, row[task.label_column], number, where)
            if any(_blank(row[c]) for c in task.columns):
                continue  # the hub's QQP train holds two rows with an empty question2: no input, no example
            if task.prepare is not None:
                row = task.prepare(row)
            texts = [row[c] for c in task.columns]
            pair = texts[1] if len(texts) > 1 else None
            rows.append(RawRow(texts[0], pair, row[task.label_column], number,
                               tuple(zip(task.columns[2:], texts[2:]))))
        given[split] = rows
    return protocol_splits(task, given)


def _blank(value) -> bool:
    return value is None or not str(value).strip()


def _check_label(task: BenchmarkTask, value, number: int, where: str) -> None:
    """The splits the protocol reads are labelled on the hub; a missing or unknown label is the data's fault."""
    spec = task.spec
    if value is None or value == -1:  # -1 (a ClassLabel's -1 reads as None): the hub's unlabelled test rows
        raise EptctlError(f"row {number} of {where} has no label (the protocol reads only labelled splits)",
                          hint=f"use the files of {task.hub_name} ({task.config}) as the hub has them")
    if not spec.strategy.has_labels:
        return
    names = ", ".join(f"{i}={name}" for i, name in enumerate(spec.labels))
    if isinstance(value, bool) or str(value) in spec.labels:
        return
    if isinstance(value, (int, float)) and float(value).is_integer() and 0 <= int(value) < len(spec.labels):
        return
    raise EptctlError(f"label {value!r} in row {number} of {where} is not one of task '{task.name}''s labels",
                      hint=f"labels are the hub's names or their indices: {names}")


def _prepare_columns(task: BenchmarkTask) -> tuple[str, ...]:
    return ("span1_index", "span2_index", "span1_text", "span2_text") if task.prepare is wsc_marked else ()


def fetch(task: BenchmarkTask, root: Path | None = None) -> list[Path]:
    """Downloads the task's hub splits with ``datasets`` and writes them as ``SPLIT.parquet`` under ``root`` (default:
    the data directory), each file written whole or not at all. Returns the files written. Raises ``EptctlError``
    when the hub cannot be reached (offline mode, no network) or lacks the dataset."""
    from eptctl.data.tables import load_hub_config

    folder = task.folder(root)
    tables = load_hub_config(task.hub_name, task.config, task.hub_splits)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for split in task.hub_splits:
        target = folder / f"{split}.parquet"
        partial = target.with_name(f".{target.name}.partial")
        tables[split].to_parquet(str(partial))
        os.replace(partial, target)  # atomic: a reader sees the old file or the whole new one
        written.append(target)
    return written
