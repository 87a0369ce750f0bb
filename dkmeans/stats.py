"""Per-block statistics of a pass and their associative combine (NumPy only, no Dask).

A Lloyd pass maps the kernel over the row blocks of X; each block yields a
:class:`ChunkStats`. Stats are combined by :func:`combine` (sums add, the
farthest-point lists merge); :mod:`dkmeans.passes` applies it in a tree of
fixed fan-in, so the order of every floating-point addition depends only on
the chunking and ``split_every``, never on the scheduler.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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
        with np.errstate(over="ignore"):  # a variance beyond float64's range is inf
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
    slow_rows: int = 0  # rows whose label the fast path could not certify (dkmeans.kernel)
    norm_bound: float = 0.0  # at least every row's norm (dkmeans.kernel: for later passes)


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
            slow_rows=total.slow_rows + part.slow_rows,
            norm_bound=max(total.norm_bound, part.norm_bound),
        )
    return total
