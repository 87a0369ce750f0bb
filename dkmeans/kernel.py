"""Per-block kernels: nearest-center labels and the block's partial statistics.

Everything here is a pure function of (block, centers, previous labels,
weights): no I/O, no globals, no Dask. The orchestration lives in
:mod:`dkmeans.lloyd`; the reference these kernels are tested against is a
brute-force float64 NumPy implementation in the tests.

Distances for the argmin use the expansion ``||c||² - 2 x·c`` (``||x||²`` does
not change the argmin) in the data's dtype, as scikit-learn does, with the dot
products from BLAS on cache-sized tiles. A compiled loop per tile then picks
the nearest center, and another accumulates the float64 sums, counts and
objective; the objective uses the exact difference ``x - c_a`` in float64, so
it does not suffer from the cancellation of the expansion. The compiled loops
release the GIL, so Dask's threads run blocks in parallel.

The dot products of a tile are formed either as ``tile @ centers.T`` (a row of
scores per point) or as ``centers @ tile.T`` (a row per center), whichever
:func:`_scores_by_row` says is faster for the shape. Both pick the lowest index
among the smallest scores; the choice depends on the dtype and shape only, so
a fit does not change with the scheduler or the worker that runs a block.
"""

from __future__ import annotations

import numba
import numpy as np
from numpy.typing import DTypeLike

from dkmeans.stats import ChunkStats, Farthest, Moments

# Rows per tile: the tile's k x rows scores stay near 1 MiB, in cache.
_TILE_ELEMENTS = 1 << 18


