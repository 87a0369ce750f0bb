"""Seeding: the initial centers, by "k-means||", greedy "k-means++", "random", or an array.

k-means|| (Bahmani et al., 2012) is the default and the one for data larger
than memory; see :func:`kmeans_parallel`. k-means++ runs in memory: on all
of X when X takes at most ``KMEANS_PLUSPLUS_MAX_BYTES``, otherwise on a
uniform random sample of ``sample_size`` rows (only the blocks holding
sampled rows are read). "random" takes k distinct rows. Row choices depend
only on the random state and the row indices, so the centers are the same
for any scheduler and (k-means|| up to floating-point ties) any chunking.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import dask.array as da
import numpy as np

from dkmeans import kernel, passes, state, validation
from dkmeans.passes import Block

# k-means++ on all rows up to this size of X, on a sample of rows above it.
KMEANS_PLUSPLUS_MAX_BYTES = 256 * 2**20
DEFAULT_SAMPLE_SIZE = 2**17
# k-means||: rounds of oversampling, and candidates drawn per round (x k).
DEFAULT_ROUNDS = validation.PARAMETERS["init_rounds"].default
DEFAULT_OVERSAMPLING = validation.PARAMETERS["init_oversampling"].default


def generator(seed) -> np.random.Generator:
    """A NumPy Generator from ``random_state``: None, an int, a Generator or a RandomState."""
    seed = validation.PARAMETERS["random_state"].check(seed, "random_state")
    if seed is None:
        return np.random.default_rng()
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, np.random.RandomState):
        return np.random.default_rng(seed.randint(np.iinfo(np.int32).max))
    return np.random.default_rng(int(seed))


def spawn_generators(rng: np.random.Generator, n: int) -> list[np.random.Generator]:
    """``n`` independent generators, one per run (NumPy's ``Generator.spawn``).

    Child ``r`` depends only on the parent's seed and ``r``, so run 0 of a
    fit with ``n_init=R`` starts exactly as the fit with ``n_init=1``.
    """
    try:
        return rng.spawn(n)
    except TypeError:  # a bit generator without a SeedSequence
        return [np.random.default_rng(int(rng.integers(2**62))) for _ in range(n)]


def _take_rows(X: da.Array, rows: np.ndarray, retries: int) -> np.ndarray:
    """Rows of X (in the order given), reading only the blocks that hold them."""
    order = np.argsort(rows)
    taken = np.empty((len(rows), X.shape[1]), dtype=X.dtype)
    (taken[order],) = passes.compute(X[rows[order]], retries=retries)
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
    weight times squared distance to the nearest chosen center. Distances
    and potentials are computed in a fixed order in float64
    (:func:`dkmeans.kernel.trial_potentials`, BLAS only as a certified filter),
    so the centers are bitwise the same on every CPU and BLAS.

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
    rows = kernel.float_rows(points)  # float32 stays: distances are float64 anyway
    centers = np.empty((n_clusters, points.shape[1]), dtype=points.dtype)
    first = rng.choice(m, p=w / w.sum())
    centers[0] = points[first]
    closest = kernel.sqdist_to(rows, rows[first])
    potential = kernel.fixed_sum(closest, weights)
    norms = kernel.point_norms(rows)
    values = np.empty((n_local_trials, m))  # reused at every step
    for c in range(1, n_clusters):
        if potential <= 0:  # every weighted point already is a center: take any
            candidates = rng.choice(m, size=1, p=w / w.sum())
        else:
            cumulative = np.cumsum(w * closest)
            targets = rng.uniform(size=n_local_trials) * cumulative[-1]
            candidates = np.minimum(np.searchsorted(cumulative, targets), m - 1)
        trials = rows[candidates]
        _, potentials = kernel.trial_potentials(
            rows, closest, weights, trials, norms, out=values[: len(trials)]
        )
        best = int(np.argmin(potentials))
        closest, potential = values[best].copy(), potentials[best]
        centers[c] = points[candidates[best]]
    return centers


def _draw_key(rng: np.random.Generator) -> np.uint64:
    """A fresh key for :func:`row_uniforms`, drawn from ``rng``."""
    return np.uint64(rng.integers(0, 2**64, dtype=np.uint64))


def row_uniforms(key: np.uint64, row_offset: int, n_rows: int) -> np.ndarray:
    """Uniform draws in (0, 1] for rows ``row_offset ..``, the same whatever the blocks.

    Row i's draw is output i of a SplitMix64 generator seeded with ``key``
    (:func:`dkmeans.kernel.row_uniforms`): a function of the key and i alone,
    so a block produces the same numbers for its rows as any other chunking
    would, at about a nanosecond per row.
    """
    return kernel.row_uniforms(key, row_offset, n_rows)


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


def _round_task(
    block: Block, x, weights, *, states, candidates, first_new, keys, oversampling, check
) -> list:
    """One block of a k-means|| pass, for each run in it: update, then sample or weigh.

    Each run's state (two stores: each row's nearest candidate so far, and its
    squared distance) takes in the candidates from ``first_new`` on: only the
    distances to those are computed (:func:`dkmeans.kernel.nearer`). Then a
    round samples (``keys[r]`` is its run's key of draws; see
    :class:`Candidates`), and the last pass (``keys[r]`` None) weighs each
    candidate by the weight of the rows nearest to it.

    Row i is sampled when ``u_i * cost < l * w_i * d_i^2`` with the *total*
    cost; the block only knows its own cost, which is smaller, so it keeps
    the rows that pass with it (a superset, about ``l`` rows per block) and
    the client applies the exact rule once the total is known. ``oversampling``
    holds each run's l.
    """
    if check:
        validation.check_finite_block(x, block.index, block.start)
        if weights is not None:
            validation.check_weights_block(weights, block.index, block.start)
    results = []
    for run, (run_candidates, first, key, l_factor) in enumerate(
        zip(candidates, first_new, keys, oversampling, strict=True)
    ):
        nearest_state, sqdist_state = states[2 * run], states[2 * run + 1]
        nearest, sqdist = kernel.nearer(
            x, run_candidates, first, nearest_state.read(), sqdist_state.read()
        )
        nearest_state.write(nearest)
        sqdist_state.write(sqdist)
        if key is None:  # the last pass: the weight nearest to each candidate
            mass = np.bincount(nearest, weights=weights, minlength=len(run_candidates))
            results.append(mass.astype(np.float64))
            continue
        wd = sqdist if weights is None else sqdist * weights
        cost = kernel.fixed_sum(wd)
        draws = row_uniforms(key, block.start, len(x))
        keep = np.flatnonzero(draws * cost < l_factor * wd)
        results.append(Candidates(cost, block.start + keep, draws[keep], wd[keep], x[keep]))
    return results


def _combine_round(parts: list) -> Candidates | np.ndarray:
    """Candidates of a round combine as such; the last pass's weights add up."""
    if isinstance(parts[0], Candidates):
        return Candidates.combine(parts)
    return sum(parts[1:], parts[0])


