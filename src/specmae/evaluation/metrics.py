"""Scene-level metrics of the evaluation protocol, equal to scikit-learn's.

    accuracy (multi-class), mAP (multi-label, macro over classes with positives),
    ROC-AUC (binary; macro one-vs-rest otherwise), and the chance level of each.

targets: (N,) int class indices for 'multiclass' and 'binary', (N, C) 0/1 for 'multilabel'.
scores:  (N, C) class probabilities (softmax, or sigmoid for multi-label).
Ties are handled as scikit-learn does (one threshold per group of tied scores, mid-ranks).
"""

from __future__ import annotations

import numpy as np

KINDS = ("multiclass", "multilabel", "binary")
METRICS = ("accuracy", "mAP", "roc_auc")


def accuracy(targets: np.ndarray, scores: np.ndarray) -> float:
    """Top-1 accuracy; ties in the scores go to the lowest class index (np.argmax)."""
    return float(np.mean(np.argmax(scores, axis=1) == np.asarray(targets)))


def _sorted_ties(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per column of scores (N, C), descending: (order, first, last) where first/last give,
    for each sorted position, the first and last sorted position of its group of tied scores."""
    order = np.argsort(-scores, axis=0, kind="stable")
    s = np.take_along_axis(scores, order, axis=0)
    n = len(s)
    pos = np.arange(n)[:, None]
    new = np.ones_like(s, dtype=bool)
    new[1:] = s[1:] != s[:-1]
    end = np.ones_like(s, dtype=bool)
    end[:-1] = new[1:]
    first = np.maximum.accumulate(np.where(new, pos, 0), axis=0)
    last = np.minimum.accumulate(np.where(end, pos, n)[::-1], axis=0)[::-1]
    return order, first, last


def average_precision(targets: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """AP per column of 0/1 targets (N, C) and scores (N, C), as sklearn's average_precision_score:
    sum over thresholds of (recall step) x precision, tied scores forming one threshold.
    Columns without positives give NaN."""
    order, _, last = _sorted_ties(scores)
    y = np.take_along_axis(np.asarray(targets, dtype=np.float64), order, axis=0)
    tp = np.cumsum(y, axis=0)
    precision = np.take_along_axis(tp, last, axis=0) / (last + 1)  # at the end of each tie group
    with np.errstate(invalid="ignore", divide="ignore"):
        return (y * precision).sum(0) / y.sum(0)


def column_auc(targets: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """ROC-AUC per column (Mann-Whitney U with mid-ranks for ties); NaN where a column lacks
    positives or negatives."""
    order, first, last = _sorted_ties(scores)
    y = np.take_along_axis(np.asarray(targets, dtype=np.float64), order, axis=0)
    n = len(y)
    ascending_rank = n - (first + last) / 2  # 1-based rank in ascending order, ties averaged
    pos = y.sum(0)
    neg = n - pos
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = ((y * ascending_rank).sum(0) - pos * (pos + 1) / 2) / (pos * neg)
    return np.where((pos > 0) & (neg > 0), auc, np.nan)


def one_hot(targets: np.ndarray, n_classes: int) -> np.ndarray:
    out = np.zeros((len(targets), n_classes), np.uint8)
    out[np.arange(len(targets)), targets] = 1
    return out


def mean_average_precision(targets: np.ndarray, scores: np.ndarray) -> float:
    """Macro AP over the classes that have at least one positive. Class indices (N,) or 0/1 (N, C)."""
    targets = np.asarray(targets)
    if targets.ndim == 1:
        targets = one_hot(targets, scores.shape[1])
    ap = average_precision(targets, scores)
    if np.isnan(ap).all():
        raise ValueError("mAP is undefined: no class has a positive example")
    return float(np.nanmean(ap))


def roc_auc(targets: np.ndarray, scores: np.ndarray) -> float:
    """Binary (two columns, class indices): AUC of column 1. Otherwise macro one-vs-rest AUC
    over the classes that have both positives and negatives."""
    targets = np.asarray(targets)
    if targets.ndim == 1 and scores.shape[1] == 2:
        auc = column_auc(targets[:, None], scores[:, 1:])
    else:
        auc = column_auc(one_hot(targets, scores.shape[1]) if targets.ndim == 1 else targets, scores)
    if np.isnan(auc).all():
        raise ValueError("ROC-AUC is undefined: no class has both positive and negative examples")
    return float(np.nanmean(auc))


METRIC_FUNCTIONS = {"accuracy": accuracy, "mAP": mean_average_precision, "roc_auc": roc_auc}


def score(metric: str, targets: np.ndarray, scores: np.ndarray) -> float:
    if metric not in METRIC_FUNCTIONS:
        raise ValueError(f"metric {metric!r}: allowed {METRICS}")
    return METRIC_FUNCTIONS[metric](targets, scores)


def chance_score(metric: str, targets: np.ndarray, n_classes: int) -> float:
    """Chance level on `targets`: the share of the most frequent class (accuracy), the mean class
    prevalence (mAP: the AP of an uninformative score), 0.5 (ROC-AUC)."""
    targets = np.asarray(targets)
    if metric == "accuracy":
        return float(np.bincount(targets, minlength=n_classes).max() / len(targets))
    if metric == "mAP":
        y = one_hot(targets, n_classes) if targets.ndim == 1 else targets
        prevalence = y.mean(0)
        return float(prevalence[prevalence > 0].mean())
    return 0.5
