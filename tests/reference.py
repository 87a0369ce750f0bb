"""Independent brute-force references in float64, written for clarity only.

Nothing here imports dkmeans: these are what the engine is checked against.
"""

from __future__ import annotations

import numpy as np


def sq_distances(X: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """All squared distances, (n, k), from explicit differences in float64."""
    diff = X.astype(np.float64)[:, None, :] - centers.astype(np.float64)[None, :, :]
    return np.einsum("ijk,ijk->ij", diff, diff)


def assign(X: np.ndarray, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First-index argmin labels and their squared distances."""
    d = sq_distances(X, centers)
    labels = d.argmin(axis=1)
    return labels, d[np.arange(len(X)), labels]


def cluster_sums(X, labels, weights, k):
    """Per-cluster weighted sums and total weights, one row at a time."""
    w = np.ones(len(X)) if weights is None else np.asarray(weights, dtype=np.float64)
    sums = np.zeros((k, X.shape[1]))
    totals = np.zeros(k)
    for x, label, wi in zip(X.astype(np.float64), labels, w, strict=True):
        sums[label] += wi * x
        totals[label] += wi
    return sums, totals


def objective(X, centers, labels, weights=None) -> float:
    w = np.ones(len(X)) if weights is None else np.asarray(weights, dtype=np.float64)
    diff = X.astype(np.float64) - centers.astype(np.float64)[labels]
    return float(np.sum(w * np.einsum("ij,ij->i", diff, diff)))
