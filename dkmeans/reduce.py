"""Per-block statistics and their associative combine, tree-reduced with Dask.

A Lloyd pass maps the kernel over the row blocks of X; each block yields a
:class:`ChunkStats`. Stats are combined by :func:`combine` (sums add, the
farthest-point lists merge) in a tree with a fixed fan-in, built by
:func:`dask.array.reduction`, so the order of every floating-point addition
depends only on the chunking and ``split_every``, never on the scheduler.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import dask.array as da
import numpy as np


@dataclass
class Farthest:
    """The points farthest from their assigned centers: re-seeding candidates.

    Sorted by decreasing squared distance, ties by increasing row index, so
    the order is the same whatever the chunking. Only points of positive
    weight are candidates (a zero-weight point cannot make a cluster
    non-empty).
    """

    sqdist: np.ndarray  # (m,) float64, squared distance to the assigned center
    rows: np.ndarray  # (m,) int64, global row index in X
    labels: np.ndarray  # (m,) int64, the cluster each point is assigned to
    weights: np.ndarray  # (m,) float64
    points: np.ndarray  # (m, d) float64

    @classmethod
    def select(
        cls,
        sqdist: np.ndarray,
        labels: np.ndarray,
        weights: np.ndarray | None,
        x: np.ndarray,
        row_offset: int,
        m: int,
    ) -> Farthest:
        """Keep the ``m`` candidates of one block (ties by lowest row index)."""
        if m == 0:
            return cls.empty(x.shape[1])
        eligible = np.arange(len(sqdist)) if weights is None else np.flatnonzero(weights > 0)
        m = min(m, eligible.size)
        if m == 0:
            return cls.empty(x.shape[1])
        values = sqdist[eligible]
        # The m-th largest value; everything above it is in, then as many of
        # the values equal to it as fit, lowest rows first (deterministic ties).
        threshold = np.partition(values, values.size - m)[values.size - m]
        above = eligible[values > threshold]
        tied = eligible[values == threshold][: m - above.size]
        chosen = np.concatenate([above, tied])
        chosen = chosen[np.lexsort((chosen, -sqdist[chosen]))]
        return cls(
            sqdist=sqdist[chosen].astype(np.float64),
            rows=chosen.astype(np.int64) + row_offset,
            labels=labels[chosen].astype(np.int64),
            weights=np.ones(m) if weights is None else weights[chosen].astype(np.float64),
            points=x[chosen].astype(np.float64),
        )

    @classmethod
    def empty(cls, n_features: int) -> Farthest:
        return cls(
            sqdist=np.empty(0),
            rows=np.empty(0, dtype=np.int64),
            labels=np.empty(0, dtype=np.int64),
            weights=np.empty(0),
            points=np.empty((0, n_features)),
        )

    def merge(self, other: Farthest, m: int) -> Farthest:
        """The top ``m`` of both lists, in the same canonical order."""
        # Usually both are empty (no cluster went empty): skip the sorting.
        # Each list is already in canonical order and at most m long.
        if len(other.sqdist) == 0 and len(self.sqdist) <= m:
            return self
        if len(self.sqdist) == 0 and len(other.sqdist) <= m:
            return other
        sqdist = np.concatenate([self.sqdist, other.sqdist])
        rows = np.concatenate([self.rows, other.rows])
        keep = np.lexsort((rows, -sqdist))[:m]
        return Farthest(
            sqdist=sqdist[keep],
            rows=rows[keep],
            labels=np.concatenate([self.labels, other.labels])[keep],
            weights=np.concatenate([self.weights, other.weights])[keep],
            points=np.concatenate([self.points, other.points])[keep],
        )


@dataclass
class Moments:
    """Row count, column means and centred sums of squares (for ``tol``).

    Combined with Chan et al.'s pairwise update, which avoids the
    cancellation of a naive sum-of-squares formula.
    """

    count: int
    mean: np.ndarray  # (d,) float64
    m2: np.ndarray  # (d,) float64

    def merge(self, other: Moments) -> Moments:
        count = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / count)
        m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / count)
        return Moments(count=count, mean=mean, m2=m2)

    @property
    def variance(self) -> np.ndarray:
        """Population variance of each column (``np.var``'s default)."""
        return self.m2 / self.count


@dataclass
class ChunkStats:
    """What one block (or a subtree of blocks) contributes to a Lloyd pass."""

    sums: np.ndarray  # (k, d) float64: weighted sum of the points of each cluster
    weights: np.ndarray  # (k,) float64: total weight (count if unweighted) per cluster
    objective: float  # sum of w_i * ||x_i - c_{a_i}||², in float64
    changed: int  # points whose label differs from the previous pass
    farthest: Farthest
    moments: Moments | None = None  # first pass only


def combine(parts: Sequence[ChunkStats], n_farthest: int) -> ChunkStats:
    """Add a sequence of stats, left to right (an associative combine)."""
    total = parts[0]
    for part in parts[1:]:
        moments = None
        if total.moments is not None and part.moments is not None:
            moments = total.moments.merge(part.moments)
        total = ChunkStats(
            sums=total.sums + part.sums,
            weights=total.weights + part.weights,
            objective=total.objective + part.objective,
            changed=total.changed + part.changed,
            farthest=total.farthest.merge(part.farthest, n_farthest),
            moments=moments,
        )
    return total


def _chunk(block: np.ndarray, axis=None, keepdims=None, *, unwrap: Callable) -> Any:
    return unwrap(block.item())


def _merge(parts: list, axis=None, keepdims=None, *, combine: Callable) -> Any:
    return combine(parts)


def _identity(element: Any) -> Any:
    return element


def reduce_blocks(
    block_results: da.Array,
    *,
    combine: Callable[[list], Any],
    split_every: int,
    unwrap: Callable[[np.ndarray], Any] | None = None,
    name: str = "dkmeans-reduce",
) -> da.Array:
    """Tree-reduce an object array of per-block results with an associative ``combine``.

    The tree has fan-in ``split_every`` and the same shape under every
    scheduler, so the result is bitwise reproducible for a fixed chunking.

    Parameters
    ----------
    block_results : dask.array.Array
        Object array of shape (n_blocks, 1), one element per row block of X
        (as :func:`dkmeans.lloyd.map_row_blocks` returns it).
    combine : callable
        Takes a list of partial results, returns their combination.
    split_every : int
        Fan-in of the reduction tree.
    unwrap : callable, optional
        Turns a block's element into a partial result (default: the element).
    name : str
        Key prefix of the reduction's tasks.

    Returns
    -------
    dask.array.Array
        A one-element object array; computing it gives the combined result.
    """
    merge = partial(_merge, combine=combine)
    return da.reduction(
        block_results,
        chunk=partial(_chunk, unwrap=unwrap or _identity),
        combine=merge,
        aggregate=merge,
        axis=0,
        keepdims=False,
        concatenate=False,
        split_every=split_every,
        dtype=object,
        meta=np.empty((0,), dtype=object),  # axis 1: the single column of block results
        name=name,
    )


def reduce_in_process(
    elements: Sequence[Any],
    *,
    combine: Callable[[list], Any],
    split_every: int,
    unwrap: Callable[[Any], Any] | None = None,
) -> Any:
    """:func:`reduce_blocks` computed here, on per-block results already in memory.

    The same tree as :func:`dask.array.reduction` builds for
    :func:`reduce_blocks` (``ceil(log(n, split_every))`` levels, each
    combining consecutive groups of ``split_every``), the same ``combine``
    and order, so the result is bitwise the same.
    """
    level = [(unwrap or _identity)(element) for element in elements]
    depth = max(1, math.ceil(math.log(len(level), split_every)))  # as dask.array.reduction
    for _ in range(depth - 1):
        level = [combine(level[i : i + split_every]) for i in range(0, len(level), split_every)]
    return combine(level)


@dataclass
class PerRun:
    """One result per run (restart) of a block or subtree, combined run by run.

    A plain list would be taken apart by Dask's reduction, hence the wrapper.
    """

    runs: list


def _combine_per_run(parts: list[PerRun], *, combine: Callable[[list], Any]) -> PerRun:
    by_run = zip(*(part.runs for part in parts), strict=True)
    return PerRun([combine(list(run_parts)) for run_parts in by_run])


def reduce_runs(
    block_results: da.Array,
    *,
    combine: Callable[[list], Any],
    split_every: int,
    unwrap: Callable[[Any], PerRun] | None = None,
) -> da.Array:
    """:func:`reduce_blocks` for blocks that hold a :class:`PerRun`, combining each run's own.

    Every run's results are combined in the same tree, so each run's total
    is bitwise what it would be reduced alone. Computing the result gives
    a PerRun.
    """
    return reduce_blocks(
        block_results,
        combine=partial(_combine_per_run, combine=combine),
        split_every=split_every,
        unwrap=unwrap,
    )


def tree_reduce(block_results: da.Array, *, split_every: int, n_farthest: int) -> da.Array:
    """Reduce per-block results of one or more runs to each run's total ChunkStats.

    Parameters
    ----------
    block_results : dask.array.Array
        Object array with one element per row block of X, each a list with
        one ``(ChunkStats, labels or None)`` pair per run.
    split_every : int
        Fan-in of the reduction tree.
    n_farthest : int
        How many re-seeding candidates to keep.

    Returns
    -------
    dask.array.Array
        A one-element object array; computing it gives a :class:`PerRun` of each
        run's total ChunkStats.
    """
    return reduce_runs(
        block_results,
        combine=partial(combine, n_farthest=n_farthest),
        split_every=split_every,
        unwrap=_stats_of,
    )


def tree_reduce_in_process(
    elements: Sequence[list[tuple]], *, split_every: int, n_farthest: int
) -> PerRun:
    """:func:`tree_reduce` computed here (see :func:`reduce_in_process`): bitwise the same."""
    return reduce_in_process(
        elements,
        combine=partial(_combine_per_run, combine=partial(combine, n_farthest=n_farthest)),
        split_every=split_every,
        unwrap=_stats_of,
    )


def _stats_of(element: list[tuple]) -> PerRun:
    return PerRun([stats for stats, _ in element])