def _each_run(task, arrays, combine, split_every: int, retries: int, **constants) -> list:
    """Each run's combined result of a pass whose tasks return one result per run."""
    return passes.map_reduce(
        task,
        arrays,
        combine=passes.per_run(combine),
        split_every=split_every,
        retries=retries,
        **constants,
    )


def _first_centers(
    X: da.Array, rngs: list[np.random.Generator], weights, split_every: int, retries: int
):
    """One row per run drawn uniformly (weighted: with probability proportional to its weight).

    Unweighted, random indices read at most one block per run; weighted, one
    pass finds for each run the row with the smallest ``-log(u_i) / w_i``
    (an exponential race: the winner is distributed as the weights).
    """
    if weights is None:
        rows = np.array([rng.integers(X.shape[0]) for rng in rngs])
    else:
        keys = [_draw_key(rng) for rng in rngs]
        winners = _each_run(_race_task, [weights], min, split_every, retries, keys=keys)
        rows = np.array([winner.row for winner in winners])
    taken = _take_rows(X, rows, retries)
    validation.check_finite_block(taken, block=0, row_offset=0, name="X (init rows)")
    return [taken[[run]] for run in range(len(rngs))]


def _race_task(block: Block, weights, *, states, keys) -> list[RaceWinner]:
    """Each run's earliest arrival in one block of the weights (X is not read)."""
    winners = []
    for key in keys:
        time, row = kernel.exponential_race(row_uniforms(key, block.start, block.n_rows), weights)
        winners.append(RaceWinner(time, block.start + row))
    return winners


