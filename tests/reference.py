"""Independent brute-force references in float64, written for clarity only.

Nothing here imports dkmeans: these are what the engine is checked against.
"""

from __future__ import annotations

from fractions import Fraction

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


def _exact_integers(*arrays: np.ndarray) -> list[np.ndarray]:
    """The arrays' values times one power of two, as Python integers (object arrays): exact.

    Floats are dyadic rationals; with the largest denominator among them as the
    common one, every value is an integer and so is every squared distance.
    """
    as_fractions = [
        [[Fraction(float(v)) for v in row] for row in np.asarray(a, dtype=np.float64)]
        for a in arrays
    ]
    denominator = max(
        (f.denominator for rows in as_fractions for row in rows for f in row), default=1
    )
    return [
        np.array([[int(f * denominator) for f in row] for row in rows], dtype=object).reshape(
            len(rows), -1
        )
        for rows in as_fractions
    ]


def exact_sq_distances(X: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """All squared distances, (n, k), as exact Python integers (a common scale: see above)."""
    X_int, centers_int = _exact_integers(X, centers)
    return np.stack([((X_int - c) ** 2).sum(axis=1) for c in centers_int], axis=1).reshape(
        len(X), len(centers)
    )


def exact_labels(X: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """The exact argmin of each row's squared distance to the centers, ties to the lowest."""
    return np.argmin(exact_sq_distances(X, centers), axis=1)


def exact_sqdist(X: np.ndarray, centers: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each row's exact squared distance to its labelled center, rounded once to float64."""
    values = np.concatenate(
        [np.asarray(X, np.float64).ravel(), np.asarray(centers, np.float64).ravel()]
    )
    denominator = max((Fraction(float(v)).denominator for v in values), default=1)
    distances = exact_sq_distances(X, centers)
    return np.array(
        [float(Fraction(distances[i, j], denominator**2)) for i, j in enumerate(labels)]
    )


def unit(X: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, in float64."""
    X64 = np.asarray(X, dtype=np.float64)
    return X64 / np.linalg.norm(X64, axis=1, keepdims=True)


def spherical_kmeans(X, init, weights=None, max_iter=300):
    """Spherical k-means (Dhillon & Modha) from ``init``, to its fixed point, in float64.

    Labels: the largest cosine (first index on ties); centers: each cluster's
    weighted sum of unit rows, scaled to unit length; no empty clusters
    expected. Returns (labels, centers, objectives), the objective of each
    iteration's labels being ``sum w (1 - cos)`` to that iteration's centers.
    """
    Xn = unit(X)
    w = np.ones(len(Xn)) if weights is None else np.asarray(weights, dtype=np.float64)
    centers = unit(init)
    labels, objectives = None, []
    for _ in range(max_iter):
        similarity = Xn @ centers.T
        new = similarity.argmax(axis=1)
        objectives.append(float(np.sum(w * (1 - similarity[np.arange(len(Xn)), new]))))
        if labels is not None and np.array_equal(new, labels):
            break
        labels = new
        sums, _ = cluster_sums(Xn, labels, w, len(centers))
        assert (np.linalg.norm(sums, axis=1) > 0).all(), "an empty cluster"
        centers = unit(sums)
    return labels, centers, objectives
