"""GLUE metrics from scikit-learn and scipy (the same definitions as GLUE's own scorer).

The LoRA paper's Table 2 reports accuracy for MNLI (matched), SST-2, MRPC, QNLI, QQP and RTE, Matthews
correlation for CoLA and Pearson correlation for STS-B; F1 (MRPC, QQP) and Spearman (STS-B) are GLUE's co-metrics.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

METRICS = {
    "accuracy": lambda p, y: accuracy_score(y, p),
    "f1": lambda p, y: f1_score(y, p),
    "matthews_correlation": lambda p, y: matthews_corrcoef(y, p),
    "pearson": lambda p, y: pearsonr(p, y)[0],
    "spearmanr": lambda p, y: spearmanr(p, y)[0],
}


def predictions(logits: np.ndarray, num_labels: int) -> np.ndarray:
    """Class ids from logits, or the regression output itself (STS-B)."""
    return logits.squeeze(-1) if num_labels == 1 else logits.argmax(-1)


def glue_metrics(names: list[str], preds: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    unknown = set(names) - set(METRICS)
    if unknown:
        raise ValueError(f"unknown GLUE metric(s) {sorted(unknown)}; allowed: {sorted(METRICS)}")
    return {name: float(METRICS[name](preds, labels)) for name in names}
