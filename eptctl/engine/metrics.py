"""Task metrics, computed in this one place and only with maintained libraries (no hand-written metric formulas):
scikit-learn for classification and mean squared error, scipy.stats for correlations, ``rouge-score`` for ROUGE-L,
``sacrebleu`` for chrF and BLEU, and torchmetrics' port of the official SQuAD script (Rajpurkar et al. 2016) for exact
match and token F1. Every third-party library is imported inside the function that uses it, so importing eptctl stays
light. The names a task may choose as its primary metric (all higher-is-better) come from the task-type table
(``eptctl.data.task_types``), and the parsing/rendering of numbers for regression as text generation (T5-style
targets such as ``"3.4"``) lives in its type's module; both are re-exported here for earlier callers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from eptctl.core.errors import EptctlError
from eptctl.data.task_types import TASK_TYPES as _TABLE
from eptctl.data.task_types import names
from eptctl.data.task_types import task_type as task_type_of
from eptctl.data.task_types.regression import parse_number, render_number

__all__ = ["DEFAULT_METRIC", "PRIMARY_METRICS", "TASK_TYPES", "check_metric", "classification_metrics",
           "generation_metrics", "parse_number", "regression_metrics", "render_number"]

# Views of the task-type table, for callers of earlier versions.
TASK_TYPES = names()
PRIMARY_METRICS: dict[str, tuple[str, ...]] = {name: kind.primary_metrics for name, kind in _TABLE.items()}
DEFAULT_METRIC: dict[str, str] = {name: kind.default_metric for name, kind in _TABLE.items()}


def check_metric(task_type: str, metric: str) -> None:
    """Return None when ``metric`` may be the primary metric of a task of type ``task_type``.

    Raises EptctlError (one line, with a hint listing the allowed names) for a task type not in TASK_TYPES or a metric
    not in ``PRIMARY_METRICS[task_type]``.
    """
    allowed = task_type_of(task_type).primary_metrics
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
