"""Classification scores (sklearn) shared by training, packaging and local scoring."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from submission.model import CLASS_NAMES, NUM_CLASSES


def score(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix."""
    y_true = np.asarray(y_true).reshape(-1)
    y_pred = np.asarray(y_pred).reshape(-1)
    labels = list(range(NUM_CLASSES))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    return {
        "n": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)) if len(y_true) else 0.0,
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "per_class": [
            {"label": c, "name": CLASS_NAMES[c], "precision": float(precision[c]),
             "recall": float(recall[c]), "f1": float(f1[c]), "support": int(support[c])}
            for c in labels
        ],
        "confusion": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }
