"""Tiny files in the exact column layout of the 13 GLUE/SuperGLUE hub datasets, for tests and the bench smoke run.

GLUE is written as parquet with the hub's ClassLabel features (hub shard names for MNLI's train), SuperGLUE as JSON
Lines with integer labels, so both readers and both label encodings are exercised. Test splits carry label -1, as on
the hub. Sizes: small tasks 24 train / 10 validation rows; large tasks (QQP, QNLI, SST-2) 1,012 train / 8
validation rows; MNLI 20 train, 6 mismatched, 8 matched.
"""

from __future__ import annotations

import json
from pathlib import Path

WORDS = ("river", "bright", "quiet", "stone", "garden", "music", "winter", "paper", "silver", "market", "window",
         "forest", "engine", "letter", "island", "candle")

SMALL = {"train": 24, "validation": 10, "test": 4}
LARGE = {"train": 1012, "validation": 8, "test": 4}
MNLI = {"train": 20, "validation_matched": 8, "validation_mismatched": 6, "test_matched": 4, "test_mismatched": 4}


def phrase(i: int, k: int = 5) -> str:
    """A short distinct sentence for row ``i`` (``k`` words, the row number spelled in)."""
    return " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(k)) + f" number {i}."


def _glue_row(config: str, i: int, labelled: bool) -> dict:
    label_count = {"mnli": 3, "stsb": 0}.get(config, 2)
    label = (i % label_count) if label_count else round((i % 26) * 0.2, 1)
    if not labelled:
        label = -1 if label_count else -1.0
    a, b = phrase(i), phrase(i + 1000, 4)
    columns = {
        "mnli": {"premise": a, "hypothesis": b}, "qqp": {"question1": a + "?", "question2": b + "?"},
        "qnli": {"question": a + "?", "sentence": b}, "sst2": {"sentence": a}, "cola": {"sentence": a},
        "stsb": {"sentence1": a, "sentence2": b}, "mrpc": {"sentence1": a, "sentence2": b},
        "rte": {"sentence1": a, "sentence2": b},
    }[config]
    return {**columns, "label": label, "idx": i}


def _superglue_row(config: str, i: int, labelled: bool) -> dict:
    label = (i % 3) if config == "cb" else (i % 2)
    if not labelled:
        label = -1
    a, b = phrase(i), phrase(i + 1000, 4)
    if config == "multirc":
        return {"paragraph": f"<b>Sent 1: </b>{a}<br><b>Sent 2: </b>{b}<br>", "question": f"what is {i}?",
                "answer": WORDS[i % len(WORDS)], "idx": {"paragraph": i // 4, "question": i // 2, "answer": i},
                "label": label}
    if config == "boolq":
        return {"question": f"is it {WORDS[i % len(WORDS)]}", "passage": a + " " + b, "idx": i, "label": label}
    if config == "wic":
        word = WORDS[(i * 7) % len(WORDS)]
        return {"word": word, "sentence1": a, "sentence2": f"the {word} again {i}.", "start1": 0,
                "start2": 4, "end1": len(word), "end2": 4 + len(word), "idx": i, "label": label}
    if config == "wsc.fixed":
        return {"text": f"Mark told Pete many lies about himself {i} times , which he later regretted .",
                "span1_index": 0, "span2_index": 11, "span1_text": "Mark", "span2_text": "he", "idx": i,
                "label": label}
    return {"premise": a, "hypothesis": b, "idx": i, "label": label}  # cb


GLUE_LABELS = {
    "mnli": ["entailment", "neutral", "contradiction"], "qqp": ["not_duplicate", "duplicate"],
    "qnli": ["entailment", "not_entailment"], "sst2": ["negative", "positive"], "mrpc": ["not_equivalent", "equivalent"],
    "rte": ["entailment", "not_entailment"], "cola": ["unacceptable", "acceptable"],
}
SIZES = {"mnli": MNLI, "qqp": LARGE, "qnli": LARGE, "sst2": LARGE}


def _features(config: str, rows: list[dict]):
    import datasets

    feats = {key: datasets.Value("string") for key, value in rows[0].items() if isinstance(value, str)}
    feats["idx"] = datasets.Value("int32")
    feats["label"] = (datasets.Value("float32") if config == "stsb"
                      else datasets.ClassLabel(names=GLUE_LABELS[config]))
    return datasets.Features(feats)


def write_fixtures(root: Path) -> Path:
    """Writes every task's splits under ``root`` (``root/glue/CONFIG/...``, ``root/super_glue/CONFIG/...``)."""
    import datasets

    datasets.disable_progress_bars()  # "Creating parquet from Arrow format" bars would fill a failing test's log
    for config in ("mnli", "qqp", "qnli", "sst2", "stsb", "mrpc", "rte", "cola"):
        folder = root / "glue" / config
        folder.mkdir(parents=True, exist_ok=True)
        start = 0
        for split, n in SIZES.get(config, SMALL).items():
            rows = [_glue_row(config, start + i, not split.startswith("test")) for i in range(n)]
            start += n
            table = datasets.Dataset.from_list(rows, features=_features(config, rows))
            # MNLI's train as two hub-style shards; everything else one file per split.
            if config == "mnli" and split == "train":
                for shard in range(2):
                    table.shard(2, shard, contiguous=True).to_parquet(
                        str(folder / f"train-{shard:05d}-of-00002.parquet"))
            else:
                table.to_parquet(str(folder / f"{split}.parquet"))
    for config in ("multirc", "boolq", "wic", "wsc.fixed", "cb"):
        folder = root / "super_glue" / config
        folder.mkdir(parents=True, exist_ok=True)
        start = 0
        for split, n in SMALL.items():
            rows = [_superglue_row(config, start + i, split != "test") for i in range(n)]
            start += n
            (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return root