def _tile_rows(n_rows: int, n_clusters: int) -> int:
    return max(16, min(n_rows, _TILE_ELEMENTS // max(n_clusters, 1)))


def _scores_by_row(n_features: int, n_clusters: int) -> bool:
    """Whether float32 scores are formed as ``tile @ centers.T``, one row per point.

    OpenBLAS computes ``tile @ centers.T`` at up to twice the speed of
    ``centers @ tile.T``, but the argmin along a row of k scores
    (:func:`_nearest_by_row`) costs more per point than the argmin down
    columns (:func:`_nearest_by_column`), which dominates when the product is
    cheap (few centers and features) and gains nothing for many centers. The
    bounds come from timing both kernels on 250k-row blocks (2026-11-24, AMD
    EPYC Zen 4, OpenBLAS 0.3.31): e.g. 21.7 vs 28.3 ms at d=32, k=64; 8.8 vs
    13.8 at d=32, k=16; 213 vs 235 at d=128, k=256; but 4.3 vs 2.1 at d=2,
    k=8 and 252 vs 238 at d=32, k=1000.
    """
    return n_clusters <= 256 and (n_clusters >= 16 or n_features >= 32)


@numba.njit(nogil=True, cache=True)
def _nearest_by_column(dots_t, centers_sq, labels, best):  # pragma: no cover - compiled
    """Nearest center of each row from the (k, rows) dot products ``centers @ tile.T``.

    The score ``||c||² - 2 x·c`` is formed in the data's dtype and compared
    strictly (no fast-math), so ties go to the lowest index as with
    ``np.argmin``. The loop runs along rows for each center, which the
    compiler vectorises: several rows are compared per instruction.
    """
    k, n = dots_t.shape
    for i in range(n):
        best[i] = centers_sq[0] - (dots_t[0, i] + dots_t[0, i])
        labels[i] = 0
    for j in range(1, k):
        c_sq = centers_sq[j]
        for i in range(n):
            score = c_sq - (dots_t[j, i] + dots_t[j, i])
            if score < best[i]:
                best[i] = score
                labels[i] = j
    return labels


@numba.njit(nogil=True, cache=True)
def _nearest_by_row(dots, centers_sq, labels):  # pragma: no cover - compiled
    """Nearest center of each row from the (rows, k) float32 dot products ``tile @ centers.T``.

    Each score ``||c||² - 2 x·c`` (float32, as in :func:`_nearest_by_column`)
    becomes an int64 key: its bits mapped to an integer of the same order
    (negative floats have their magnitude bits flipped) in the high half, the
    center's index in the low half. The smallest key is then the smallest
    score, ties going to the lowest index, and an integer minimum over a
    row is something the compiler vectorises (a float argmin along a row it
    does not). Scores are never -0.0 (``||c||²`` is never), so the order is
    that of the floats.
    """
    n, k = dots.shape
    for i in range(n):
        smallest = np.int64(0x7FFFFFFFFFFFFFFF)
        for j in range(k):
            score = np.float32(centers_sq[j] - (dots[i, j] + dots[i, j]))
            bits = np.int64(score.view(np.int32))
            key = ((bits ^ ((bits >> 31) & 0x7FFFFFFF)) << 32) | j
            smallest = min(smallest, key)
        labels[i] = smallest & 0xFFFFFFFF
    return labels


@numba.njit(nogil=True, cache=True, fastmath={"reassoc"})
def _accumulate(x, labels, centers64, weights, sqdist, sums, totals):  # pragma: no cover
    """Exact float64 squared distance to the labelled center, and the running sums.

    ``reassoc`` lets the compiler vectorise the sum over features of each
    distance (its rounding then depends on the CPU's vector width, not on
    the chunking or the scheduler). An empty ``weights`` means all ones.
    Returns the tile's objective.
    """
    n, d = x.shape
    weighted = weights.shape[0] == n
    objective = 0.0
    for i in range(n):
        best = labels[i]
        dist = 0.0
        for f in range(d):
            diff = np.float64(x[i, f]) - centers64[best, f]
            dist += diff * diff
        sqdist[i] = dist
        w = weights[i] if weighted else 1.0
        for f in range(d):
            sums[best, f] += w * np.float64(x[i, f])
        totals[best] += w
        objective += w * dist
    return objective


@numba.njit(nogil=True, cache=True)
def _column_moments(x):  # pragma: no cover - compiled
    """Column means and centred sums of squares, two passes in float64."""
    n, d = x.shape
    mean = np.zeros(d)
    for i in range(n):
        for f in range(d):
            mean[f] += x[i, f]
    mean /= n
    m2 = np.zeros(d)
    for i in range(n):
        for f in range(d):
            diff = np.float64(x[i, f]) - mean[f]
            m2[f] += diff * diff
    return mean, m2


def column_moments(x: np.ndarray) -> Moments:
    """Row count, column means and centred sums of squares of a block."""
    mean, m2 = _column_moments(np.ascontiguousarray(x))
    return Moments(count=len(x), mean=mean, m2=m2)


def _assign_block(
    x: np.ndarray,
    centers: np.ndarray,
    weights: np.ndarray | None,
    label_dtype: DTypeLike = np.int64,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """Labels, exact squared distances, sums, totals and objective of one block."""
    n, d = x.shape
    k = len(centers)
    x = np.ascontiguousarray(x)
    centers = np.ascontiguousarray(centers, dtype=x.dtype)
    centers_sq = np.einsum("ij,ij->i", centers, centers)
    centers64 = centers.astype(np.float64)
    w = np.empty(0) if weights is None else np.ascontiguousarray(weights, dtype=np.float64)
    labels = np.empty(n, dtype=label_dtype)
    sqdist = np.empty(n, dtype=np.float64)
    sums = np.zeros((k, d))
    totals = np.zeros(k)
    objective = 0.0
    step = _tile_rows(n, k)
    by_row = x.dtype == np.float32 and _scores_by_row(d, k)
    best = np.empty(step, dtype=x.dtype)  # scratch of _nearest_by_column
    # One buffer for every tile's dot products: a fresh 1 MiB array per tile
    # costs page faults each time where malloc returns memory to the OS at
    # once (Dask's workers set MALLOC_TRIM_THRESHOLD_), which doubled the
    # kernel's time there.
    dots_buffer = np.empty(k * step, dtype=x.dtype)
    for start in range(0, n, step):
        stop = min(start + step, n)
        tile = x[start:stop]
        tile_labels = labels[start:stop]
        tile_dots = dots_buffer[: k * (stop - start)]
        if by_row:  # BLAS on a cache-sized tile, in the orientation _scores_by_row picks
            dots = tile_dots.reshape(stop - start, k)
            np.matmul(tile, centers.T, out=dots)
            _nearest_by_row(dots, centers_sq, tile_labels)
        else:
            dots_t = tile_dots.reshape(k, stop - start)
            np.matmul(centers, tile.T, out=dots_t)
            _nearest_by_column(dots_t, centers_sq, tile_labels, best)
        objective += _accumulate(
            tile,
            tile_labels,
            centers64,
            w[start:stop] if weights is not None else w,
            sqdist[start:stop],
            sums,
            totals,
        )
    return labels, sqdist, sums, totals, objective


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
    labels, sqdist, *_ = _assign_block(x, centers, None)
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


def block_stats(
    x: np.ndarray,
    centers: np.ndarray,
    *,
    prev_labels: np.ndarray | None = None,
    weights: np.ndarray | None = None,
    row_offset: int = 0,
    n_farthest: int | None = None,
    with_moments: bool = False,
    label_dtype: DTypeLike = np.int64,
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
        Most farthest points to report (default k); a block reports only as
        many as it has empty clusters, which bounds the clusters to re-seed.
    with_moments : bool
        Also return the column moments (used once, for ``tol``).
    label_dtype : numpy integer dtype
        Dtype of the returned labels; must hold ``k - 1``. The kernel writes
        them in this dtype directly: a pass writes and compares a quarter or
        less of the bytes of int64 labels (:func:`dkmeans.labels.label_dtype`).

    Returns
    -------
    stats : ChunkStats
    labels : ndarray of shape (n,), in ``label_dtype``
    """
    k = len(centers)
    label_dtype = np.dtype(label_dtype)
    if np.iinfo(label_dtype).max < k - 1:
        raise ValueError(f"label_dtype {label_dtype} cannot hold labels up to {k - 1}")
    labels, sqdist, sums, cluster_weights, objective = _assign_block(
        x, centers, weights, label_dtype
    )
    changed = len(x) if prev_labels is None else int(np.count_nonzero(labels != prev_labels))
    # A cluster empty over all of X is empty in every block, so the number of
    # clusters to re-seed is at most this block's count of empty clusters: a
    # block without one (the usual case) reports no candidates at all.
    n_empty = int(np.count_nonzero(cluster_weights == 0))
    m = min(n_empty, k if n_farthest is None else n_farthest)
    farthest = Farthest.select(sqdist, labels, weights, x, row_offset, m)
    stats = ChunkStats(
        sums=sums,
        weights=cluster_weights,
        objective=objective,
        changed=changed,
        farthest=farthest,
        moments=column_moments(x) if with_moments else None,
    )
    return stats, labels
