"""The bounded Lloyd: plain Lloyd's labels every iteration, reading only the rows that can change.

Late in a fit almost no label can change, yet a plain pass reads and assigns
every row. Here a **full pass** (a Lloyd pass that also bounds each row's
distances, :func:`dkmeans.kernel._row_bounds`) splits the rows in two:

- the **active** rows, whose slack ``lower - upper`` (how much nearer another
  center would have to come) is at most a margin M: their values, positions,
  labels and bounds are kept in an active store, block by block, where the
  block's task ran (this process's memory, or the worker's under
  dask.distributed; never gathered);
- the **frozen** rows, all others, of which nothing is kept but each
  cluster's least slack.

A frozen row labelled a cannot change label while
``drift_a + max_{j != a} drift_j < slack``, the drifts being the centers'
distances from the full pass's centers c0 (triangle inequality). While that
holds for every cluster's least slack, an iteration is an **active pass**: it
reads the active store only, moves each active row's bounds by the centers'
last step (Hamerly: :func:`dkmeans.kernel.hamerly_filter`), tightens the
upper bound of the rows that fail the test, and assigns exactly (a GEMM on a
compact tile, certified as every label is) only the rows that still fail.

The pass's statistics come from running totals: the full pass's sums,
weights and objective at c0, plus the changes of every row that changed
label since (:class:`Moves`); the objective at the new centers c follows
from them, ``D(c0) + Σ 2 (c0 - c)·(S - W c0) + W ||c0 - c||²``. So an active
pass costs a few operations per active row plus the GEMM of the few rows
it assigns. A cluster is empty when it has no row of positive weight
(counted exactly), and then, as when the drifts pass a cluster's least
slack, the iteration is a full pass instead: re-seeding needs the farthest
rows of all X.

Every iteration thus has plain Lloyd's labels (exact for its centers), so
the same changed counts, iteration count and stop; the sums are grouped
otherwise, so centers and objective agree with plain Lloyd's to rounding
(1e-12 relative in float64; float32 centers round alike), not bitwise. Where
plain Lloyd's own decision rests on rounding, the two can part: with
``tol=0`` a step in which only rows of zero weight change label moves no
center for plain Lloyd (stop "tol") and a rounding's worth here. (Restarts
whose inertias agree to 1e-12 count as tied, and the first wins,
:func:`dkmeans.lloyd.best_run`: where they reach the same partition, both
keep the same one.)

**Memory.** The store holds at most ``max_active`` of each block's rows
(those of least slack; the frozen rows' least slack then says how long the
set lasts): :data:`ACTIVE_MEMORY_BYTES` for all runs of a fit (for each k
still running in a sweep over k, :func:`dkmeans.sweep`), at most
:data:`MAX_ACTIVE_FRACTION` of the rows; a row takes its values plus 29
bytes (position, weight, label, two float64 bounds). Data within the budget
is thus held whole after the first pass, and read from storage again only
at the full passes that the drifts force after the trimming pass; larger
data has its rows nearest to a boundary held, and the rest refreshed by
full passes. The labels stay in the label store
(1-4 bytes a row); active labels are written back to it (in place, a pass
over the labels only) before every full pass and at the end.

**Settling.** Early in a fit many labels change (each that changes makes
about 20 rows fail Hamerly's test) and the bounds do not last: an active pass
would assign most of its rows again, at more than a plain pass's cost. So
while every pass so far has changed at least :data:`SETTLED_CHANGES` of the
labels and the active store holds every row (from the first pass, where
they all fit in it), a run makes **settling passes**: every active row
assigned exactly, labels only (no bounds, no sums: 25-30% less than a
Lloyd pass's kernel), reading no X and leaving the bounds stale
(:func:`settling_block`). Their totals are an active pass's: the rows that
changed label move them; each settling pass then takes its own centers as
the reference (no row is frozen), so the objective follows from one step's
correction, not from the fit's whole journey. The first pass after them
assigns every row and bounds it afresh, with its slacks' histogram; the next,
a **trimming pass** (``RunPlan.replan``, :func:`trim_block`), is an active
pass on every row that then splits them as a full pass would, by the margin
planned from that histogram, at its own centers (nothing was frozen before):
the store keeps only the rows near a boundary from there on, and X is not
read again until the drifts call for a full pass (a full pass in its place
cost 55 ms, the trimming pass 12 ms, on 2M x 16 blobs in memory). Bounds
that settling passes would leave stale are not made: the first pass, which
keeps every row for them, bounds none, and a run that stops while its bounds
are stale makes its last pass (labels made those of its final centers) a
settling one (:func:`_settling_next`, :func:`_settling`); on 500k x 8 blobs,
k=2, fit to the default tol in 3 iterations, that took "bounded" from
1.03-1.08 of "lloyd"'s time to 0.89-0.91. The schedule depends on the labels
changed, so on the data and centers only, not on where X is stored.

**Moving totals, exact to rounding.** Active and settling passes keep the
totals by the moves of the rows that changed label; their sums are grouped
otherwise than a fresh pass's (centers equal to rounding), and the running
objective cancels the terms of the rows that moved. It keeps an estimate of
that rounding (:attr:`Reference.error`); where it could reach
:data:`OBJECTIVE_RTOL` of the objective (an outlier leaving a distant
center), the pass gives way to a full pass, which sums afresh.

**The margin.** M is chosen before each split, a full or trimming pass
(:func:`choose_margin`), from the previous split's histogram of slacks (by
binary exponent), the centers' last step δ and how fast the steps shrink: a
set of margin M lasts the L iterations over which twice the predicted drift
stays below M and costs ``ACTIVE_ROW_COST`` per active row and iteration, so
M minimises ``(n + L c m(M)) / (L + 1)`` over the powers of two and
infinity; no active set where none beats plain passes. The first pass has
no histogram yet: it makes every row active where they all fit in the store
(the settling passes that follow need every row; planning that at a second
full pass cost 4-8% of a default fit to tol on 2M x 16 blobs, in memory),
none otherwise.

**Cosine.** With ``metric="cosine"`` X is the view of its unit rows
(:func:`dkmeans.inputs.unit_rows`) and the centers are unit vectors
(:func:`dkmeans.lloyd.update_centers`): the bounds above are Euclidean bounds
on the unit rows, valid for any centers, so nothing here changes.

**Determinism and resuming.** The schedule (which iterations are full,
which rows active) depends on the data and centers only, so results are
bitwise the same under every scheduler and worker count. A fit is saved
(``on_pass``) where every run's next pass is a full one, with the margin
that pass will use; continuing repeats that pass and everything after it.
(A fit whose rows all fit in the store may make no full pass after its
first: it is saved at its start, its end and its later full passes only.)
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import dask.array as da
import numpy as np
from dask.utils import format_bytes

from dkmeans import inputs, kernel, lloyd, passes, stats
from dkmeans.lloyd import LloydState
from dkmeans.passes import Block
from dkmeans.state import (
    BlockState,
    InPlace,
    MemoryStore,
    RowStore,
    memory_for_state,
    worker_memory_limits,
)
from dkmeans.stats import ChunkStats, Farthest

# The active rows of all runs take at most this many bytes (and at most this
# fraction of the rows): they live in memory, next to the blocks they came from.
# Fixed, not sized by the workers: the split, and so the rounding of the sums,
# must not depend on the cluster a fit runs on.
ACTIVE_MEMORY_BYTES = 2**29
MAX_ACTIVE_FRACTION = 1.0
# "auto" runs plain Lloyd for fits capped below this many iterations: a bounded fit's
# full passes also bound every row's distances (about a third more work in memory), and
# a fit this short has too few iterations left after them for active passes to repay it.
AUTO_MIN_ITER = 20
# ... and where the active rows could outgrow the room for them: a worker short of memory
# pauses, and its active passes then cost more than plain ones (2026-12-05, 4.3M x 32
# float32, 512 MiB of active rows: one 512 MiB worker "bounded" 87.5 s, "lloyd" 49.6 s;
# three such workers 72.5 s and 41.7 s; 20M x 32 on two 1 GB workers, 2026-11-29:
# "bounded" 0.35 of "lloyd"'s time). The room: on each worker of a dask.distributed
# cluster (which holds its blocks' share), Dask's spill threshold of its memory limit
# less what a worker process takes by itself; else a third of this machine's memory.
AUTO_WORKER_FRACTION = 0.6
AUTO_WORKER_BASE_BYTES = 2**28
AUTO_MACHINE_FRACTION = 1 / 3
_U64 = 2.0**-53
# The running objective's rounding is estimated as this many units in the last place of
# every term it sums and cancels; a pass whose estimate exceeds OBJECTIVE_RTOL of its
# objective gives way to a full pass (a fresh sum), so that the objective and inertia
# stay within 1e-12 of plain Lloyd's fresh sums.
_ROUNDING = 4 * _U64
OBJECTIVE_RTOL = 1.25e-13  # an eighth of 1e-12: the estimate runs 3-4x below the rounding seen
FULL = "full"
ACTIVE = "active"
logger = logging.getLogger("dkmeans")


@dataclass
class ActiveRows:
    """One block's active rows, compact: what an active pass reads instead of the block."""

    rows: np.ndarray  # (m,) int32: positions in the block
    x: np.ndarray  # (m, d): their values, X's dtype, C-contiguous
    weights: np.ndarray  # (m,) float64, or empty (all ones)
    labels: np.ndarray  # (m,) label dtype
    upper: np.ndarray  # (m,) >= distance to own center (the centers last assigned to)
    lower: np.ndarray  # (m,) <= distance to every other center
    # Labels newer than the bounds (a settling pass; the first pass, which bounds no
    # row: upper and lower empty): the next active pass assigns every row.
    stale: bool = False


