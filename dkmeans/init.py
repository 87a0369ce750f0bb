"""Initial centers: "random", greedy "k-means++", or an explicit array.

k-means++ runs in memory: on all of X when X takes at most
``KMEANS_PLUSPLUS_MAX_BYTES``, otherwise on a uniform random sample of
``sample_size`` rows (read block by block; only the blocks holding sampled
rows are read). Row choices depend only on the random state and the number
of rows, so the centers are the same for any chunking and scheduler.
"""

from __future__ import annotations

import numbers

import dask.array as da
import numpy as np

from dkmeans import validation

# k-means++ on all rows up to this size of X, on a sample of rows above it.
KMEANS_PLUSPLUS_MAX_BYTES = 256 * 2**20
DEFAULT_SAMPLE_SIZE = 2**17


def check_random_state(seed) -> np.random.Generator:
    """A NumPy Generator from None, an int, a Generator or a RandomState."""
    if seed is None:
        return np.random.default_rng()
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, np.random.RandomState):
        return np.random.default_rng(seed.randint(np.iinfo(np.int32).max))
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
        return np.random.default_rng(int(seed))
    raise ValueError(
        f"random_state must be None, an int, a numpy Generator or RandomState, got {seed!r}"
    )


def _take_rows(X: da.Array, rows: np.ndarray) -> np.ndarray:
    """Rows of X (in the order given), reading only the blocks that hold them."""
    order = np.argsort(rows)
    taken = np.empty((len(rows), X.shape[1]), dtype=X.dtype)
    taken[order] = X[rows[order]].compute()
    return taken


def greedy_kmeans_plusplus(
    points: np.ndarray,
    n_clusters: int,
    rng: np.random.Generator,
    weights: np.ndarray | None = None,
    n_local_trials: int | None = None,
) -> np.ndarray:
    """Greedy k-means++ (Arthur & Vassilvitskii, 2007) on in-memory points.

    Each new center is the best of ``n_local_trials`` candidates (default
    ``2 + ln k``, as scikit-learn) drawn with probability proportional to
    weight times squared distance to the nearest chosen center.

    Parameters
    ----------
    points : ndarray of shape (m, d)
    n_clusters : int
    rng : numpy.random.Generator
    weights : ndarray of shape (m,), optional
        Non-negative, at least one positive.
    n_local_trials : int, optional

    Returns
    -------
    ndarray of shape (n_clusters, d), dtype of ``points``
    """
    m = len(points)
    w = np.ones(m) if weights is None else np.asarray(weights, dtype=np.float64)
    if n_local_trials is None:
        n_local_trials = 2 + int(np.log(n_clusters))
    x64 = points.astype(np.float64, copy=False)
    x_sq = np.einsum("ij,ij->i", x64, x64)

    def sq_dist_to(rows: np.ndarray) -> np.ndarray:
        c = x64[rows]
        d = x_sq[rows][:, None] - 2 * (c @ x64.T) + x_sq[None, :]
        return np.maximum(d, 0, out=d)

    centers = np.empty((n_clusters, points.shape[1]), dtype=points.dtype)
    first = rng.choice(m, p=w / w.sum())
    centers[0] = points[first]
    closest = sq_dist_to(np.array([first]))[0]
    potential = closest @ w
    for c in range(1, n_clusters):
        if potential <= 0:  # every weighted point already is a center: take any
            candidates = rng.choice(m, size=1, p=w / w.sum())
        else:
            cumulative = np.cumsum(w * closest)
            targets = rng.uniform(size=n_local_trials) * cumulative[-1]
            candidates = np.minimum(np.searchsorted(cumulative, targets), m - 1)
        trial = np.minimum(closest, sq_dist_to(candidates))
        trial_potential = trial @ w
        best = int(np.argmin(trial_potential))
        closest, potential = trial[best], trial_potential[best]
        centers[c] = points[candidates[best]]
    return centers


def initial_centers(
    X: da.Array,
    n_clusters: int,
    init,
    *,
    rng: np.random.Generator,
    weights: da.Array | None = None,
    sample_size: int | None = None,
) -> np.ndarray:
    """Compute the starting centers for Lloyd.

    Parameters
    ----------
    X : dask.array.Array of shape (n, d)
    n_clusters : int
    init : {"k-means++", "random"} or array of shape (n_clusters, d)
    rng : numpy.random.Generator
    weights : dask.array.Array of shape (n,), optional
        Sample weights; "random" draws rows with probability proportional to
        weight, k-means++ weighs its potential with them.
    sample_size : int, optional
        Rows k-means++ works on when X is larger than
        ``KMEANS_PLUSPLUS_MAX_BYTES`` (default ``DEFAULT_SAMPLE_SIZE``).

    Returns
    -------
    ndarray of shape (n_clusters, d), in X's dtype
    """
    n, d = X.shape
    if isinstance(init, str):
        if init == "random":
            p = None
            if weights is not None:
                w = weights.compute()
                p = w / w.sum()
                if np.count_nonzero(p) < n_clusters:
                    raise ValueError(
                        f"init='random' needs at least n_clusters={n_clusters} rows of "
                        f"positive sample_weight, got {np.count_nonzero(p)}"
                    )
            rows = rng.choice(n, size=n_clusters, replace=False, p=p)
            centers = _take_rows(X, rows)
            validation.check_finite_block(centers, block=0, row_offset=0, name="X (init rows)")
            return centers
        if init == "k-means++":
            if n * d * X.dtype.itemsize <= KMEANS_PLUSPLUS_MAX_BYTES:
                points = X.compute()
                w = None if weights is None else weights.compute()
            else:
                size = min(n, sample_size or DEFAULT_SAMPLE_SIZE)
                rows = np.sort(rng.choice(n, size=size, replace=False))
                points = _take_rows(X, rows)
                w = None if weights is None else weights[rows].compute()
            validation.check_finite_block(points, block=0, row_offset=0, name="X (init sample)")
            return greedy_kmeans_plusplus(points, n_clusters, rng, weights=w)
        raise ValueError(f"init must be 'k-means++', 'random' or an array, got {init!r}")
    centers = np.asarray(init)
    if centers.shape != (n_clusters, d):
        raise ValueError(
            f"init array has shape {centers.shape}, expected (n_clusters, n_features) "
            f"= ({n_clusters}, {d})"
        )
    if centers.dtype.kind not in "biuf":
        raise TypeError(f"init array must hold real numbers, got dtype {centers.dtype}")
    validation.check_finite_block(centers, block=0, row_offset=0, name="init array")
    return centers.astype(X.dtype)
