"""eptctl.engine.metrics against values worked out by hand (the arithmetic is in the comments); no models."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from eptctl.core.errors import EptctlError
from eptctl.engine.metrics import (
    DEFAULT_METRIC,
    PRIMARY_METRICS,
    TASK_TYPES,
    check_metric,
    classification_metrics,
    generation_metrics,
    parse_number,
    regression_metrics,
    render_number,
)

approx = pytest.approx


# ---------------------------------------------------------------- names


def test_names_are_consistent():
    assert set(PRIMARY_METRICS) == set(TASK_TYPES) == set(DEFAULT_METRIC)
    for task_type, metric in DEFAULT_METRIC.items():
        assert metric in PRIMARY_METRICS[task_type]
        check_metric(task_type, metric)
    for task_type, metrics in PRIMARY_METRICS.items():
        for metric in metrics:
            check_metric(task_type, metric)


@pytest.mark.parametrize(("task_type", "metric", "allowed"), [
    ("regression", "mse", "pearson, spearman"),
    ("classification", "rouge_l", "accuracy, macro_f1, f1, mcc"),
    ("generation", "accuracy", "rouge_l, exact_match, token_f1, chrf, bleu"),
])
def test_check_metric_refuses_a_metric_of_another_type(task_type, metric, allowed):
    with pytest.raises(EptctlError) as err:
        check_metric(task_type, metric)
    assert "\n" not in err.value.message and metric in err.value.message
    assert err.value.hint == f"choose --metric from: {allowed}"


def test_check_metric_refuses_an_unknown_task_type():
    with pytest.raises(EptctlError) as err:
        check_metric("ranking", "accuracy")
    assert "ranking" in err.value.message
    assert "classification, generation, regression" in err.value.hint


def test_importing_the_module_stays_light():
    code = ("import sys, eptctl.engine.metrics; print(sorted(m for m in ('torch', 'numpy', 'sklearn', 'scipy', "
            "'torchmetrics', 'sacrebleu', 'rouge_score', 'nltk') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------- classification


def test_binary_classification_by_hand():
    labels = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    preds = [1, 1, 1, 0, 1, 1, 0, 0, 0, 0]
    # tp = 3 (rows 0-2), fn = 1 (row 3), fp = 2 (rows 4-5), tn = 4 (rows 6-9)
    m = classification_metrics(preds, labels, num_labels=2)
    assert set(m) == {"accuracy", "macro_f1", "f1", "mcc"}
    assert all(type(v) is float for v in m.values())
    assert m["accuracy"] == approx(7 / 10)  # (tp + tn) / 10
    # class 1: F1 = 2tp / (2tp + fp + fn) = 6 / 9
    assert m["f1"] == approx(6 / 9)
    # class 0 (tn is its tp, fn its fp, fp its fn): 2*4 / (2*4 + 1 + 2) = 8/11; macro = (6/9 + 8/11) / 2 = 23/33
    assert m["macro_f1"] == approx(23 / 33)
    # MCC = (tp*tn - fp*fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)) = (12 - 2) / sqrt(5*4*6*5) = 10 / sqrt(600)
    assert m["mcc"] == approx(10 / math.sqrt(600))


def test_multiclass_classification_by_hand():
    labels = [0, 1, 2, 2]
    preds = [0, 2, 2, 2]
    m = classification_metrics(preds, labels, num_labels=3)
    assert "f1" not in m  # binary F1 only for two labels
    assert m["accuracy"] == approx(3 / 4)
    # F1 per class: 0 -> 1 (1 right, nothing wrong); 1 -> 0 (never predicted, zero_division=0);
    # 2 -> P = 2/3, R = 2/2, F1 = 2*2 / (2*2 + 1 + 0) = 4/5; macro = (1 + 0 + 4/5) / 3 = 0.6
    assert m["macro_f1"] == approx(0.6)
    assert -1.0 <= m["mcc"] <= 1.0


def test_constant_predictions_have_zero_mcc_and_f1():
    m = classification_metrics([0, 0, 0, 0], [0, 1, 0, 1], num_labels=2)
    # no positive prediction: tp = fp = 0, so P = 0/0 -> 0 (zero_division) and MCC's denominator is 0 -> 0
    assert m["accuracy"] == approx(0.5) and m["f1"] == 0.0 and m["mcc"] == 0.0
    assert m["macro_f1"] == approx((2 / 3 + 0) / 2)  # class 0: 2*2 / (2*2 + 2 + 0) = 2/3


def test_classification_edges():
    assert classification_metrics([], [], num_labels=2) == {}
    with pytest.raises(EptctlError):
        classification_metrics([0, 1], [0], num_labels=2)


# ---------------------------------------------------------------- generation


def test_exact_match_and_token_f1_use_the_squad_normalisation():
    # "The cat!" -> lower, no punctuation, no article -> "cat": exact match, token F1 1.
    # "a big black cat" -> [big, black, cat]; "the cat sat" -> [cat, sat]: 1 common token,
    # P = 1/3, R = 1/2, F1 = 2PR / (P + R) = (1/3) / (5/6) = 2/5; no exact match.
    m = generation_metrics(["The cat!", "a big black cat"], ["cat", "the cat sat"])
    assert m["exact_match"] == approx((1 + 0) / 2)
    assert m["token_f1"] == approx((1 + 2 / 5) / 2)


def test_rouge_l_by_hand():
    # prediction: the cat sat on the mat today (7 tokens); reference: the cat was on a mat (6 tokens)
    # LCS = the, cat, on, mat = 4; P = 4/7, R = 4/6; F = 2PR / (P + R) = (32/42) / (52/42) = 8/13
    m = generation_metrics(["the cat sat on the mat today"], ["the cat was on a mat"])
    assert m["rouge_l"] == approx(8 / 13)


def test_rouge_l_stems():
    # Porter stemming: cats -> cat, running -> run, runs -> run, so the LCS covers both tokens: F = 1
    m = generation_metrics(["cats running"], ["cat runs"])
    assert m["rouge_l"] == approx(1.0)
    assert m["exact_match"] == 0.0


def test_bleu_and_chrf():
    same = generation_metrics(["the quick brown fox jumps over the lazy dog"],
                              ["the quick brown fox jumps over the lazy dog"])
    assert same["bleu"] == approx(100.0) and same["chrf"] == approx(100.0)
    assert same["exact_match"] == 1.0 and same["token_f1"] == approx(1.0) and same["rouge_l"] == approx(1.0)
    partial = generation_metrics(["the quick brown fox sleeps"], ["the quick brown fox jumps over the lazy dog"])
    assert 0.0 < partial["chrf"] < 100.0
    assert 0.0 <= partial["bleu"] < 100.0
    assert all(type(v) is float for v in partial.values())


def test_generation_edges():
    assert generation_metrics([], []) == {}
    with pytest.raises(EptctlError) as err:
        generation_metrics(["a", "b"], ["a"])
    assert "2 predictions but 1 references" == err.value.message


# ---------------------------------------------------------------- regression


def test_linear_relation_has_correlation_one():
    m = regression_metrics([1.0, 2.0, 3.0, 4.0], [3.0, 5.0, 7.0, 9.0], fallback=0.0)  # target = 2x + 1
    assert m["pearson"] == approx(1.0) and m["spearman"] == approx(1.0)
    # mse = (2^2 + 3^2 + 4^2 + 5^2) / 4 = 54 / 4
    assert m["mse"] == approx(13.5)
    assert m["unparseable"] == 0.0


def test_pearson_and_spearman_by_hand():
    # x = 1, 2, 10 (mean 13/3): dx = -10/3, -7/3, 17/3; y = 1, 3, 2 (mean 2): dy = -1, 1, 0
    # sum dx*dy = 10/3 - 7/3 = 1; sum dx^2 = (100 + 49 + 289)/9 = 438/9; sum dy^2 = 2
    # pearson = 1 / sqrt(438/9 * 2) = 3 / sqrt(876)
    # spearman: ranks x = 1, 2, 3 and y = 1, 3, 2 -> drank = -1, 0, 1 and -1, 1, 0 -> 1 / sqrt(2 * 2) = 0.5
    m = regression_metrics([1.0, 2.0, 10.0], [1.0, 3.0, 2.0], fallback=0.0)
    assert m["pearson"] == approx(3 / math.sqrt(876))
    assert m["spearman"] == approx(0.5)


def test_unparseable_prediction_is_scored_as_the_fallback_and_counted():
    m = regression_metrics([None, 2.0, 4.0], [1.0, 2.0, 3.0], fallback=2.0)
    # scored as 2, 2, 4: mse = ((2-1)^2 + 0 + (4-3)^2) / 3 = 2/3
    assert m["unparseable"] == 1.0
    assert m["mse"] == approx(2 / 3)
    # pearson: x = 2, 2, 4 (mean 8/3): dx = -2/3, -2/3, 4/3; dy = -1, 0, 1
    # sum dx*dy = 2/3 + 4/3 = 2; sum dx^2 = 24/9 = 8/3; sum dy^2 = 2 -> 2 / sqrt(16/3) = sqrt(3)/2
    assert m["pearson"] == approx(math.sqrt(3) / 2)
    # spearman: ranks x = 1.5, 1.5, 3 (mean 2): d = -0.5, -0.5, 1; ranks y = 1, 2, 3: d = -1, 0, 1
    # sum = 0.5 + 1 = 1.5; sum dx^2 = 1.5; sum dy^2 = 2 -> 1.5 / sqrt(3) = sqrt(3)/2
    assert m["spearman"] == approx(math.sqrt(3) / 2)


def test_constant_side_gives_zero_correlation_not_nan():
    m = regression_metrics([None, None, None], [1.0, 2.0, 3.0], fallback=2.0)
    assert m["pearson"] == 0.0 and m["spearman"] == 0.0
    assert m["unparseable"] == 3.0
    assert m["mse"] == approx(2 / 3)  # (1 + 0 + 1) / 3
    json.dumps(m, allow_nan=False)
    one = regression_metrics([1.0], [2.0], fallback=0.0)
    assert one == {"pearson": 0.0, "spearman": 0.0, "mse": 1.0, "unparseable": 0.0}


def test_regression_edges():
    assert regression_metrics([], [], fallback=0.0) == {}
    with pytest.raises(EptctlError):
        regression_metrics([1.0], [1.0, 2.0], fallback=0.0)


# ---------------------------------------------------------------- numbers as text


@pytest.mark.parametrize(("text", "value"), [
    ("3.4", 3.4), (" 3.40 ", 3.4), ("-1", -1.0), ("2.", 2.0), (".5", 0.5), ("about 4.2 points", 4.2),
    ("+2", 2.0), ("1e3", 1000.0), ("3.4.5", 3.4), ("score: 0 / 5", 0.0),
])
def test_parse_number(text, value):
    assert parse_number(text) == value


@pytest.mark.parametrize("text", ["none", "nan", "inf", "-inf", "", "   ", "n/a", "1e999"])
def test_parse_number_without_a_finite_number(text):
    assert parse_number(text) is None


@pytest.mark.parametrize(("value", "grid", "decimals", "text"), [
    (3.37, 0.2, 1, "3.4"),   # 16.85 steps -> 17 -> 3.4
    (0.09, 0.2, 1, "0.0"),   # 0.45 steps -> 0
    (4.9, 0.2, 1, "5.0"),    # exactly 24.5 steps: half away from zero -> 25 -> 5.0
    (-4.9, 0.2, 1, "-5.0"),  # -24.5 -> -25
    (-0.05, 0.2, 1, "0.0"),  # -0.25 steps -> -0, printed without the sign
    (-0.0, 0.2, 1, "0.0"),
    (2.5, 1.0, 0, "3"),      # 2.5 -> 3 (not banker's 2)
    (3.0, 0.25, 2, "3.00"),
    (1.13, 0.25, 2, "1.25"),  # 4.52 steps -> 5
])
def test_render_number(value, grid, decimals, text):
    assert render_number(value, grid, decimals) == text


def test_render_number_round_trips_through_parse_number():
    for step in range(26):
        text = render_number(step * 0.2, 0.2, 1)
        assert parse_number(text) == approx(step * 0.2)
        assert render_number(parse_number(text), 0.2, 1) == text


@pytest.mark.parametrize(("value", "grid", "decimals"), [
    (float("nan"), 0.2, 1), (float("inf"), 0.2, 1), (1.0, 0.0, 1), (1.0, -0.2, 1), (1.0, 0.2, -1),
])
def test_render_number_refuses_bad_input(value, grid, decimals):
    with pytest.raises(EptctlError):
        render_number(value, grid, decimals)