@dataclass
class Split:
    """What a full pass says of its split into active and frozen rows (combined over blocks)."""

    least_slack: np.ndarray  # (k,) least slack of each cluster's frozen rows (inf: none)
    histogram: np.ndarray | None  # (kernel.SLACK_BINS,) rows by slack (None: not bounded)
    n_active: int
    members: np.ndarray  # (k,) int64: rows of positive weight in each cluster

    def merge(self, other: Split) -> Split:
        histogram = None
        if self.histogram is not None and other.histogram is not None:
            histogram = self.histogram + other.histogram
        return Split(
            np.minimum(self.least_slack, other.least_slack),
            histogram,
            self.n_active + other.n_active,
            self.members + other.members,
        )


@dataclass
class Moves:
    """What an active pass changed: the rows that changed label, as changes of the totals."""

    sums: np.ndarray  # (k, d) change of each cluster's weighted sum
    weights: np.ndarray  # (k,)
    objective: float  # change of Σ w ||x - c0_label||² (c0: the reference centers)
    size: float  # Σ w (||x - c0_old||² + ||x - c0_new||²) of the rows moved: what it cancels
    changed: int
    assigned: int  # rows assigned exactly (the others kept their label by their bounds)
    members: np.ndarray  # (k,) int64: change of the rows of positive weight in each cluster
    sizes: np.ndarray  # (k, 2) squares of the sums' and weights' results (kernel.moved_totals)
    # The rows' slacks (as Split.histogram), where every row was bounded afresh (stale bounds)
    histogram: np.ndarray | None = None
    split: Split | None = None  # a trimming pass's split of the rows it kept (trim_block)

    def merge(self, other: Moves) -> Moves:
        histogram = split = None
        if self.histogram is not None and other.histogram is not None:
            histogram = self.histogram + other.histogram
        if self.split is not None and other.split is not None:
            split = self.split.merge(other.split)
        sums, weights = self.sums + other.sums, self.weights + other.weights
        return Moves(
            sums,
            weights,
            self.objective + other.objective,
            self.size + other.size,
            self.changed + other.changed,
            self.assigned + other.assigned,
            self.members + other.members,
            self.sizes + other.sizes + _sizes(sums, weights),
            histogram,
            split,
        )


