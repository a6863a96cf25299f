"""The one place scikit-learn is imported (extra ``evaluate``): a classifier for utility
tests and nearest-neighbour search for privacy tests; plus AUC and F1 in numpy."""

from __future__ import annotations

import numpy as np

from microdb.errors import ConfigError

ZERO = 1e-6
"""Distances below this are rounding noise of the brute-force search and count as 0 (a copy)."""
EXTRA = "pip install 'microdb[evaluate]'  (scikit-learn)"


def _sklearn():
    try:
        import sklearn.ensemble
        import sklearn.neighbors
    except ImportError as exc:
        raise ConfigError(f"synth evaluation needs scikit-learn, which is not installed ({exc}); {EXTRA}") from None
    return sklearn


def _one_thread():
    """OpenMP/BLAS limited to one thread: on a shared, busy machine spinning worker
    threads made a small fit ten times slower, and these problems are small."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


def fit_classifier(x: np.ndarray, y: np.ndarray, seed: int, categorical: np.ndarray | None = None):
    """A gradient-boosted tree classifier (histogram based, native categories and nulls),
    classes weighted to balance."""
    sk = _sklearn()
    mask = categorical if categorical is not None and categorical.any() else None
    model = sk.ensemble.HistGradientBoostingClassifier(max_iter=100, learning_rate=0.1, max_leaf_nodes=15,
                                                       categorical_features=mask, class_weight="balanced",
                                                       random_state=seed, early_stopping=False)
    with _one_thread():
        return model.fit(x, y.astype(np.int64))


def positive_scores(model, x: np.ndarray) -> np.ndarray:
    """Probability of class 1 for each row of ``x``."""
    with _one_thread():
        proba = model.predict_proba(x)
    classes = list(model.classes_)
    return proba[:, classes.index(1)] if 1 in classes else np.zeros(len(x))


def nearest(reference: np.ndarray, query: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distances (n, k) and indices of the ``k`` nearest reference rows of each query row."""
    sk = _sklearn()
    k = min(k, len(reference))
    with _one_thread():
        index = sk.neighbors.NearestNeighbors(n_neighbors=k, algorithm="brute").fit(reference)
        distances, rows = index.kneighbors(query, n_neighbors=k)
    distances[distances < ZERO] = 0.0
    return distances, rows


def auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann–Whitney, ties count half); None without both classes."""
    labels = np.asarray(labels, dtype=bool)
    pos, neg = int(labels.sum()), int((~labels).sum())
    if pos == 0 or neg == 0:
        return None
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2)[inverse]
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


def f1(labels: np.ndarray, predicted: np.ndarray) -> float:
    """F1 of the positive class (0 when nothing is predicted or present)."""
    labels, predicted = np.asarray(labels, dtype=bool), np.asarray(predicted, dtype=bool)
    tp = int((labels & predicted).sum())
    denominator = int(labels.sum()) + int(predicted.sum())
    return 2 * tp / denominator if denominator else 0.0
