"""Task metrics, computed in this one place and only with maintained libraries (no hand-written metric formulas):
scikit-learn for classification and mean squared error, scipy.stats for correlations, ``rouge-score`` for ROUGE-L,
``sacrebleu`` for chrF and BLEU, and torchmetrics' port of the official SQuAD script (Rajpurkar et al. 2016) for exact
match and token F1. Every third-party library is imported inside the function that uses it, so importing eptctl stays
light; this module also holds the names a task may choose as its primary metric (all higher-is-better) and the
parsing/rendering of numbers for regression as text generation (T5-style targets such as ``"3.4"``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from decimal import ROUND_HALF_UP, Decimal, localcontext

from eptctl.core.errors import EptctlError

TASK_TYPES = ("classification", "generation", "regression")

PRIMARY_METRICS: dict[str, tuple[str, ...]] = {
    "classification": ("accuracy", "macro_f1", "f1", "mcc"),
    "generation": ("rouge_l", "exact_match", "token_f1", "chrf", "bleu"),
    "regression": ("pearson", "spearman"),
}

DEFAULT_METRIC: dict[str, str] = {"classification": "accuracy", "generation": "rouge_l", "regression": "pearson"}

# An optional sign, then digits with an optional fraction ("3", "3.40", "2.") or a bare fraction (".5"), then an
# optional exponent ("1e3"). Parsing of model output, not a metric.
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def check_metric(task_type: str, metric: str) -> None:
    """Return None when ``metric`` may be the primary metric of a task of type ``task_type``.

    Raises EptctlError (one line, with a hint listing the allowed names) for a task type not in TASK_TYPES or a metric
    not in ``PRIMARY_METRICS[task_type]``.
    """
    if task_type not in PRIMARY_METRICS:
        raise EptctlError(f"unknown task type {task_type!r}",
                          hint="choose the task type from: " + ", ".join(TASK_TYPES))
    allowed = PRIMARY_METRICS[task_type]
    if metric not in allowed:
        raise EptctlError(f"{metric!r} is not a primary metric of a {task_type} task",
                          hint="choose --metric from: " + ", ".join(allowed))


def _check_lengths(what: str, predictions: Sequence, references: Sequence) -> None:
    if len(predictions) != len(references):
        raise EptctlError(f"{len(predictions)} predictions but {len(references)} {what}",
                          hint=f"give one prediction per row of {what}")


def classification_metrics(predictions: Sequence[int], labels: Sequence[int], num_labels: int) -> dict[str, float]:
    """Metrics of predicted class indices against gold class indices, as Python floats.

    Returns ``accuracy`` (sklearn.metrics.accuracy_score, 0..1), ``macro_f1`` (sklearn.metrics.f1_score,
    average="macro", zero_division=0; 0..1) and ``mcc`` (sklearn.metrics.matthews_corrcoef, -1..1; 0 when either side
    is constant) always, and ``f1`` (sklearn.metrics.f1_score, binary F1 of class index 1, zero_division=0; 0..1) only
    when ``num_labels == 2``. Empty input returns {}. Raises EptctlError when the lengths differ.
    """
    _check_lengths("labels", predictions, labels)
    if not labels:
        return {}
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    import warnings

    preds, gold = [int(p) for p in predictions], [int(y) for y in labels]
    with warnings.catch_warnings():  # one class on both sides (a tiny eval set): MCC is 0 by definition, no warning
        warnings.simplefilter("ignore", UserWarning)
        mcc = float(matthews_corrcoef(gold, preds))
    out = {
        "accuracy": float(accuracy_score(gold, preds)),
        "macro_f1": float(f1_score(gold, preds, average="macro", zero_division=0)),
        "mcc": mcc,
    }
    if num_labels == 2:
        out["f1"] = float(f1_score(gold, preds, average="binary", pos_label=1, zero_division=0))
    return out


def generation_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Metrics of generated texts against one reference text per row, as Python floats.

    Returns ``exact_match`` and ``token_f1`` (the SQuAD normalisation of Rajpurkar et al. 2016's official script:
    lower case, no punctuation, no articles a/an/the, single spaces; via torchmetrics.functional.text.squad; mean
    over rows, 0..1), ``rouge_l`` (rouge_score.rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True), mean F-measure
    over rows, 0..1), ``chrf`` (sacrebleu.corpus_chrf, 0..100) and ``bleu`` (sacrebleu.corpus_bleu, 0..100; a corpus
    score, so outputs too short for any 4-gram score 0). Empty input returns {}. Raises EptctlError when the lengths
    differ. Nothing is downloaded.
    """
    _check_lengths("references", predictions, references)
    if not references:
        return {}
    import sacrebleu
    from rouge_score import rouge_scorer
    from torchmetrics.functional.text.squad import squad

    hyps, refs = [str(p) for p in predictions], [str(r) for r in references]
    squad_scores = squad([{"prediction_text": h, "id": str(i)} for i, h in enumerate(hyps)],
                         [{"answers": {"text": [r], "answer_start": [0]}, "id": str(i)} for i, r in enumerate(refs)])
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    # RougeScorer.score(target, prediction)
    rouge = [scorer.score(r, h)["rougeL"].fmeasure for h, r in zip(hyps, refs, strict=True)]
    return {
        "exact_match": float(squad_scores["exact_match"]) / 100.0,  # torchmetrics reports 0..100
        "token_f1": float(squad_scores["f1"]) / 100.0,
        "rouge_l": float(sum(rouge) / len(rouge)),
        "chrf": float(sacrebleu.corpus_chrf(hyps, [refs]).score),
        "bleu": float(sacrebleu.corpus_bleu(hyps, [refs]).score),
    }


