"""Lloyd's algorithm: the iteration loop, one pass over the data per iteration.

One iteration (:func:`lloyd_pass`) is one :func:`dkmeans.passes.map_reduce`:

1. every row block's task (:func:`lloyd_block`) reads the block once, and for
   each run assigns its rows to the nearest center
   (:func:`dkmeans.kernel.block_stats`), reading the previous labels from
   the run's label store (to count the labels that changed) and writing
   the new ones;
2. the blocks' :class:`~dkmeans.stats.ChunkStats` (sums, weights,
   objective, changed count, farthest points) are combined in a tree of
   fixed fan-in;
3. here, the new centers are the means (:func:`update_centers`, which
   re-seeds empty clusters with the farthest points found in the same
   pass), and the loop tests for a stop (:func:`_iterate`).

The loop (:func:`lloyd_runs`) stops at an exact fixed point (no label
changed), when the total squared center shift is at most ``tol`` times the
mean feature variance (scikit-learn's meaning of ``tol``; ``tol=0`` runs to
the fixed point), or after ``max_iter`` passes. After a stop that is not a
fixed point, one more assignment pass makes the labels consistent with the
final centers, as scikit-learn does.

With ``algorithm="bounded"`` the loop is :func:`dkmeans.bounded.bounded_runs`:
the same iterations, and the same update and stop (:func:`_after_pass`), but
most passes read only the rows whose label can still change.

Restarts (``n_init``) run together: each task reads its block once and runs
the kernel for every run still going, and each run's statistics are
reduced in the same tree, so R runs cost one read of X per pass and each
ends bitwise as it would alone.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

import dask.array as da
import numpy as np

from dkmeans import kernel, passes, stats, validation
from dkmeans.errors import ObjectiveIncreaseWarning
from dkmeans.passes import Block
from dkmeans.state import BlockState, RowStore
from dkmeans.stats import ChunkStats, Farthest

FIXED_POINT = "fixed point"
TOL = "tol"
MAX_ITER = "max_iter"


@dataclass
class LloydResult:
    """What :func:`lloyd` found."""

    centers: np.ndarray  # (k, d), dtype of X
    inertia: float  # objective of the final labels w.r.t. the final centers
    n_iter: int  # Lloyd iterations run (the final assignment pass not counted)
    stop_reason: str  # FIXED_POINT, TOL or MAX_ITER
    history: list[dict] = field(default_factory=list)
    # The final labels' clusters: (weighted) sums and weights (LloydState.keep_final).
    label_sums: np.ndarray | None = None
    label_weights: np.ndarray | None = None

    @property
    def converged(self) -> bool:
        return self.stop_reason != MAX_ITER


def lloyd_block(
    block: Block,
    x: np.ndarray,
    weights: np.ndarray | None,
    *,
    states: list[BlockState],
    centers: list[kernel.Centers],
    label_dtype: np.dtype,
    first_pass: bool,
    norm_bound: float | None = None,
    with_labels: bool = False,
    with_bounds: bool = False,
) -> list:
    """One block of one pass for every run: each run's statistics; each run's labels written.

    The block is read once and assigned to each run's centers in turn.
    ``with_labels`` (the bounded Lloyd's full pass): each run's entry is
    (statistics, labels, upper, lower), the last two each row's distance
    bounds (:func:`dkmeans.kernel.block_stats`) where ``with_bounds``, else None.
    """
    if first_pass:  # the data do not change: checking them once is enough
        validation.check_finite_block(x, block.index, block.start)
        if weights is not None:
            validation.check_weights_block(weights, block.index, block.start)
    results = []
    for run, (run_centers, labels_state) in enumerate(zip(centers, states, strict=True)):
        bounds = (np.empty(len(x)), np.empty(len(x))) if with_bounds else None
        block_stats, labels = kernel.block_stats(
            x,
            run_centers,
            prev_labels=labels_state.read(),
            weights=weights,
            row_offset=block.start,
            with_moments=first_pass and run == 0,  # the same for every run
            label_dtype=label_dtype,
            norm_bound=norm_bound,
            bounds=bounds,
        )
        if not first_pass and not np.isfinite(block_stats.objective):
            # The block was finite in the first pass: this read returned other
            # data (storage fault). Name the block and row rather than go on.
            validation.check_finite_block(x, block.index, block.start)
        labels_state.write(labels)
        if with_labels:
            results.append((block_stats, labels, *(bounds or (None, None))))
        else:
            results.append(block_stats)
    return results


def lloyd_pass(
    X: da.Array,
    centers: list[np.ndarray],
    *,
    stores: list[RowStore],
    weights: da.Array | None = None,
    split_every: int = 8,
    first_pass: bool = False,
    retries: int = 0,
    norm_bound: float | None = None,
) -> list[ChunkStats]:
    """Run one pass over X for one or more runs: assign every row, reduce the statistics.

    Each block is read once whatever the number of runs; every run gets its
    own labels and statistics, bitwise the same as if it ran alone.

    Parameters
    ----------
    X : dask.array.Array of shape (n, d)
        Float data, one chunk along columns.
    centers : list of ndarray of shape (k, d)
        Each run's centers, in X's dtype (runs may differ in k).
    stores : list of RowStore
        Each run's label store: gives the previous labels, receives the new ones.
    weights : dask.array.Array of shape (n,), optional
        Sample weights chunked like X's rows.
    split_every : int
        Fan-in of the reduction tree.
    first_pass : bool
        Check the data for NaN/inf (and weights for sign) and compute the
        column moments (reported with the first run's totals).
    retries : int
        See :func:`dkmeans.passes.map_reduce`.
    norm_bound : float, optional
        At least every row's norm (``ChunkStats.norm_bound`` of an earlier
        pass): saves the kernel finding it again; labels do not depend on it.

    Returns
    -------
    list of ChunkStats
        Each run's totals over all of X.
    """
    return passes.map_reduce(
        lloyd_block,
        [X, weights],
        combine=passes.per_run([partial(stats.combine, n_farthest=len(c)) for c in centers]),
        split_every=split_every,
        states=stores,
        retries=retries,
        centers=[kernel.prepare(run_centers, X.dtype) for run_centers in centers],
        label_dtype=stores[0].dtype,
        first_pass=first_pass,
        norm_bound=norm_bound,
    )


def update_centers(
    totals: ChunkStats, centers: np.ndarray, metric: str, *, sum_terms: int
) -> tuple[np.ndarray, int]:
    """New centers = weighted means, with empty clusters re-seeded.

    An empty cluster (zero total weight) takes the farthest point still
    unused, in order of decreasing distance to its center, and that point's
    weight and coordinates leave its old cluster — scikit-learn's rule. A
    cluster left with zero weight keeps its previous center. A point within
    rounding of its center, which may be a copy of every row of its cluster
    (:func:`copies_of_their_centers`; ``sum_terms``: :func:`sum_terms`), is
    no candidate: where clusters outnumber the distinct rows, re-seeding
    with copies would go on forever.

    ``metric="cosine"`` (unit rows): the centers are the weighted sums scaled
    to unit length (:func:`dkmeans.kernel.unit_rows`; the direction of the
    mean, which maximises the summed cosine), and the farthest points are
    those of lowest cosine similarity to their center. A cluster whose sum is
    zero (its rows cancel) keeps its previous center.

    Returns
    -------
    centers : ndarray of shape (k, d), in the dtype of ``centers``
    n_reseeded : int
    """
    sums = totals.sums.copy()
    weights = totals.weights.copy()
    empty = np.flatnonzero(weights == 0)
    far = totals.farthest
    candidates = np.flatnonzero(~copies_of_their_centers(far, centers, sum_terms))
    n_reseeded = min(len(empty), len(candidates))
    for cluster, i in zip(empty[:n_reseeded], candidates[:n_reseeded], strict=True):
        w, point, old = far.weights[i], far.points[i], far.labels[i]
        sums[old] -= w * point
        weights[old] -= w
        sums[cluster] = w * point
        weights[cluster] = w
    new = centers.astype(np.float64)
    filled = weights > 0
    if metric == "cosine":
        unit, zero = kernel.unit_rows(sums)
        filled &= ~zero
        new[filled] = unit[filled]
    else:
        new[filled] = sums[filled] / weights[filled, None]
    return new.astype(centers.dtype), n_reseeded


def sum_terms(X: da.Array) -> int:
    """The most additions in any of a pass's sums over X: a block's rows, then the tree's.

    (Each row is added to its block's sums in turn; the partial sums of at
    most every block then meet on a path up the reduction tree.)
    """
    rows = X.chunks[0]
    return max(rows) + len(rows)


def copies_of_their_centers(far: Farthest, centers: np.ndarray, sum_terms: int) -> np.ndarray:
    """Which re-seeding candidates are within rounding of their centers, feature by feature.

    A center computed from ``m`` rows all equal to x (float64 sums of at most
    ``sum_terms`` additions, divided, normalised for cosine, rounded to the
    dtype of x) lies within about ``(2 sum_terms + d + 2) u |x_f|`` of each
    x_f (u = 2^-53): such a point may be a copy of every row of its cluster,
    and moving it away lowers the objective by rounding at most. Re-seeding
    with it is what kept fits on float64 data with fewer distinct rows than
    clusters (multiples of 0.1, say) from ever stopping: the copy drew its
    twins away from their rounded mean, which left that cluster empty, for
    another copy, and so on. The test is doubled for safety; a point of
    float32 data is exactly its copies' mean (float64 sums of float32 values
    are exact), so this matters for float64 data.
    """
    if len(far.sqdist) == 0:
        return np.zeros(0, dtype=bool)
    d = centers.shape[1]
    rounding = 2.0 * (2 * sum_terms + d + 2) * 2.0**-53
    own = centers.astype(np.float64)[far.labels]
    close = np.abs(far.points - own) <= rounding * np.abs(far.points)
    return np.all(close, axis=1)


def metric_objective(squared_distances: float, metric: str) -> float:
    """The objective from a sum of ``w ||x - c||²``: the sum itself, or half of it for cosine.

    With ``metric="cosine"`` rows and centers are unit vectors, so
    ``||x - c||² = 2 (1 - cos)`` and the halved sum is ``sum w (1 - cos)``.
    """
    return squared_distances / 2 if metric == "cosine" else squared_distances


def check_objective(
    previous: float,
    current: float,
    dtype: np.dtype,
    iteration: int,
    scale: float = 0.0,
    floor: float = 0.0,
) -> None:
    """Warn with :class:`~dkmeans.errors.ObjectiveIncreaseWarning` if the objective rose.

    The allowance for floating-point noise is ``sqrt(eps)`` of the data's
    dtype, relative to the objective plus ``eps`` times ``scale``, the
    centers' weighted squared norms ``sum_j W_j ||c_j||^2``: rounding a mean
    (to float64, then to the data's dtype) moves it by about ``eps ||c_j||``
    and raises the objective by ``W_j`` times its square, which matters only
    where the objective is (near) zero, every row at its center. Plus
    ``floor``, the absolute rounding of squares below float64's normal range
    (:func:`_allowance`), where relative noise says nothing.
    """
    # In float64: for float32 data, eps * scale can exceed float32's range.
    eps = float(np.finfo(dtype).eps)
    noise = np.sqrt(eps) * (abs(previous) + eps * scale) + floor
    if current > previous + noise:
        warnings.warn(
            f"k-means objective rose at iteration {iteration}: {previous!r} -> {current!r} "
            f"(+{(current - previous) / max(abs(previous), 1e-300):.3g} relative). Lloyd's "
            "steps cannot raise it; please report this as a bug.",
            ObjectiveIncreaseWarning,
            stacklevel=3,
        )


@dataclass
class LloydState:
    """Everything needed to continue a run after a completed iteration.

    With the label store's latest buffer (``label_passes % 2``), this is what a
    checkpoint saves: continuing from it gives bitwise the same result as
    never stopping.
    """

    centers: np.ndarray  # (k, d), dtype of X: the centers the next pass assigns to
    n_iter: int = 0  # Lloyd iterations completed
    history: list[dict] = field(default_factory=list)
    tol_abs: float = 0.0  # tol x mean feature variance (known after the first pass)
    stop_reason: str | None = None  # set once the loop has stopped
    exact_final: bool = False  # did the last update leave the centers unchanged?
    inertia: float | None = None  # objective of the final labels, once known
    final_pass: bool = False  # did an assignment-only pass follow the stop?
    label_writes: int | None = None  # the label store's passes, where not one per pass (bounded)
    next_margin: float | None = None  # the bounded algorithm's margin for its next (full) pass
    # Once inertia is known: the (weighted) sums and weights of the final labels'
    # clusters, so their means (for cluster-quality scores, dkmeans.sweep).
    final_sums: np.ndarray | None = None
    final_weights: np.ndarray | None = None

    def keep_final(self, totals: ChunkStats) -> None:
        """The final labels are those of ``totals``: keep their objective and cluster totals."""
        self.inertia = totals.objective
        self.final_sums, self.final_weights = totals.sums, totals.weights

    @property
    def label_passes(self) -> int:
        """Passes whose labels the run's label store has received."""
        if self.label_writes is not None:
            return self.label_writes
        return self.n_iter + int(self.final_pass)

    @property
    def last_objective(self) -> float:
        return self.history[-1]["objective"] if self.history else np.inf


def lloyd(
    X: da.Array,
    init_centers: np.ndarray,
    *,
    store: RowStore,
    weights: da.Array | None = None,
    max_iter: int = 300,
    tol: float = 1e-4,
    split_every: int = 8,
    on_iteration: Callable[[dict], None] | None = None,
    retries: int = 0,
) -> LloydResult:
    """Run Lloyd's algorithm from given centers: one run of :func:`lloyd_runs`.

    Parameters
    ----------
    X, weights, max_iter, tol, split_every, retries
        As for :func:`lloyd_runs`.
    init_centers : ndarray of shape (k, d)
        Starting centers.
    store : RowStore
        Where labels are kept between passes (and read from afterwards).
    on_iteration : callable, optional
        Called with each iteration's history record as soon as it is known.

    Returns
    -------
    LloydResult
    """
    (result,) = lloyd_runs(
        X,
        [init_centers],
        stores=[store],
        weights=weights,
        max_iter=max_iter,
        tol=tol,
        split_every=split_every,
        on_iteration=None if on_iteration is None else lambda _, record: on_iteration(record),
        retries=retries,
    )
    return result


def lloyd_runs(
    X: da.Array,
    init_centers: list[np.ndarray] | None = None,
    *,
    stores: list[RowStore],
    weights: da.Array | None = None,
    max_iter: int = 300,
    tol: float = 1e-4,
    split_every: int = 8,
    on_iteration: Callable[[int, dict], None] | None = None,
    states: list[LloydState] | None = None,
    on_pass: Callable[[list[LloydState]], None] | None = None,
    retries: int = 0,
    algorithm: str = "lloyd",
    margin_rule: Callable | None = None,
    runs_per_fit: int | None = None,
    metric: str = "euclidean",
) -> list[LloydResult]:
    """Run one or more Lloyd runs (restarts) at once, sharing every pass over X.

    Each pass reads every block of X once and updates all runs still going;
    a run that has stopped costs nothing more once its final assignment
    (which rides along with the others' next pass) is done. Each run's
    result is bitwise the same as if it ran alone.

    Parameters
    ----------
    X : dask.array.Array of shape (n, d)
        Float data, one chunk along columns.
    init_centers : list of ndarray of shape (k, d), optional
        Each run's starting centers (when not continuing from ``states``).
    stores : list of RowStore
        Each run's label store. When continuing, run r's store must hold the
        labels of ``states[r].label_passes`` passes.
    weights : dask.array.Array of shape (n,), optional
        Sample weights, chunked like X's rows.
    max_iter : int
        Largest number of Lloyd iterations.
    tol : float
        Stop when the total squared center shift is at most ``tol`` times
        the mean variance of the features; 0 runs to the fixed point.
    split_every : int
        Fan-in of the reduction tree.
    on_iteration : callable, optional
        Called with (run index, history record) as soon as a run's iteration
        is known.
    states : list of LloydState, optional
        Saved runs to continue instead of starting from ``init_centers``.
    on_pass : callable, optional
        Called with every run's state once the initial centers are set and
        after every pass (for checkpoints: continuing from the states it
        saw ends bitwise as if never stopped).
    retries : int
        See :func:`dkmeans.passes.map_reduce`.
    algorithm : {"lloyd", "bounded"}
        "lloyd": every pass reads and assigns every row. "bounded": the same
        labels every iteration, reading only the rows that can change
        (:mod:`dkmeans.bounded`); ``on_pass`` is then called only where the
        label stores hold every run's latest labels.
    margin_rule : callable, optional
        The bounded algorithm's margin rule (for tests; see
        :func:`dkmeans.bounded.bounded_runs`).
    runs_per_fit : int, optional
        The bounded algorithm's runs that share one fit's memory budget
        (default: all; a sweep over k gives ``n_init``).
    metric : {"euclidean", "cosine"}
        "cosine": X is a :func:`dkmeans.inputs.unit_rows` view; the centers are
        the normalised sums (:func:`update_centers`) and the objective
        ``sum w (1 - cos) = sum w ||x - c||² / 2`` (:func:`_after_pass`).

    Returns
    -------
    list of LloydResult, one per run
    """
    fresh = states is None
    states = _starting_states(X, init_centers, states, stores, max_iter)
    if fresh and on_pass is not None:
        on_pass(states)  # the initial centers: a fit killed from here on need not seed again
    if algorithm == "bounded":
        from dkmeans import bounded  # it builds on this module

        rule = {} if margin_rule is None else {"margin_rule": margin_rule}
        bounded.bounded_runs(
            X,
            states,
            stores=stores,
            weights=weights,
            max_iter=max_iter,
            tol=tol,
            split_every=split_every,
            retries=retries,
            on_iteration=on_iteration,
            on_pass=on_pass,
            runs_per_fit=runs_per_fit,
            metric=metric,
            **rule,
        )
        if on_pass is not None:
            on_pass(states)
        return _results(states)
    norm_bound = None  # found by the first pass of this call, for the next ones
    while active := [run for run, state in enumerate(states) if state.inertia is None]:
        iteration = states[active[0]].n_iter
        if any(states[run].n_iter != iteration for run in active):
            raise ValueError("the runs to continue are not all at the same iteration")
        start = time.perf_counter()
        totals = lloyd_pass(
            X,
            [states[run].centers for run in active],
            stores=[stores[run] for run in active],
            weights=weights,
            split_every=split_every,
            first_pass=iteration == 0,
            retries=retries,
            norm_bound=norm_bound,
        )
        norm_bound = totals[0].norm_bound
        seconds = time.perf_counter() - start
        if iteration == 0 and tol > 0:
            tol_abs = tol * float(np.mean(totals[0].moments.variance))
            for run in active:
                states[run].tol_abs = tol_abs
        records = {}
        for run, run_totals in zip(active, totals, strict=True):
            record = _after_pass(
                states[run],
                run_totals,
                max_iter=max_iter,
                dtype=X.dtype,
                metric=metric,
                sum_terms=sum_terms(X),
            )
            if record is not None:  # the record in the run's history
                record["seconds"] = seconds
                records[run] = record
        if on_pass is not None:
            on_pass(states)
        if on_iteration is not None:
            for run, record in records.items():
                on_iteration(run, record)
    return _results(states)


# Restarts whose inertias are this close (relative) count as tied, and the first wins.
# A thousand times the 1e-12 by which "bounded" may part from "lloyd": two restarts
# that reach one partition (clusters in another order) were 1.75e-12 apart under
# "bounded" and equal under "lloyd" (float64, five distinct rows repeated), which a
# tolerance of 1e-12 split.
INERTIA_TIE_RTOL = 1e-9


def best_run(runs: list[LloydResult], group: Sequence[int]) -> int:
    """The run of ``group`` with the least inertia; near-ties go to the first.

    Restarts that reach the same partition have the same exact inertia, but
    the computed ones may differ by rounding (the bounded algorithm's sums
    are grouped by each run's path): within :data:`INERTIA_TIE_RTOL` of the
    least they count as tied, so the choice does not rest on rounding, and
    ``"lloyd"`` and ``"bounded"`` choose the same run (scikit-learn likewise
    keeps an earlier run that found the same clustering).
    """
    least = min(runs[run].inertia for run in group)
    within = least + INERTIA_TIE_RTOL * abs(least)
    return next((run for run in group if runs[run].inertia <= within), min(group))


def _results(states: list[LloydState]) -> list[LloydResult]:
    return [
        LloydResult(
            centers=state.centers,
            inertia=float(state.inertia),
            n_iter=state.n_iter,
            stop_reason=state.stop_reason,
            history=state.history,
            label_sums=state.final_sums,
            label_weights=state.final_weights,
        )
        for state in states
    ]


def _starting_states(
    X: da.Array,
    init_centers: list[np.ndarray] | None,
    states: list[LloydState] | None,
    stores: list[RowStore],
    max_iter: int,
) -> list[LloydState]:
    """Each run's state to start the loop from: new ones from the centers, or those saved."""
    if states is None:
        if init_centers is None:
            raise ValueError("lloyd_runs needs init_centers or states to continue")
        states = [LloydState(centers=np.asarray(c, dtype=X.dtype)) for c in init_centers]
    if len(stores) != len(states):
        raise ValueError(f"lloyd_runs got {len(states)} runs but {len(stores)} label stores")
    for state in states:
        if state.stop_reason is None and state.n_iter >= max_iter:
            state.stop_reason = MAX_ITER  # continued with a max_iter already reached
        if state.inertia is None and state.stop_reason == FIXED_POINT and state.exact_final:
            state.inertia = state.last_objective  # the last pass's labels are final
    return states


def _after_pass(
    state: LloydState,
    totals: ChunkStats,
    *,
    max_iter: int,
    dtype: np.dtype,
    metric: str,
    sum_terms: int,
) -> dict | None:
    """Take one run's pass: an iteration (its history record), or its final assignment (None).

    ``sum_terms``: the pass's :func:`sum_terms` (for :func:`update_centers`).

    With ``metric="cosine"`` the pass's objective, ``sum w ||x - c||²`` of unit
    rows and centers, is halved (exactly) into ``sum w (1 - cos)``.
    """
    if metric == "cosine":
        totals = dataclasses.replace(totals, objective=metric_objective(totals.objective, metric))
    if state.stop_reason is None:
        return _iterate(
            state, totals, max_iter=max_iter, dtype=dtype, metric=metric, sum_terms=sum_terms
        )
    # Stopped short of an exact fixed point: this pass made the labels match
    # the final centers (as scikit-learn does).
    state.keep_final(totals)
    state.final_pass = True
    check_objective(
        state.last_objective,
        state.inertia,
        dtype,
        state.n_iter,
        *_allowance(totals, state.centers),
    )
    return None


def _allowance(totals: ChunkStats, centers: np.ndarray) -> tuple[float, float]:
    """(scale, floor) of :func:`check_objective` for a pass's totals at ``centers``.

    scale: the centers' weighted squared norms. floor: where the squares are
    subnormal (data of 1e-160), each of a row's d squared deviations rounds
    by at most 1.5 of float64's least subnormal, 2^-1074, absolutely (the
    square, its weighting, its addition); two objectives of at most 2^53 rows
    differ by at most ``6 d 2^-1022`` from that. Far below any objective of
    normal terms.
    """
    with np.errstate(over="ignore"):  # inf beyond float64's range: no check then
        scale = float(totals.weights @ np.sum(centers.astype(np.float64) ** 2, axis=1))
    return scale, 8 * centers.shape[1] * float(np.finfo(np.float64).tiny)


def _iterate(
    state: LloydState,
    totals: ChunkStats,
    *,
    max_iter: int,
    dtype: np.dtype,
    metric: str,
    sum_terms: int,
) -> dict:
    """Move one run's centers to the means of a pass's totals; test for a stop.

    Updates ``state`` and returns the iteration's history record.
    """
    iteration = state.n_iter
    new_centers, n_reseeded = update_centers(totals, state.centers, metric, sum_terms=sum_terms)
    with np.errstate(over="ignore"):  # inf beyond float64's range (data of 1e154 and up)
        shift = float(np.sum((new_centers.astype(np.float64) - state.centers) ** 2))
    record = {
        "iteration": iteration + 1,
        "objective": totals.objective,
        "labels_changed": totals.changed,
        "center_shift": shift,
        "reseeded": n_reseeded,
    }
    check_objective(
        state.last_objective,
        totals.objective,
        dtype,
        iteration + 1,
        *_allowance(totals, state.centers),
    )
    state.history.append(record)
    state.n_iter = iteration + 1
    state.exact_final = bool(np.array_equal(new_centers, state.centers))
    state.centers = new_centers
    if totals.changed == 0:
        state.stop_reason = FIXED_POINT
        if state.exact_final:
            state.keep_final(totals)  # these labels are final
    elif state.tol_abs > 0 and shift <= state.tol_abs:
        # With tol = 0 only a fixed point stops: a shift of exactly 0 while labels
        # change (after a re-seeding, or moves of zero-weight rows) is a matter of
        # rounding, on which "bounded" could part from "lloyd"; the pass it saves
        # would be spent making the labels final anyway.
        state.stop_reason = TOL
    elif state.n_iter >= max_iter:
        state.stop_reason = MAX_ITER
    return record