@dataclass(order=True, frozen=True)
class RaceWinner:
    """A block's earliest arrival; ``min`` breaks ties by the lowest row."""

    time: float
    row: int


def kmeans_parallel(
    X: da.Array,
    n_clusters: int | Sequence[int],
    *,
    rngs: list[np.random.Generator],
    weights: da.Array | None = None,
    rounds: int = DEFAULT_ROUNDS,
    oversampling: float = DEFAULT_OVERSAMPLING,
    split_every: int = 8,
    retries: int = 0,
    state: str | os.PathLike | state.Placement = "auto",
) -> list[np.ndarray]:
    """k-means|| (scalable k-means++, Bahmani et al. 2012): few passes, any size of X.

    For each run (one per generator in ``rngs``):

    1. One row drawn at random (weighted by ``sample_weight``).
    2. ``rounds`` passes; each samples row i with probability
       ``min(1, l * w_i * d_i^2 / cost)``, d_i the distance to the nearest
       candidate so far, l = ``oversampling`` x k, cost the total of
       ``w_i * d_i^2`` (about l new candidates per round).
    3. One pass weighs each candidate by the weight of the rows nearest to it.
    4. Weighted greedy k-means++ on the candidates, in memory, picks k.

    Every row's nearest candidate so far and its squared distance are kept
    between passes (per-row state: in memory or Zarr, ``state`` as
    ``KMeans(label_store=...)`` takes it, 12 bytes per row and run), so each
    pass computes the distances to that round's new candidates only; the
    nearest is exact, as labels are (:mod:`dkmeans.kernel`).

    The runs share every pass: ``rounds + 1`` passes over X (and one over
    the weights, for a weighted first row) whatever the number of runs, and
    each run's centers are the same as if it ran alone. Each row's random
    draw depends on the seed and its row index only, so the centers are the
    same under every scheduler and, up to ties in floating point, for every
    chunking of X.

    ``n_clusters`` may give each run its own k (a sweep over k,
    :func:`dkmeans.sweep`): run r then draws as a fit with ``n_clusters[r]``
    alone would.

    Returns
    -------
    list of ndarray of shape (n_clusters, d), in X's dtype, one per run
    """
    n_runs = len(rngs)
    ks = per_run_clusters(n_clusters, n_runs)
    l_factors = [oversampling * k for k in ks]
    candidates = _first_centers(X, rngs, weights, split_every, retries)
    stores = _state_stores(state, X.chunks[0], n_runs)
    try:
        first_new = [0] * n_runs  # the candidates each run's state does not account for yet
        growing = list(range(n_runs))  # runs still sampling
        for round_ in range(rounds):
            if not growing:
                break
            found = _round(
                X,
                weights,
                growing,
                candidates,
                first_new,
                stores,
                split_every,
                retries,
                keys=[_draw_key(rngs[run]) for run in growing],
                oversampling=[l_factors[run] for run in growing],
                check=round_ == 0,
            )
            for run, run_found in zip(list(growing), found, strict=True):
                if run_found.cost == 0:  # every row is a candidate already
                    growing.remove(run)
                    continue
                weighted_sqdist = l_factors[run] * run_found.weighted_sqdist
                new = run_found.draws * run_found.cost < weighted_sqdist
                candidates[run] = np.concatenate([candidates[run], run_found.points[new]])
        for run, (rng, k) in enumerate(zip(rngs, ks, strict=True)):
            if len(candidates[run]) < k:  # few distinct rows: complete with random ones
                extra = rng.choice(X.shape[0], size=k - len(candidates[run]), replace=False)
                extra_rows = _take_rows(X, np.sort(extra), retries)
                candidates[run] = np.concatenate([candidates[run], extra_rows])
        everyone = list(range(n_runs))
        masses = _round(
            X,
            weights,
            everyone,
            candidates,
            first_new,
            stores,
            split_every,
            retries,
            keys=[None] * n_runs,
            oversampling=l_factors,
            check=rounds == 0,
        )
    finally:  # the per-row state is not needed after the last pass
        for run_stores in stores:
            for store in run_stores:
                store.discard()
    return [
        greedy_kmeans_plusplus(run_candidates, k, rng, weights=mass)
        for run_candidates, k, rng, mass in zip(candidates, ks, rngs, masses, strict=True)
    ]


