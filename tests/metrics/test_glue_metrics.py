"""GLUE metrics on fixed predictions against values computed by hand from their definitions."""

import math

import numpy as np
import pytest

from repro.metrics.glue import glue_metrics, predictions


def test_accuracy_and_f1_by_hand():
    preds = np.array([1, 0, 1, 1, 0, 1])
    labels = np.array([1, 0, 0, 1, 1, 1])
    # tp=3, fp=1, fn=1, tn=1
    out = glue_metrics(["accuracy", "f1"], preds, labels)
    assert out["accuracy"] == pytest.approx(4 / 6)
    assert out["f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))


def test_matthews_by_hand():
    preds = np.array([1, 1, 1, 0, 0, 1, 0, 0])
    labels = np.array([1, 1, 0, 0, 0, 0, 1, 0])
    tp, tn, fp, fn = 2, 3, 2, 1
    mcc = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert glue_metrics(["matthews_correlation"], preds, labels)["matthews_correlation"] == pytest.approx(mcc)


def test_matthews_is_zero_for_a_constant_predictor():
    """The CoLA collapse of microsoft/LoRA #35 shows up as MCC 0."""
    assert glue_metrics(["matthews_correlation"], np.ones(10, int), np.array([0, 1] * 5))["matthews_correlation"] == 0.0


def test_pearson_spearman_by_hand():
    x = np.array([0.5, 2.0, 3.5, 1.0, 4.5])
    y = np.array([1.0, 2.5, 3.0, 0.0, 5.0])
    pearson = ((x - x.mean()) * (y - y.mean())).sum() / math.sqrt(
        ((x - x.mean()) ** 2).sum() * ((y - y.mean()) ** 2).sum()
    )
    rx, ry = np.argsort(np.argsort(x)).astype(float), np.argsort(np.argsort(y)).astype(float)
    spearman = 1 - 6 * ((rx - ry) ** 2).sum() / (len(x) * (len(x) ** 2 - 1))
    out = glue_metrics(["pearson", "spearmanr"], x, y)
    assert out["pearson"] == pytest.approx(pearson)
    assert out["spearmanr"] == pytest.approx(spearman)


def test_predictions_from_logits():
    logits = np.array([[0.1, 2.0], [3.0, -1.0]])
    assert predictions(logits, 2).tolist() == [1, 0]
    assert predictions(np.array([[4.2], [1.5]]), 1).tolist() == [4.2, 1.5]


def test_unknown_metric_is_refused():
    with pytest.raises(ValueError, match="allowed"):
        glue_metrics(["bleu"], np.zeros(2), np.zeros(2))
