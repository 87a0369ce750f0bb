"""Initial centers: "k-means||", greedy "k-means++", "random", or an explicit array.

k-means|| (Bahmani et al., 2012) is the default and the one for data larger
than memory; see :func:`kmeans_parallel`. k-means++ runs in memory: on all
of X when X takes at most ``KMEANS_PLUSPLUS_MAX_BYTES``, otherwise on a
uniform random sample of ``sample_size`` rows (only the blocks holding
sampled rows are read). "random" takes k distinct rows. Row choices depend
only on the random state and the row indices, so the centers are the same
for any scheduler and (k-means|| up to floating-point ties) any chunking.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import dask
import dask.array as da
import numpy as np

from dkmeans import kernel, validation
from dkmeans.lloyd import map_row_blocks
from dkmeans.reduce import reduce_blocks

# k-means++ on all rows up to this size of X, on a sample of rows above it.
KMEANS_PLUSPLUS_MAX_BYTES = 256 * 2**20
DEFAULT_SAMPLE_SIZE = 2**17
# k-means||: rounds of oversampling, and candidates drawn per round (x k).
DEFAULT_ROUNDS = 5
DEFAULT_OVERSAMPLING = 2.0


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


def _philox_key(rng: np.random.Generator) -> np.ndarray:
    """A fresh Philox key (two 64-bit words) drawn from ``rng``."""
    return rng.integers(0, np.iinfo(np.int64).max, size=2).astype(np.uint64)


def row_uniforms(key: np.ndarray, row_offset: int, n_rows: int) -> np.ndarray:
    """Uniform draws in (0, 1] for rows ``row_offset ..``, the same whatever the blocks.

    Row i's draw comes from Philox counter i under ``key``, so a block
    produces the same numbers for its rows as any other chunking would.
    """
    bits = np.random.Philox(key=key)
    bits.advance(int(row_offset))  # one counter (4 x 64 bits) per row
    return 1.0 - np.random.Generator(bits).random((n_rows, 4))[:, 0]


@dataclass
class Candidates:
    """Rows sampled by one block in a k-means|| round, and the block's cost."""

    cost: float  # sum of weight x squared distance to the current candidates
    rows: np.ndarray  # global row indices, increasing
    draws: np.ndarray  # each row's uniform draw
    weighted_sqdist: np.ndarray  # each row's weight x squared distance
    points: np.ndarray  # (m, d), X's dtype

    @staticmethod
    def combine(parts: list[Candidates]) -> Candidates:
        return Candidates(
            cost=sum(p.cost for p in parts),
            rows=np.concatenate([p.rows for p in parts]),
            draws=np.concatenate([p.draws for p in parts]),
            weighted_sqdist=np.concatenate([p.weighted_sqdist for p in parts]),
            points=np.concatenate([p.points for p in parts]),
        )


def _oversample_task(
    x_parts, table_parts, weights, *, candidates, key, oversampling, check
) -> np.ndarray:
    """One block of a k-means|| round: its cost, and every row that might be sampled.

    Row i is sampled when ``u_i * cost < l * w_i * d_i^2`` with the *total*
    cost; the block only knows its own cost, which is smaller, so it keeps
    the rows that pass with it (a superset, about ``l`` rows per block) and
    the client applies the exact rule once the total is known.
    """
    (x,), (table,) = x_parts, table_parts
    block, row_offset = (int(v) for v in table[0])
    if check:
        validation.check_finite_block(x, block, row_offset)
        if weights is not None:
            validation.check_weights_block(weights, block, row_offset)
    _, sqdist = kernel.assign(x, candidates)
    wd = sqdist if weights is None else sqdist * weights
    cost = float(wd.sum())
    draws = row_uniforms(key, row_offset, len(x))
    keep = np.flatnonzero(draws * cost < oversampling * wd)
    out = np.empty(1, dtype=object)
    out[0] = Candidates(cost, row_offset + keep, draws[keep], wd[keep], x[keep])
    return out


def _weigh_task(x_parts, table_parts, weights, *, candidates) -> np.ndarray:
    """One block's weight nearest to each candidate."""
    (x,), _ = x_parts, table_parts
    labels, _ = kernel.assign(x, candidates)
    out = np.empty(1, dtype=object)
    out[0] = np.bincount(labels, weights=weights, minlength=len(candidates)).astype(np.float64)
    return out


def _first_center(X: da.Array, rng: np.random.Generator, weights: da.Array | None, split_every):
    """One row drawn uniformly (weighted: with probability proportional to its weight).

    Unweighted, a random index reads one block; weighted, one pass finds the
    row with the smallest ``-log(u_i) / w_i`` (an exponential race: the
    winner is distributed as the weights).
    """
    if weights is None:
        return _take_rows(X, rng.integers(X.shape[0], size=1))
    key = _philox_key(rng)
    parts = map_row_blocks(_race_task, X, weights, key=key)
    best = reduce_blocks(parts, combine=min, split_every=split_every).compute()
    return _take_rows(X, np.array([best.row]))