def regression_metrics(predictions: Sequence[float | None], targets: Sequence[float], fallback: float
                       ) -> dict[str, float]:
    """Metrics of predicted numbers against target numbers, as Python floats.

    A None prediction is an unparseable model output: it is scored as ``fallback`` (the grid's mean) and counted.
    Returns ``pearson`` (scipy.stats.pearsonr, -1..1), ``spearman`` (scipy.stats.spearmanr, -1..1) — both 0.0 instead
    of nan when a side is constant or there is a single row, so the metric stays comparable and JSON-safe — ``mse``
    (sklearn.metrics.mean_squared_error, >= 0) and ``unparseable`` (the number of None predictions). Empty input
    returns {}. Raises EptctlError when the lengths differ.
    """
    _check_lengths("targets", predictions, targets)
    if not targets:
        return {}
    import warnings

    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import mean_squared_error

    preds = [float(fallback) if p is None else float(p) for p in predictions]
    gold = [float(t) for t in targets]
    unparseable = sum(p is None for p in predictions)

    def correlation(fn) -> float:
        if len(gold) < 2:  # scipy refuses fewer than two points; a single point is a constant side
            return 0.0
        with warnings.catch_warnings():  # constant input: scipy warns and returns nan, reported here as 0.0
            warnings.simplefilter("ignore")
            value = float(fn(preds, gold).statistic)
        return value if math.isfinite(value) else 0.0

    return {
        "pearson": correlation(pearsonr),
        "spearman": correlation(spearmanr),
        "mse": float(mean_squared_error(gold, preds)),
        "unparseable": float(unparseable),
    }


def parse_number(text: str) -> float | None:
    """The first number in a generated text ("3.4", " 3.40 ", "-1", "2.", ".5", "about 4.2 points", "1e3") as a
    float, or None when there is none or it is not finite (an overflowing exponent). Raises nothing; a regex, not a
    metric."""
    match = _NUMBER.search(text or "")
    if match is None:
        return None
    value = float(match.group())
    return value if math.isfinite(value) else None


def render_number(value: float, grid: float, decimals: int) -> str:
    """The T5-style text target of ``value``: rounded to the nearest multiple of ``grid`` (ties half away from zero,
    in exact decimal arithmetic of the numbers as written, so 4.9 on a 0.2 grid is 24.5 steps -> "5.0") and formatted
    with ``decimals`` digits after the point ("3.4"); -0.0 prints as "0.0". Uses decimal.Decimal (ROUND_HALF_UP).

    Raises EptctlError when ``value`` is not finite, ``grid`` is not a positive finite number or ``decimals`` < 0.
    """
    if not math.isfinite(value):
        raise EptctlError(f"cannot render the regression target {value!r}", hint="targets must be finite numbers")
    if not (math.isfinite(grid) and grid > 0) or decimals < 0:
        raise EptctlError(f"invalid number grid {grid!r} with {decimals!r} decimals",
                          hint="the grid must be a positive number (e.g. 0.2) and decimals >= 0")
    with localcontext() as ctx:
        ctx.prec = 1000  # enough digits for any finite floats: the only rounding that matters is the one asked for
        step = Decimal(repr(float(grid)))
        steps = (Decimal(repr(float(value))) / step).quantize(Decimal(1), rounding=ROUND_HALF_UP)
        rounded = (steps * step).quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_UP)
    if rounded == 0:
        rounded = abs(rounded)  # no "-0.0"
    return format(rounded, "f")