def _sizes(sums: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(k, 2): each cluster's ``Σ_f sums[a, f]²`` and ``weights[a]²``, the squares of a
    sum's results, by which it rounds (see :func:`dkmeans.kernel.moved_totals`); inf
    beyond float64's range, which :meth:`Reference.objective_at` takes for no estimate."""
    with np.errstate(over="ignore"):
        return np.stack([np.einsum("ij,ij->i", sums, sums), weights**2], axis=1)


@dataclass
class Reference:
    """A run since its last full pass: its centers then, and every row's totals kept current.

    The totals (sums, weights, objective at the reference centers c0) are the
    full pass's, plus the changes of every active pass since; the objective
    at any centers c follows from them, ``D + Σ 2 (c0 - c)·(S - W c0) + W ||c0 - c||²``.
    That sum cancels: where the objective falls far below the terms it is made
    of, their rounding would show beside a fresh sum's, so ``error`` keeps an
    estimate of it (a few units in the last place of every term's size).
    The running sums S and weights W carry rounding of their own: the full
    pass's, at the size of what they held then, and up to a unit in the last
    place of each move's result since (``sizes``, the squares of those
    results, for an estimate as a random walk). Where an outlier's leaving
    cancels a cluster's sums, that rounding stays while the sums shrink (a
    fresh sum would not have it), and through the correction and the centers
    it grows with the centers' step: it had put an objective 1.7e-12 away
    from plain Lloyd's while ``error`` alone said 5e-14. (Compensated running
    sums do not remove it: 26 of 200 weighted Cauchy fits were still off by
    more than 1e-12, against 29 with plain sums and 3 with this estimate.)
    """

    centers: np.ndarray  # (k, d) float64: c0
    sums: np.ndarray  # (k, d)
    weights: np.ndarray  # (k,)
    objective: float  # Σ w ||x - c0_label||², with the latest labels
    least_slack: np.ndarray  # (k,) of the frozen rows
    n_active: int
    # Rows of positive weight per cluster: a cluster is empty (to re-seed) when it has
    # none, exactly as plain Lloyd finds a total weight of 0, whatever the rounding of
    # the weights' running totals.
    members: np.ndarray
    sizes: np.ndarray  # (k, 2) squares of the sums' and weights' results (see above)
    error: float = 0.0  # estimated rounding of ``objective`` beyond a fresh sum's

    @classmethod
    def of_pass(cls, centers, totals: ChunkStats, least_slack, n_active, members) -> Reference:
        """The reference of a pass that summed every row at ``centers`` (full or settling)."""
        return cls(
            centers=centers.astype(np.float64),
            sums=totals.sums,
            weights=totals.weights,
            objective=totals.objective,
            least_slack=least_slack,
            n_active=n_active,
            members=members,
            sizes=np.zeros((len(centers), 2)),
        )

    def still_frozen(self, centers: np.ndarray) -> bool:
        """Can no frozen row change label at ``centers``? (drift_a + max other drift < slack)."""
        drift = center_steps(self.centers, centers)
        other = _largest_other(drift)
        held = self.least_slack == np.inf
        return bool(np.all(held | ((drift + other) * (1 + 4 * _U64) < self.least_slack)))

    def objective_at(
        self, centers: np.ndarray, sums, weights, objective, sizes
    ) -> tuple[float, float]:
        """Σ w ||x - c_a||² at ``centers``, from totals (at the reference centers).

        Also returns an estimate of the rounding the correction adds, with that
        which the sums and weights gathered (``sizes``; see the class).
        """
        # Data of 1e154 and beyond overflow these squares: inf or nan, which the caller
        # takes for "no estimate" (a full pass), without numpy's warnings.
        with np.errstate(over="ignore", invalid="ignore"):
            step = self.centers - centers.astype(np.float64)
            scaled = weights[:, None] * self.centers
            deviation = sums - scaled
            correction = 2 * step * deviation + weights[:, None] * step**2
            size = 2 * np.abs(step) * (np.abs(sums) + np.abs(scaled)) + np.abs(correction)
            # The sums' and weights' own rounding (a unit in the last place of each result, as
            # a random walk: the root of their squares), times the correction's slope in each;
            # twice: the next pass's objective is taken at centers made from these sums.
            # (Case (b) of benchmarks/bench_bounded.py makes 7 full passes in memory with
            # this, 6 without, 8 with 4 units as for the terms; weighted Cauchy fits left
            # more than 1e-12 from plain Lloyd's: 3 of 200 with this, 29 without, 2 with 4.)
            by_sums = 2 * np.sqrt(np.einsum("ij,ij->i", step, step))
            by_weights = np.abs(np.sum(step * (step - 2 * self.centers), axis=1))
            gathered = by_sums @ np.sqrt(sizes[:, 0]) + by_weights @ np.sqrt(sizes[:, 1])
            error = _ROUNDING * float(np.sum(size)) + 2 * _U64 * float(gathered)
            return float(objective + np.sum(correction)), error


@dataclass
class RunPlan:
    """The bounded loop's own state of one run, beside its :class:`~dkmeans.lloyd.LloydState`."""

    reference: Reference | None = None  # None: the next pass is a full one
    histogram: np.ndarray | None = None  # slacks at the last split (full or trimming pass)
    last_centers: np.ndarray | None = None  # the centers of the latest pass
    patch: bool = False  # active labels not yet written to the label store
    stale: bool = False  # the active rows' bounds are older than their labels (ActiveRows)
    replan: bool = False  # the run has settled: a trimming pass next, its margin planned afresh
    margin_decided: bool = False  # is the state's next_margin that of the coming full pass?


def center_steps(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Each center's distance moved, rounded up (an upper bound for the exact distance)."""
    diff = after.astype(np.float64) - before.astype(np.float64)
    d = diff.shape[1]
    squared = np.einsum("ij,ij->i", diff, diff) * (1 + 1.01 * (d + 3) * _U64) + 2.0**-1000
    return np.sqrt(squared) * (1 + 2 * _U64)


def _largest_other(steps: np.ndarray) -> np.ndarray:
    """For each center a, the largest step of the centers j != a."""
    top = int(np.argmax(steps))
    other = np.full(len(steps), steps[top])
    rest = steps.copy()
    rest[top] = -np.inf
    other[top] = rest.max() if len(steps) > 1 else 0.0
    return other


@dataclass(frozen=True)
class MarginInputs:
    """What the margin rule sees before a full pass: all of it restored on resume."""

    histogram: np.ndarray | None  # at the run's last split (None: none yet)
    step: float  # the largest step of a center in the run's last iteration
    decay: float  # the ratio of the last two steps (from the history's center shifts)
    n_rows: int
    max_rows: int  # most active rows the store may hold


# A run whose active store holds every row makes settling passes, not active ones,
# until a pass changes fewer than this share of the labels (see _settling); 0: never.
SETTLED_CHANGES = 0.005

# Cost of an active row, relative to a row of a full pass (read and assigned).
ACTIVE_ROW_COST = 0.5


def choose_margin(inputs: MarginInputs) -> float | None:
    """The margin M for the next full pass (module docstring), or None for no active set.

    The centers' steps are predicted to shrink by ``r = decay`` per iteration
    (at most 0.9; 1, no shrinking, if they grew), so a set of margin M lasts
    the L iterations in which twice the drift, ``2 step (r + r² + ... + r^L)``,
    stays below M. The candidates are the powers of two (the histogram's bin
    edges) and infinity (every row active), within ``max_rows``.
    """
    if inputs.histogram is None:  # the first pass: settling passes follow, on every row
        return np.inf if inputs.max_rows >= inputs.n_rows else None
    n_rows, rate, step = inputs.n_rows, min(inputs.decay, 0.9), max(inputs.step, 1e-300)
    exponents = np.arange(1, kernel.SLACK_BINS - 2)  # bin b holds slack < 2^(b - 1022)
    margins = np.append(np.ldexp(1.0, exponents - 1022), np.inf)
    rows = np.append(np.cumsum(inputs.histogram)[exponents], n_rows)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        half = margins / (2 * step)  # the drift, in steps, the set can take
        if rate < 1:  # r (1 - r^L) / (1 - r) < half  <=>  r^L > 1 - half (1 - r) / r
            floor = 1 - half * (1 - rate) / rate
            lasts = np.where(floor > 0, np.ceil(np.log(floor) / np.log(rate)) - 1, np.inf)
        else:
            lasts = np.ceil(half) - 1
    lasts = np.clip(np.nan_to_num(lasts, posinf=1000), 0, 1000)
    cost = (n_rows + lasts * ACTIVE_ROW_COST * rows) / (lasts + 1)
    cost[rows > inputs.max_rows] = np.inf
    best = int(np.argmin(cost))  # the smallest margin of least cost
    return float(margins[best]) if cost[best] < 0.9 * n_rows else None


def row_bytes(X: da.Array) -> int:
    """Bytes an active row of X takes: its values, position, weight, label and two bounds."""
    return X.shape[1] * X.dtype.itemsize + 32


def active_bytes(X: da.Array, runs_per_fit: int, fits: int = 1) -> int:
    """The most bytes the active rows of ``fits`` fits of ``runs_per_fit`` runs each hold."""
    rows = MAX_ACTIVE_FRACTION * runs_per_fit * X.shape[0]
    return fits * min(ACTIVE_MEMORY_BYTES, int(rows * row_bytes(X)))


def room_for_active_rows() -> tuple[int, str]:
    """(bytes, how they were found): the memory the active rows may take (see ``"auto"``)."""
    limits = worker_memory_limits()
    if limits is not None:
        room = [
            max(0, int(AUTO_WORKER_FRACTION * limit) - AUTO_WORKER_BASE_BYTES) for limit in limits
        ]
        return len(limits) * min(room), (
            f"{len(limits)} workers x {format_bytes(min(room))}: "
            f"{round(100 * AUTO_WORKER_FRACTION)}% of the smallest memory limit, "
            f"{format_bytes(min(limits))}, less {format_bytes(AUTO_WORKER_BASE_BYTES)}"
        )
    memory, where = memory_for_state()  # this machine's
    return int(AUTO_MACHINE_FRACTION * memory), f"a third of {where}, {format_bytes(memory)}"


def choose_algorithm(
    algorithm: str, max_iter: int, X: da.Array, runs_per_fit: int, fits: int = 1
) -> str:
    """The algorithm a fit runs: "auto" is "bounded" unless a rule says it will not pay.

    "lloyd" where ``max_iter < AUTO_MIN_ITER``, or where the active rows
    could take more (:func:`active_bytes`) than the room for them
    (:func:`room_for_active_rows`): under dask.distributed each worker holds
    its blocks' share, so every worker must have that share to spare
    (``AUTO_WORKER_FRACTION`` of its memory limit, Dask's spill threshold,
    less ``AUTO_WORKER_BASE_BYTES`` for the worker process itself); else a
    third of this machine's memory. The log says which it chose and why.
    Where it runs, the bounded algorithm decides by itself which passes pay.
    """
    if algorithm != "auto":
        return algorithm
    if max_iter < AUTO_MIN_ITER:
        return "lloyd"
    room, how = room_for_active_rows()
    needed = active_bytes(X, runs_per_fit, fits)
    chosen = "bounded" if needed <= room else "lloyd"
    logger.info(
        "algorithm 'auto': %r (active rows up to %s; room for them %s)",
        chosen,
        format_bytes(needed),
        how,
    )
    return chosen


# -- the tasks --------------------------------------------------------------------------------


def full_block(
    block: Block,
    x: np.ndarray,
    weights: np.ndarray | None,
    *,
    states: list[BlockState],
    centers: list[kernel.Centers],
    label_dtype: np.dtype,
    first_pass: bool,
    norm_bound: float | None,
    margins: list[float | None],
    max_active: float,
    with_bounds: bool = True,
) -> list[tuple[ChunkStats, Split]]:
    """A Lloyd pass's block (:func:`dkmeans.lloyd.lloyd_block`) that also splits its rows.

    ``states`` are each run's label store and active store, in turn. Without
    bounds (``with_bounds`` False: every margin infinite) every row is active,
    its bounds stale.
    """
    label_states, active_states = states[0::2], states[1::2]
    totals = lloyd.lloyd_block(
        block,
        x,
        weights,
        states=label_states,
        centers=centers,
        label_dtype=label_dtype,
        first_pass=first_pass,
        norm_bound=norm_bound,
        with_labels=True,
        with_bounds=with_bounds,
    )
    results = []
    for run, (block_stats, labels, upper, lower) in enumerate(totals):
        active, split = _split_block(
            x, weights, labels, upper, lower, centers[run], margins[run], max_active
        )
        active_states[run].write(passes.as_element(active))
        results.append((block_stats, split))
    return results


def _split_block(x, weights, labels, upper, lower, centers, margin, max_active):
    """The block's active rows (slack at most ``margin``, at most ``max_active`` of them).

    Rows without bounds (``upper`` None) are all active, their bounds stale.
    """
    k, n = len(centers.values), len(x)
    weights = np.empty(0) if weights is None else np.asarray(weights, np.float64)
    if upper is None:
        positive = labels if len(weights) == 0 else labels[weights > 0]
        members = np.bincount(positive, minlength=k).astype(np.int64)
        rows, empty = np.arange(n, dtype=np.int32), np.empty(0)
        x = np.ascontiguousarray(x)
        active = ActiveRows(rows, x, weights, labels, empty, empty, stale=True)
        return active, Split(np.full(k, np.inf), None, n, members)
    margin = -np.inf if margin is None else margin
    slack, least = np.empty(n), np.full(k, np.inf)
    histogram = np.zeros(kernel.SLACK_BINS, dtype=np.int64)
    members = np.zeros(k, dtype=np.int64)
    candidates = kernel.slack_summary(
        labels, upper, lower, weights, margin, slack, least, histogram, members
    )
    if candidates == n:  # every row: the block itself (no copy of in-memory input)
        chosen = np.arange(n, dtype=np.int32)
        active = ActiveRows(chosen, np.ascontiguousarray(x), weights, labels, upper, lower)
        return active, Split(least, histogram, n, members)
    cap = int(max_active * n)
    if candidates <= cap:
        taken = kernel.gather_active(x, weights, labels, upper, lower, slack, margin, candidates)
        return ActiveRows(*taken), Split(least, histogram, candidates, members)
    # More than the cap: the least slack first, ties by position; the rest frozen.
    chosen = np.flatnonzero(slack <= margin).astype(np.int32)
    kept = np.sort(chosen[np.argsort(slack[chosen], kind="stable")[:cap]])
    dropped = np.setdiff1d(chosen, kept)
    np.minimum.at(least, labels[dropped], slack[dropped])
    active = ActiveRows(
        kept,
        np.ascontiguousarray(x[kept]),
        weights[kept] if len(weights) else weights,
        labels[kept],
        upper[kept],
        lower[kept],
    )
    return active, Split(least, histogram, cap, members)


def active_block(
    block: Block,
    _rows: np.ndarray,
    *,
    states: list[BlockState],
    centers: list[kernel.Centers],
    steps: list[np.ndarray],
    others: list[np.ndarray],
    references: list[np.ndarray],
) -> list[Moves]:
    """An active pass's block: each run's active rows reassigned; what moved.

    Reads no row of X: only the block's active rows.
    """
    results = []
    for run, active_state in enumerate(states):
        new, moves = reassign(
            active_state.read().item(), centers[run], steps[run], others[run], references[run]
        )
        active_state.write(passes.as_element(new))
        results.append(moves)
    return results


def trim_block(
    block: Block,
    _rows: np.ndarray,
    *,
    states: list[BlockState],
    centers: list[kernel.Centers],
    steps: list[np.ndarray],
    others: list[np.ndarray],
    references: list[np.ndarray],
    margins: list[float | None],
    max_active: float,
) -> list[Moves]:
    """A trimming pass's block: an active pass's (:func:`active_block`), then a split.

    For runs whose active rows are every row, bounded afresh (the pass after
    settling): each run's rows are reassigned, their labels written to its
    label store, and only those of slack at most its margin kept, as a full
    pass would split them (:func:`_split_block`). ``states`` are each run's
    label store and active store, in turn. Reads no row of X.
    """
    results = []
    pairs = zip(states[0::2], states[1::2], strict=True)
    for run, (label_state, active_state) in enumerate(pairs):
        active, moves = reassign(
            active_state.read().item(), centers[run], steps[run], others[run], references[run]
        )
        _write_labels(label_state, active)
        kept, moves.split = _split_block(
            active.x,
            active.weights,
            active.labels,
            active.upper,
            active.lower,
            centers[run],
            margins[run],
            max_active,
        )
        kept.rows = active.rows[kept.rows]
        active_state.write(passes.as_element(kept))
        results.append(moves)
    return results


def reassign(
    active: ActiveRows,
    centers: kernel.Centers,
    step: np.ndarray,
    other: np.ndarray,
    reference64: np.ndarray,
) -> tuple[ActiveRows, Moves]:
    """Active rows' exact labels at ``centers``, which moved by ``step`` since the last pass.

    Hamerly's test (:func:`dkmeans.kernel.hamerly_filter`; ``other[a]``, the
    largest step of a center other than a, from :func:`_largest_other`) keeps
    the label of nearly every row; the rest are assigned exactly, all
    together on a compact tile. Returns the rows with their new labels and
    bounds, and the changes of the totals (at the reference centers) that
    the moves make.
    """
    labels = active.labels
    k = len(centers.values)
    new_labels, upper, lower = labels, active.upper, active.lower
    suspects, count = np.empty(len(labels), dtype=np.int32), len(labels)
    if not active.stale:  # (stale: bounds older than the labels, every row a suspect)
        upper, lower = np.empty_like(upper), np.empty_like(lower)  # the old stay a snapshot's
        count = kernel.hamerly_filter(
            active.x,
            labels,
            (active.upper, active.lower),
            step,
            other,
            centers.values64,
            (upper, lower),
            suspects,
        )
    moved = np.empty(0, dtype=np.int32)
    if count > len(labels) // 2:  # most rows: assign them all, without gathering
        count = len(labels)
        new_labels, upper, lower = kernel.assign_with_bounds(
            active.x, centers, labels, labels.dtype
        )
        moved = np.flatnonzero(new_labels != labels).astype(np.int32)
    elif count:
        suspects = suspects[:count]
        rows, hints = kernel.take_suspects(active.x, labels, suspects)
        found, up, low = kernel.assign_with_bounds(rows, centers, hints, labels.dtype)
        new_labels, moved = labels.copy(), np.empty(count, dtype=np.int32)
        n_moved = kernel.put_assigned(
            suspects, found, up, low, labels, new_labels, upper, lower, moved
        )
        moved = moved[:n_moved]
    moves = _moves(active, new_labels, moved, reference64, count)
    if active.stale:  # every row bounded afresh: the slacks, to plan the next margin by
        moves.histogram = np.zeros(kernel.SLACK_BINS, dtype=np.int64)
        n = len(labels)
        kernel.slack_summary(
            new_labels,
            upper,
            lower,
            active.weights,
            -np.inf,
            np.empty(n),
            np.full(k, np.inf),
            moves.histogram,
            np.zeros(k, dtype=np.int64),
        )
    new = ActiveRows(active.rows, active.x, active.weights, new_labels, upper, lower)
    return new, moves


def _moves(active: ActiveRows, new_labels, moved, reference64, assigned: int) -> Moves:
    """The changes of the totals (at the centers ``reference64``) of the rows ``moved``."""
    k, d = reference64.shape
    sums, weights, objective, size = np.zeros((k, d)), np.zeros(k), 0.0, 0.0
    members, sizes = np.zeros(k, dtype=np.int64), np.zeros((k, 2))
    if len(moved):
        x, old = active.x, active.labels
        objective, size = kernel.moved_totals(
            x, active.weights, moved, old, new_labels, reference64, sums, weights, sizes
        )
        members = _moved_members(active.weights, moved, old, new_labels, k)
    return Moves(sums, weights, objective, size, len(moved), assigned, members, sizes)


def _moved_members(weights, moved, old, new, k):
    """Change of each cluster's count of rows of positive weight, from the rows that moved."""
    if len(weights):
        moved = moved[weights[moved] > 0]
    return np.bincount(new[moved], minlength=k) - np.bincount(old[moved], minlength=k)


def settling_block(
    block: Block,
    _rows: np.ndarray,
    *,
    states: list[BlockState],
    centers: list[kernel.Centers],
    references: list[np.ndarray],
    norm_bound: float | None,
) -> list[Moves]:
    """A settling pass's block: each run's active rows, every row of the block, relabelled.

    Every row is assigned exactly (labels only, the previous ones as hints,
    :func:`dkmeans.kernel.relabel`), reading no X; the rows that changed label
    give the changes of the totals at ``references`` (as an active pass's);
    the bounds are left stale.
    """
    results = []
    for run, active_state in enumerate(states):
        active = active_state.read().item()
        labels = kernel.relabel(active.x, centers[run], active.labels, norm_bound)
        moved = np.flatnonzero(labels != active.labels).astype(np.int32)
        new = ActiveRows(
            active.rows, active.x, active.weights, labels, active.upper, active.lower, stale=True
        )
        active_state.write(passes.as_element(new))
        results.append(_moves(active, labels, moved, references[run], len(labels)))
    return results


def patch_block(block: Block, _rows: np.ndarray, *, states: list[BlockState]) -> None:
    """Write each run's active labels into its label store (states: label, active, ...)."""
    for label_state, active_state in zip(states[0::2], states[1::2], strict=True):
        element = active_state.read()
        _write_labels(label_state, element.item())
        active_state.write(element)


def _write_labels(label_state: BlockState, active: ActiveRows) -> None:
    """The block's labels, with its active rows' labels written over them."""
    labels = np.array(label_state.read())
    labels[active.rows] = active.labels
    label_state.write(labels)


def _combine_full(parts: list, n_farthest: int) -> tuple[ChunkStats, Split]:
    return stats.combine([p[0] for p in parts], n_farthest), _merge([p[1] for p in parts])


def _merge(parts: list):
    total = parts[0]
    for part in parts[1:]:
        total = total.merge(part)
    return total


def _nothing(parts: list) -> None:
    return None


# -- the loop ---------------------------------------------------------------------------------


class ActiveStore(MemoryStore):
    """A run's active rows: one :class:`ActiveRows` per block of X, where its task ran."""

    def __init__(self, row_chunks):
        super().__init__(row_chunks, np.dtype(object))

    def snapshot(self) -> tuple:
        return self._values, self.passes

    def restore(self, snapshot: tuple) -> None:
        self._values, self.passes = snapshot


@dataclass
class BoundedRuns:
    """The passes of the bounded loop, for any subset of its runs (see :func:`bounded_runs`)."""

    X: da.Array
    weights: da.Array | None
    label_stores: list[RowStore]
    active_stores: list[ActiveStore]
    plans: list[RunPlan]
    split_every: int
    retries: int
    max_active: float
    margin_rule: Callable[[MarginInputs], float | None]
    norm_bound: float | None = None
    rows: da.Array | None = field(default=None, repr=False)

    def row_blocks(self) -> da.Array:
        """A stand-in for X with its row chunks: the first input of passes that do not read X."""
        if self.rows is None:
            chunks = self.X.chunks[0]
            if passes.in_process_threads() is not None:
                zero = np.zeros(1, dtype=np.int8)
                self.rows = inputs.from_blocks(
                    [np.broadcast_to(zero, (c,)) for c in chunks], "dkmeans-rows"
                )
            else:
                self.rows = da.zeros(self.X.shape[0], dtype=np.int8, chunks=(chunks,))
        return self.rows

    def patch(self, runs: list[int]) -> None:
        """Write the active labels of ``runs`` into their label stores, in place."""
        runs = [run for run in runs if self.plans[run].patch]
        if not runs:
            return
        passes.map_reduce(
            patch_block,
            [self.row_blocks()],
            combine=_nothing,
            split_every=self.split_every,
            states=[
                store
                for run in runs
                for store in (InPlace(self.label_stores[run]), self.active_stores[run])
            ],
            retries=self.retries,
        )
        for run in runs:
            self.plans[run].patch = False

    def decide_margins(self, runs: list[int], states: list[LloydState]) -> None:
        """The margin of each run's coming full pass, into its state (unless decided already)."""
        for run in runs:
            if not self.plans[run].margin_decided:
                states[run].next_margin = self._margin(run, states[run])
                self.plans[run].margin_decided = True

    def _margin(self, run: int, state: LloydState) -> float | None:
        """The margin rule's margin for the run's next split, from its latest slacks."""
        plan, n = self.plans[run], self.X.shape[0]
        step = 0.0
        if plan.last_centers is not None:
            step = float(np.max(center_steps(plan.last_centers, state.centers)))
        inputs = MarginInputs(
            plan.histogram, step, _decay(state.history), n, int(self.max_active * n)
        )
        return self.margin_rule(inputs)

    def full(self, runs: list[int], states: list[LloydState], first_pass: bool) -> list:
        """A full pass for ``runs``: each run's totals, and its frozen rows' totals kept."""
        self.decide_margins(runs, states)
        self.patch(runs)
        X, n = self.X, self.X.shape[0]
        margins = [states[run].next_margin for run in runs]
        with_bounds = not all(
            _settling_next(states[run], margin) for run, margin in zip(runs, margins, strict=True)
        )
        results = passes.map_reduce(
            full_block,
            [X, self.weights],
            combine=passes.per_run(
                [partial(_combine_full, n_farthest=len(states[run].centers)) for run in runs]
            ),
            split_every=self.split_every,
            states=[s for run in runs for s in (self.label_stores[run], self.active_stores[run])],
            retries=self.retries,
            centers=[kernel.prepare(states[run].centers, X.dtype) for run in runs],
            label_dtype=self.label_stores[runs[0]].dtype,
            first_pass=first_pass,
            # Each tile's own: the bounds, so the split, then depend on the data and
            # centers only, not on whether an earlier pass of this process found X's
            # largest norm (a resumed fit's has not).
            norm_bound=None,
            margins=margins,
            max_active=self.max_active,
            with_bounds=with_bounds,
        )
        self.norm_bound = results[0][0].norm_bound
        totals = []
        for run, (run_totals, split) in zip(runs, results, strict=True):
            plan, centers = self.plans[run], states[run].centers
            plan.reference = Reference.of_pass(
                centers, run_totals, split.least_slack, split.n_active, split.members
            )
            plan.histogram, plan.last_centers = split.histogram, centers
            plan.margin_decided, states[run].next_margin = False, None
            plan.replan, plan.stale = False, not with_bounds
            states[run].label_writes = self.label_stores[run].passes
            totals.append((run_totals, {"pass": FULL, "rows_read": n, "rows_assigned": n}))
        return totals

    def active(self, runs: list[int], states: list[LloydState]) -> list:
        """An active pass for ``runs``: each run's totals, or None where a full pass is needed."""
        return self._moving_pass(
            runs, states, active_block, rebase=False, **self._steps(runs, states)
        )

    def trim(self, runs: list[int], states: list[LloydState]) -> list:
        """A trimming pass for ``runs``, just settled: an active pass, then the rows split.

        Every row is active, bounded afresh by the pass after settling; this
        pass keeps those of slack at most the margin planned from their slacks
        (as a full pass splits, without reading X), the others frozen from here
        on, at the pass's centers (``rebase``: nothing was frozen before).
        """
        pairs = zip(runs, self._active_stores(runs), strict=True)
        return self._moving_pass(
            runs,
            states,
            trim_block,
            rebase=True,
            stores=[s for run, active in pairs for s in (InPlace(self.label_stores[run]), active)],
            margins=[self._margin(run, states[run]) for run in runs],
            max_active=self.max_active,
            **self._steps(runs, states),
        )

    def _steps(self, runs: list[int], states: list[LloydState]) -> dict:
        """Each run's centers' steps since its last pass, and the largest other (Hamerly)."""
        steps = [center_steps(self.plans[run].last_centers, states[run].centers) for run in runs]
        return {"steps": steps, "others": [_largest_other(step) for step in steps]}

    def _active_stores(self, runs: list[int]) -> list[ActiveStore]:
        """The active stores of ``runs``, in order."""
        return [self.active_stores[run] for run in runs]

    def settling(self, runs: list[int], states: list[LloydState]) -> list:
        """A settling pass for ``runs`` (every row active): each run's totals, or None."""
        totals = self._moving_pass(
            runs, states, settling_block, rebase=True, norm_bound=self.norm_bound
        )
        for run, run_totals in zip(runs, totals, strict=True):
            if run_totals is not None:
                self.plans[run].stale = True
        return totals

    def _moving_pass(
        self, runs, states, block_function, rebase: bool, stores=None, **kwargs
    ) -> list:
        """A pass of ``block_function`` over the active stores, which reports :class:`Moves`.

        Each run's totals follow from its reference's and the moves. A run
        left with an empty cluster gets None, its store as before the pass:
        re-seeding needs the farthest rows of all X, a full pass; so does a
        run whose objective could carry rounding beyond ``OBJECTIVE_RTOL``.
        ``rebase`` (only where no row is frozen, whose slacks are from the
        reference centers): the totals move to the pass's centers, so that the
        next pass's objective follows from one step, not the fit's whole journey.
        ``stores``: the stores the tasks see (default: the runs' active stores).
        """
        snapshots = [store.snapshot() for store in self._active_stores(runs)]
        X = self.X
        results = passes.map_reduce(
            block_function,
            [self.row_blocks()],
            combine=passes.per_run(_merge),
            split_every=self.split_every,
            states=self._active_stores(runs) if stores is None else stores,
            retries=self.retries,
            centers=[kernel.prepare(states[run].centers, X.dtype) for run in runs],
            references=[self.plans[run].reference.centers for run in runs],
            **kwargs,
        )
        totals = []
        for run, snapshot, moves in zip(runs, snapshots, results, strict=True):
            plan, reference = self.plans[run], self.plans[run].reference
            members = reference.members + moves.members
            weights = reference.weights + moves.weights
            sums = reference.sums + moves.sums
            sizes = reference.sizes + moves.sizes + _sizes(sums, weights)
            moved_objective = reference.objective + moves.objective
            error = reference.error + _ROUNDING * (abs(moved_objective) + moves.size)
            centers = states[run].centers
            objective, correction_error = reference.objective_at(
                centers, sums, weights, moved_objective, sizes
            )
            if (
                np.any(members == 0)
                or np.any(weights <= 0)
                or not error + correction_error <= OBJECTIVE_RTOL * objective < np.inf
            ):
                # An empty cluster (re-seeding needs the farthest rows of all X), an
                # objective fallen so far below the terms it cancels that their rounding
                # could show, or one beyond float64's range (inf - inf is no total): a
                # full pass, with fresh sums.
                self.active_stores[run].restore(snapshot)
                totals.append(None)
                continue
            reference.sums, reference.weights, reference.members = sums, weights, members
            reference.sizes = sizes
            reference.objective, reference.error = moved_objective, error
            if rebase:
                reference.centers = centers.astype(np.float64)
                reference.objective, reference.error = objective, error + correction_error
            plan.last_centers, plan.patch = centers, True
            if moves.histogram is not None:  # the first active pass after settling
                plan.histogram, plan.replan, plan.stale = moves.histogram, True, False
            rows_read = reference.n_active
            if moves.split is not None:  # a trimming pass: the rows kept, the others frozen
                reference.least_slack = moves.split.least_slack
                reference.n_active = moves.split.n_active
                plan.histogram, plan.replan = moves.split.histogram, False
            run_totals = ChunkStats(
                sums=reference.sums,
                weights=reference.weights,
                objective=objective,
                changed=moves.changed,
                farthest=Farthest.empty(X.shape[1]),
            )
            record = {
                "pass": ACTIVE,
                "rows_read": rows_read,
                "rows_assigned": moves.assigned,
            }
            totals.append((run_totals, record))
        return totals


def _decay(history: list[dict]) -> float:
    """How fast the centers' steps shrink: the ratio of the last two (root total) shifts."""
    if len(history) < 2 or history[-2]["center_shift"] <= 0:
        return 1.0
    return math.sqrt(history[-1]["center_shift"] / history[-2]["center_shift"])


def bounded_runs(
    X: da.Array,
    states: list[LloydState],
    *,
    stores: list[RowStore],
    weights: da.Array | None,
    max_iter: int,
    tol: float,
    split_every: int,
    retries: int,
    on_iteration: Callable[[int, dict], None] | None = None,
    on_pass: Callable[[list[LloydState]], None] | None = None,
    margin_rule: Callable[[MarginInputs], float | None] = choose_margin,
    runs_per_fit: int | None = None,
    metric: str = "euclidean",
) -> None:
    """Run the runs in ``states`` to their stop with the bounded Lloyd (module docstring).

    As :func:`dkmeans.lloyd.lloyd_runs` (which calls this), updating
    ``states`` in place; every history record also says the kind of pass
    (``"pass"``), the rows it read and the rows it assigned. ``on_pass`` is
    called where every run's next pass is a full one, once the label stores
    hold every run's latest labels: continuing from there is bitwise the same.
    ``margin_rule(inputs)`` gives a full pass's margin (:class:`MarginInputs`).
    The runs of one fit (``runs_per_fit``, default all) share one budget of
    :data:`ACTIVE_MEMORY_BYTES`, so that a run's passes, hence its rounding,
    do not depend on how many fits run beside it (a sweep over k); a run's
    active rows are let go as soon as it stops.
    """
    runs_per_fit = len(states) if runs_per_fit is None else runs_per_fit
    budget = ACTIVE_MEMORY_BYTES / (runs_per_fit * X.shape[0] * row_bytes(X))
    loop = BoundedRuns(
        X=X,
        weights=weights,
        label_stores=stores,
        active_stores=[ActiveStore(X.chunks[0]) for _ in states],
        # a continued run starts with the full pass it was saved before, with its margin
        plans=[RunPlan(margin_decided=state.n_iter > 0) for state in states],
        split_every=split_every,
        retries=retries,
        max_active=min(MAX_ACTIVE_FRACTION, budget),
        margin_rule=margin_rule,
    )
    everyone = list(range(len(states)))
    n_rows = X.shape[0]
    while running := [run for run, state in enumerate(states) if state.inertia is None]:
        start = time.perf_counter()
        full = [run for run in running if not _can_skip(loop.plans[run], states[run])]
        if len(full) == len(running) and states[running[0]].n_iter > 0:
            # A point to continue from: save it with every run's labels up to date.
            loop.decide_margins(full, states)
            loop.patch(everyone)
            if on_pass is not None:
                on_pass(states)
        found: dict[int, tuple] = {}
        active = [run for run in running if run not in full]
        settling = [run for run in active if _settling(loop.plans[run], states[run], n_rows)]
        trimming = [run for run in active if run not in settling and loop.plans[run].replan]
        active = [run for run in active if run not in settling + trimming]
        passes_made = ((settling, loop.settling), (trimming, loop.trim), (active, loop.active))
        for some, make_pass in passes_made:
            if not some:
                continue
            for run, result in zip(some, make_pass(some, states), strict=True):
                if result is None:
                    full.append(run)
                else:
                    found[run] = result
        if full:
            full.sort()
            first_pass = any(states[run].n_iter == 0 for run in full)
            results = loop.full(full, states, first_pass)
            if first_pass and tol > 0:
                tol_abs = tol * float(np.mean(results[0][0].moments.variance))
                for run in full:
                    if states[run].n_iter == 0:
                        states[run].tol_abs = tol_abs
            found.update(zip(full, results, strict=True))
        seconds = time.perf_counter() - start
        for run in sorted(found):
            run_totals, counts = found[run]
            record = lloyd._after_pass(
                states[run],
                run_totals,
                max_iter=max_iter,
                dtype=X.dtype,
                metric=metric,
                sum_terms=lloyd.sum_terms(X),
            )
            if record is not None:
                record.update(counts, seconds=seconds)
                if on_iteration is not None:
                    on_iteration(run, record)
        _let_go(loop, [run for run in found if states[run].inertia is not None], states)
    _let_go(loop, everyone, states)


def _let_go(loop: BoundedRuns, runs: list[int], states: list[LloydState]) -> None:
    """Runs that have stopped: their latest labels into their label stores, active rows freed."""
    loop.patch(runs)
    for run in runs:
        loop.active_stores[run].discard()
        states[run].label_writes = loop.label_stores[run].passes


def _settling(plan: RunPlan, state: LloydState, n_rows: int) -> bool:
    """Is the run's next pass (not a full one) a settling pass? (See the module docstring.)

    While every pass so far has changed at least :data:`SETTLED_CHANGES` of
    the labels, and the active store holds every row: a function of the
    history and the split, the same on every scheduler and after a resume.
    Also a stopped run's last pass (its labels made those of its final
    centers) while its bounds are stale: it needs labels only, and bounding
    every row afresh for passes that will not come would cost twice as much.
    """
    if plan.stale and state.stop_reason is not None:
        return True
    threshold = SETTLED_CHANGES * n_rows
    return (
        plan.reference.n_active == n_rows
        and threshold > 0
        and all(record["labels_changed"] >= threshold for record in state.history)
    )


def _settling_next(state: LloydState, margin: float | None) -> bool:
    """Will settling passes follow this full pass, whose bounds they would leave stale?

    So for a run's first pass that keeps every row (``margin`` infinite):
    it changes every label, so the next pass settles (:func:`_settling`).
    """
    return state.n_iter == 0 and margin == np.inf and SETTLED_CHANGES > 0


def _can_skip(plan: RunPlan, state: LloydState) -> bool:
    """Can the run's next pass be an active (settling, trimming) one? (Nothing frozen can change.)

    Not asked is whether an active pass pays: early in a fit that is what
    settling passes are for.
    """
    if plan.reference is None:
        return False
    return plan.reference.still_frozen(state.centers)