def _round(X, weights, runs, candidates, first_new, stores, split_every, retries, **constants):
    """One k-means|| pass for ``runs``; their states then account for all their candidates."""
    results = _each_run(
        _round_task,
        [X, weights],
        _combine_round,
        split_every,
        retries,
        states=[store for run in runs for store in stores[run]],  # map_reduce's state stores
        candidates=[candidates[run] for run in runs],
        first_new=[first_new[run] for run in runs],
        **constants,
    )
    for run in runs:
        first_new[run] = len(candidates[run])
    return results


def _state_stores(where, row_chunks, n_runs: int) -> list[tuple[state.RowStore, state.RowStore]]:
    """Each run's (nearest candidate, squared distance) stores for k-means||.

    As ``label_store`` says: "auto" and "memory" as given; "zarr" or a path, a
    temporary Zarr array (a path is the labels' own place), in the scratch
    location if there is one.
    """
    if not isinstance(where, state.Placement):
        where = state.Placement(where)
    spec = where.spec
    if spec == "auto":  # both stores in the same place
        spec = state.choose_kind(n_runs * sum(row_chunks) * (4 + 8), "k-means|| state")
    spec = spec if spec == "memory" else "zarr"
    place = {"scratch": where.scratch, "storage_options": where.storage_options}
    nearest = state.make_stores(spec, row_chunks, np.int32, n_runs, **place)
    sqdist = state.make_stores(spec, row_chunks, np.float64, n_runs, **place)
    return list(zip(nearest, sqdist, strict=True))


def per_run_clusters(n_clusters: int | Sequence[int], n_runs: int) -> list[int]:
    """Each run's k: one k for every run, or one per run (a sweep over k)."""
    if isinstance(n_clusters, int | np.integer):
        return [int(n_clusters)] * n_runs
    ks = [int(k) for k in n_clusters]
    if len(ks) != n_runs:
        raise ValueError(f"got {len(ks)} values of n_clusters for {n_runs} runs")
    return ks


def initial_centers(
    X: da.Array,
    n_clusters: int | Sequence[int],
    init,
    *,
    rngs: list[np.random.Generator],
    weights: da.Array | None = None,
    sample_size: int | None = None,
    rounds: int = DEFAULT_ROUNDS,
    oversampling: float = DEFAULT_OVERSAMPLING,
    split_every: int = 8,
    retries: int = 0,
    state: str | os.PathLike | state.Placement = "auto",
) -> list[np.ndarray]:
    """Compute the starting centers of each run (one per generator in ``rngs``).

    The runs share the reads of X: k-means|| makes the same passes for any
    number of runs, "random" and a k-means++ sample read the rows of all
    runs at once.

    Parameters
    ----------
    X : dask.array.Array of shape (n, d)
    n_clusters : int or sequence of int
        k, or each run's k (a sweep over k; not with an array ``init``).
    init : {"k-means||", "k-means++", "random"} or array of shape (n_clusters, d)
    rngs : list of numpy.random.Generator
        One per run (see :func:`spawn_generators`).
    weights : dask.array.Array of shape (n,), optional
        Sample weights; "random" draws rows with probability proportional to
        weight, k-means++ weighs its potential with them.
    sample_size : int, optional
        Rows k-means++ works on when X is larger than
        ``KMEANS_PLUSPLUS_MAX_BYTES`` (default ``DEFAULT_SAMPLE_SIZE``).
    rounds, oversampling : int, float
        k-means|| rounds, and candidates per round as a multiple of k.
    split_every : int
        Fan-in of the reductions of k-means||.
    retries : int
        See :func:`dkmeans.passes.map_reduce`.
    state : {"auto", "memory", "zarr"}, path or dkmeans.state.Placement
        Where k-means|| keeps its per-row state, as ``KMeans(label_store=...)``
        (a path means a temporary Zarr array: the path is the labels' place),
        or a Placement (with ``scratch``, where temporary arrays go).

    Returns
    -------
    list of ndarray of shape (n_clusters, d), in X's dtype, one per run
    """
    if not isinstance(init, str):
        if not isinstance(n_clusters, int | np.integer):
            raise ValueError("an init array gives one k: it cannot start runs of several k")
        centers = _checked_init_array(init, n_clusters, X.shape[1]).astype(X.dtype)
        return [centers for _ in rngs]
    if init == "k-means||":
        return kmeans_parallel(
            X,
            n_clusters,
            rngs=rngs,
            weights=weights,
            rounds=rounds,
            oversampling=oversampling,
            split_every=split_every,
            retries=retries,
            state=state,
        )
    if init == "random":
        return _random_rows(X, n_clusters, rngs, weights, retries)
    if init == "k-means++":
        return _kmeans_plusplus(X, n_clusters, rngs, weights, sample_size, retries)
    raise ValueError(f"init must be 'k-means||', 'k-means++', 'random' or an array, got {init!r}")


