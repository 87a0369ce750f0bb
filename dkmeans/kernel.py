"""Per-block kernels: nearest-center labels and the block's partial statistics.

Everything here is a pure function of (block, centers, previous labels,
weights): no I/O, no globals, no Dask. The orchestration lives in
:mod:`dkmeans.lloyd`; the reference these kernels are tested against is a
brute-force float64 NumPy implementation in the tests.

Distances for the argmin use the GEMM expansion ``||c||² - 2 x·c`` (``||x||²``
does not change the argmin) in the data's dtype, as scikit-learn does; the
objective is then computed from the exact difference ``x - c_a`` in float64,
so it does not suffer from the cancellation of that expansion.
"""

from __future__ import annotations

import numpy as np

from dkmeans.reduce import ChunkStats, Farthest, Moments

# Rows per tile of the (rows x k) score matrix: keeps it near 2 MiB, in cache.
_TILE_ELEMENTS = 1 << 18


def _tile_rows(n_rows: int, n_clusters: int) -> int:
    return max(16, min(n_rows, _TILE_ELEMENTS // max(n_clusters, 1)))


def assign(x: np.ndarray, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Label each row with its nearest center.

    Parameters
    ----------
    x : ndarray of shape (n, d)
        The rows of one block, float32 or float64.
    centers : ndarray of shape (k, d)
        Centers, in the same dtype as ``x``.

    Returns
    -------
    labels : ndarray of shape (n,), int64
        Index of the nearest center; ties go to the lowest index.
    sqdist : ndarray of shape (n,), float64
        Exact squared distance from each row to its labelled center.
    """
    n, k = len(x), len(centers)
    centers_sq = np.einsum("ij,ij->i", centers, centers)
    centers64 = centers.astype(np.float64, copy=False)
    labels = np.empty(n, dtype=np.int64)
    sqdist = np.empty(n, dtype=np.float64)
    step = _tile_rows(n, k)
    for start in range(0, n, step):
        tile = x[start : start + step]
        scores = tile @ centers.T
        scores *= -2
        scores += centers_sq
        tile_labels = np.argmin(scores, axis=1)
        labels[start : start + step] = tile_labels
        diff = tile - centers64[tile_labels]  # float64 by promotion
        sqdist[start : start + step] = np.einsum("ij,ij->i", diff, diff)
    return labels, sqdist


def distances(x: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Euclidean distances from each row to every center, shape (n, k).

    Computed in float64 by the GEMM expansion (clipped at zero), returned in
    the dtype of ``x``, as scikit-learn's ``KMeans.transform``.
    """
    x64 = x.astype(np.float64, copy=False)
    c64 = centers.astype(np.float64, copy=False)
    sq = np.einsum("ij,ij->i", x64, x64)[:, None] - 2 * (x64 @ c64.T)
    sq += np.einsum("ij,ij->i", c64, c64)
    np.maximum(sq, 0, out=sq)
    return np.sqrt(sq).astype(x.dtype, copy=False)


def cluster_sums(
    x: np.ndarray, labels: np.ndarray, weights: np.ndarray | None, n_clusters: int
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted per-cluster sums of the rows (float64) and total weights.

    Rows are grouped by a stable sort of their labels and summed with one
    ``np.add.reduceat`` (vectorised over columns; no ``np.add.at``).
    """
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    present, starts = np.unique(sorted_labels, return_index=True)
    grouped = x[order].astype(np.float64)
    if weights is not None:
        grouped *= weights[order, None]
    sums = np.zeros((n_clusters, x.shape[1]))
    if len(x):
        sums[present] = np.add.reduceat(grouped, starts, axis=0)
    cluster_weights = np.bincount(
        labels,
        weights=None if weights is None else weights.astype(np.float64),
        minlength=n_clusters,
    ).astype(np.float64)
    return sums, cluster_weights


def block_stats(
    x: np.ndarray,
    centers: np.ndarray,
    *,
    prev_labels: np.ndarray | None = None,
    weights: np.ndarray | None = None,
    row_offset: int = 0,
    n_farthest: int | None = None,
    with_moments: bool = False,
) -> tuple[ChunkStats, np.ndarray]:
    """One block's share of a Lloyd pass: labels and partial statistics.

    Parameters
    ----------
    x : ndarray of shape (n, d)
        The block's rows.
    centers : ndarray of shape (k, d)
        Current centers, in the dtype of ``x``.
    prev_labels : ndarray of shape (n,), optional
        The labels of the previous pass; ``None`` on the first pass, when
        every label counts as changed.
    weights : ndarray of shape (n,), optional
        Non-negative sample weights; ``None`` means all ones.
    row_offset : int
        Global index of the block's first row (names re-seeding candidates).
    n_farthest : int, optional
        How many farthest points to report; defaults to k.
    with_moments : bool
        Also return the column moments (used once, for ``tol``).

    Returns
    -------
    stats : ChunkStats
    labels : ndarray of shape (n,), int64
    """
    k = len(centers)
    labels, sqdist = assign(x, centers)
    sums, cluster_weights = cluster_sums(x, labels, weights, k)
    objective = float(sqdist.sum() if weights is None else np.dot(weights, sqdist))
    changed = len(x) if prev_labels is None else int(np.count_nonzero(labels != prev_labels))
    farthest = Farthest.select(
        sqdist, labels, weights, x, row_offset, k if n_farthest is None else n_farthest
    )
    stats = ChunkStats(
        sums=sums,
        weights=cluster_weights,
        objective=objective,
        changed=changed,
        farthest=farthest,
        moments=Moments.of_block(x) if with_moments else None,
    )
    return stats, labels