def _race_task(x_parts, table_parts, weights, *, key) -> np.ndarray:
    (x,), (table,) = x_parts, table_parts
    row_offset = int(table[0][1])
    with np.errstate(divide="ignore"):
        times = -np.log(row_uniforms(key, row_offset, len(x))) / weights
    i = int(np.argmin(times))
    out = np.empty(1, dtype=object)
    out[0] = RaceWinner(float(times[i]), row_offset + i)
    return out


@dataclass(order=True, frozen=True)
class RaceWinner:
    """A block's earliest arrival; ``min`` breaks ties by the lowest row."""

    time: float
    row: int


def kmeans_parallel(
    X: da.Array,
    n_clusters: int,
    *,
    rng: np.random.Generator,
    weights: da.Array | None = None,
    rounds: int = DEFAULT_ROUNDS,
    oversampling: float = DEFAULT_OVERSAMPLING,
    split_every: int = 8,
) -> np.ndarray:
    """k-means|| (scalable k-means++, Bahmani et al. 2012): few passes, any size of X.

    1. One row drawn at random (weighted by ``sample_weight``).
    2. ``rounds`` passes; each computes every row's squared distance d_i to
       the candidates so far and samples row i with probability
       ``min(1, l * w_i * d_i^2 / cost)``, l = ``oversampling`` x k, cost the
       total of ``w_i * d_i^2`` (about l new candidates per round).
    3. One pass weighs each candidate by the weight of the rows nearest to it.
    4. Weighted greedy k-means++ on the candidates, in memory, picks k.

    At most ``rounds + 2`` passes over X (``rounds + 1`` without weights).
    Each row's random draw depends on the seed and its row index only, so the
    centers are the same under every scheduler and, up to ties in floating
    point, for every chunking of X.

    Returns
    -------
    ndarray of shape (n_clusters, d), in X's dtype
    """
    candidates = _first_center(X, rng, weights, split_every)
    validation.check_finite_block(candidates, block=0, row_offset=0, name="X (init row)")
    l_factor = oversampling * n_clusters
    for round_ in range(rounds):
        key = _philox_key(rng)
        parts = map_row_blocks(
            _oversample_task,
            X,
            weights,
            candidates=candidates,
            key=key,
            oversampling=l_factor,
            check=round_ == 0,
        )
        (found,) = dask.compute(
            reduce_blocks(parts, combine=Candidates.combine, split_every=split_every)
        )
        if found.cost == 0:  # every row is a candidate already
            break
        new = found.draws * found.cost < l_factor * found.weighted_sqdist
        candidates = np.concatenate([candidates, found.points[new]])
    if len(candidates) < n_clusters:  # few distinct rows: complete with random ones
        extra = rng.choice(X.shape[0], size=n_clusters - len(candidates), replace=False)
        candidates = np.concatenate([candidates, _take_rows(X, np.sort(extra))])
    parts = map_row_blocks(_weigh_task, X, weights, candidates=candidates)
    (mass,) = dask.compute(reduce_blocks(parts, combine=sum, split_every=split_every))
    return greedy_kmeans_plusplus(candidates, n_clusters, rng, weights=mass)


def initial_centers(
    X: da.Array,
    n_clusters: int,
    init,
    *,
    rng: np.random.Generator,
    weights: da.Array | None = None,
    sample_size: int | None = None,
    split_every: int = 8,
) -> np.ndarray:
    """Compute the starting centers for Lloyd.

    Parameters
    ----------
    X : dask.array.Array of shape (n, d)
    n_clusters : int
    init : {"k-means||", "k-means++", "random"} or array of shape (n_clusters, d)
    rng : numpy.random.Generator
    weights : dask.array.Array of shape (n,), optional
        Sample weights; "random" draws rows with probability proportional to
        weight, k-means++ weighs its potential with them.
    sample_size : int, optional
        Rows k-means++ works on when X is larger than
        ``KMEANS_PLUSPLUS_MAX_BYTES`` (default ``DEFAULT_SAMPLE_SIZE``).
    split_every : int
        Fan-in of the reductions of k-means||.

    Returns
    -------
    ndarray of shape (n_clusters, d), in X's dtype
    """
    n, d = X.shape
    if isinstance(init, str):
        if init == "k-means||":
            return kmeans_parallel(
                X, n_clusters, rng=rng, weights=weights, split_every=split_every
            )
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
        raise ValueError(
            f"init must be 'k-means||', 'k-means++', 'random' or an array, got {init!r}"
        )
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