def _random_rows(X, n_clusters, rngs, weights, retries: int) -> list[np.ndarray]:
    """k distinct rows per run (drawn with probability proportional to weight)."""
    ks = per_run_clusters(n_clusters, len(rngs))
    p = None
    if weights is not None:
        (w,) = passes.compute(weights, retries=retries)
        p = w / w.sum()
        if np.count_nonzero(p) < max(ks):
            raise ValueError(
                f"init='random' needs at least n_clusters={max(ks)} rows of "
                f"positive sample_weight, got {np.count_nonzero(p)}"
            )
    rows = [
        rng.choice(X.shape[0], size=k, replace=False, p=p) for rng, k in zip(rngs, ks, strict=True)
    ]
    centers = _take_rows(X, np.concatenate(rows), retries)
    validation.check_finite_block(centers, block=0, row_offset=0, name="X (init rows)")
    return np.split(centers, np.cumsum(ks)[:-1])


def _kmeans_plusplus(X, n_clusters, rngs, weights, sample_size, retries: int):
    """Greedy k-means++ per run, on all rows of a small X or on each run's sample of rows."""
    ks = per_run_clusters(n_clusters, len(rngs))
    n, d = X.shape
    if n * d * X.dtype.itemsize <= KMEANS_PLUSPLUS_MAX_BYTES:  # all rows, for every run
        taken, w = passes.compute(X, weights, retries=retries)
        points = [taken] * len(rngs)
        w = [w] * len(rngs)
    else:  # each run's own sample, read together
        size = min(n, sample_size or DEFAULT_SAMPLE_SIZE)
        rows = np.concatenate([np.sort(rng.choice(n, size=size, replace=False)) for rng in rngs])
        taken = _take_rows(X, rows, retries)
        points = np.split(taken, len(rngs))
        w = [None] * len(rngs)
        if weights is not None:
            (w,) = passes.compute(weights[rows], retries=retries)
            w = np.split(w, len(rngs))
    validation.check_finite_block(taken, block=0, row_offset=0, name="X (init sample)")
    return [
        greedy_kmeans_plusplus(run_points, k, rng, weights=run_w)
        for run_points, k, rng, run_w in zip(points, ks, rngs, w, strict=True)
    ]


def _checked_init_array(init, n_clusters: int, n_features: int) -> np.ndarray:
    centers = np.asarray(init)
    if centers.shape != (n_clusters, n_features):
        raise ValueError(
            f"init array has shape {centers.shape}, expected (n_clusters, n_features) "
            f"= ({n_clusters}, {n_features})"
        )
    if centers.dtype.kind not in "biuf":
        raise TypeError(f"init array must hold real numbers, got dtype {centers.dtype}")
    validation.check_finite_block(centers, block=0, row_offset=0, name="init array")
    return centers
