"""Lloyd's algorithm: the iteration loop, one pass over the data per iteration.

One pass (:func:`lloyd_pass`):

1. map :func:`dkmeans.kernel.block_stats` over the row blocks of X
   (``da.blockwise``), each task reading its block once and returning the
   block's :class:`~dkmeans.reduce.ChunkStats` plus its new labels (or
   writing them to the Zarr label store);
2. tree-reduce the stats with a fixed fan-in (:func:`dkmeans.reduce.tree_reduce`);
3. on the client, form the new means, re-seed empty clusters with the
   farthest points found in the same pass, and test convergence.

The loop (:func:`lloyd`) stops at an exact fixed point (no label changed), when
the total squared center shift is at most ``tol`` times the mean feature
variance (scikit-learn's meaning of ``tol``), or after ``max_iter`` passes.
After a stop that is not a fixed point, one more assignment pass makes the
labels consistent with the final centers, as scikit-learn does.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import dask
import dask.array as da
import numpy as np
from threadpoolctl import threadpool_limits

from dkmeans import kernel, progress, validation
from dkmeans.labels import LabelStore, ZarrBlockIO
from dkmeans.reduce import ChunkStats, tree_reduce

FIXED_POINT = "fixed point"
TOL = "tol"
MAX_ITER = "max_iter"


class ObjectiveIncreaseWarning(RuntimeWarning):
    """The objective rose between iterations by more than floating-point noise.

    Lloyd's steps can never raise the objective, so this means a bug: it is
    a warning rather than an error so that a long run still returns its
    result, and the test suite turns it into an error.
    """


@dataclass
class LloydResult:
    """What :func:`lloyd` found."""

    centers: np.ndarray  # (k, d), dtype of X
    inertia: float  # objective of the final labels w.r.t. the final centers
    n_iter: int  # Lloyd iterations run (the final assignment pass not counted)
    stop_reason: str  # FIXED_POINT, TOL or MAX_ITER
    history: list[dict] = field(default_factory=list)

    @property
    def converged(self) -> bool:
        return self.stop_reason != MAX_ITER


def _block_table(row_chunks: tuple[int, ...]) -> da.Array:
    """(block index, first row) per block, one block per row block of X."""
    starts = np.concatenate([[0], np.cumsum(row_chunks)[:-1]])
    table = np.stack([np.arange(len(row_chunks)), starts], axis=1).astype(np.int64)
    return da.from_array(table, chunks=(1, 2))


def map_row_blocks(
    func: Callable, X: da.Array, *row_arrays: da.Array | None, **kwargs
) -> da.Array:
    """Map ``func`` over the row blocks of X: one task per block, one object result each.

    ``func(x_parts, table_parts, *row_blocks, **kwargs)`` gets X's block and
    the block's (index, first row) as one-element lists (their column axis is
    contracted without concatenation), then the matching block of each of
    ``row_arrays`` (1-D, chunked like X's rows; None stays None). It returns a
    1-element object array. The result is a 1-D object dask array with one
    element per block, ready for :func:`dkmeans.reduce.reduce_blocks`.
    """
    row_args = []
    for array in row_arrays:
        row_args += [array, None if array is None else "i"]
    return da.blockwise(
        func,
        "i",
        X,
        "ij",
        _block_table(X.chunks[0]),
        "ib",
        *row_args,
        adjust_chunks={"i": 1},
        align_arrays=False,  # aligned by block index: each input has one block per row block
        concatenate=False,
        dtype=object,
        meta=np.empty((0,), dtype=object),
        **kwargs,
    )


def _pass_task(
    x_parts: list[np.ndarray],
    table_parts: list[np.ndarray],
    weights: np.ndarray | None,
    prev_labels: np.ndarray | None,
    *,
    centers: np.ndarray,
    block_io: ZarrBlockIO | None,
    label_dtype: np.dtype,
    first_pass: bool,
) -> np.ndarray:
    """One block of one pass; returns a 1-element object array (stats, labels).

    X and the block table come as one-element lists (their column axis is
    contracted without concatenation: it is a single chunk).
    """
    (x,), (table,) = x_parts, table_parts
    block, row_offset = (int(v) for v in table[0])
    if first_pass:  # the data do not change: checking them once is enough
        validation.check_finite_block(x, block, row_offset)
        if weights is not None:
            validation.check_weights_block(weights, block, row_offset)
    if block_io is not None:
        prev_labels = block_io.read(block, len(x))
    stats, labels = kernel.block_stats(
        x,
        centers,
        prev_labels=prev_labels,
        weights=weights,
        row_offset=row_offset,
        with_moments=first_pass,
    )
    labels = labels.astype(label_dtype)
    if block_io is not None:
        block_io.write(block, labels)
        labels = None
    out = np.empty(1, dtype=object)
    out[0] = (stats, labels)
    return out


def _labels_of(block: np.ndarray) -> np.ndarray:
    return block[0][1]


def lloyd_pass(
    X: da.Array,
    centers: np.ndarray,
    *,
    store: LabelStore,
    iteration: int,
    weights: da.Array | None = None,
    split_every: int = 8,
    first_pass: bool = False,
) -> ChunkStats:
    """Run one pass over X: assign every row, reduce the statistics.

    Parameters
    ----------
    X : dask.array.Array of shape (n, d)
        Float data, one chunk along columns.
    centers : ndarray of shape (k, d)
        Centers to assign to, in X's dtype.
    store : LabelStore
        Reads the previous labels and receives the new ones.
    iteration : int
        Index of this pass (selects the label buffers).
    weights : dask.array.Array of shape (n,), optional
        Sample weights chunked like X's rows.
    split_every : int
        Fan-in of the reduction tree.
    first_pass : bool
        Check the data for NaN/inf (and weights for sign) and compute the
        column moments.

    Returns
    -------
    ChunkStats
        The totals over all of X.
    """
    prev, block_io = store.pass_inputs(iteration)
    parts = map_row_blocks(
        _pass_task,
        X,
        weights,
        prev,
        centers=centers,
        block_io=block_io,
        label_dtype=store.dtype,
        first_pass=first_pass,
    )
    totals = tree_reduce(parts, split_every=split_every, n_farthest=len(centers))
    labels = None
    if store.returns_labels:
        labels = parts.map_blocks(
            _labels_of, chunks=(X.chunks[0],), dtype=store.dtype, meta=np.empty((0,), store.dtype)
        )
        # One graph run: labels stay persisted where they were computed.
        labels, totals = dask.persist(labels, totals)
    else:
        (totals,) = dask.persist(totals)
    progress.watch(totals)  # a progress bar under dask.distributed, when asked for
    totals = totals.compute()
    store.finish_pass(iteration, labels)
    return totals


def update_centers(totals: ChunkStats, centers: np.ndarray) -> tuple[np.ndarray, int]:
    """New centers = weighted means, with empty clusters re-seeded.

    An empty cluster (zero total weight) takes the farthest point still
    unused, in order of decreasing distance to its center, and that point's
    weight and coordinates leave its old cluster — scikit-learn's rule. A
    cluster left with zero weight keeps its previous center.

    Returns
    -------
    centers : ndarray of shape (k, d), in the dtype of ``centers``
    n_reseeded : int
    """
    sums = totals.sums.copy()
    weights = totals.weights.copy()
    empty = np.flatnonzero(weights == 0)
    far = totals.farthest
    n_reseeded = min(len(empty), len(far.sqdist))
    for cluster, i in zip(empty[:n_reseeded], range(n_reseeded), strict=True):
        w, point, old = far.weights[i], far.points[i], far.labels[i]
        sums[old] -= w * point
        weights[old] -= w
        sums[cluster] = w * point
        weights[cluster] = w
    new = centers.astype(np.float64)
    filled = weights > 0
    new[filled] = sums[filled] / weights[filled, None]
    return new.astype(centers.dtype), n_reseeded


def check_objective(previous: float, current: float, dtype: np.dtype, iteration: int) -> None:
    """Warn with :class:`ObjectiveIncreaseWarning` if the objective rose.

    The allowance for floating-point noise is ``sqrt(eps)`` of the data's
    dtype, relative: rounding a mean to the data's dtype raises the
    objective by a second-order amount only, far below this.
    """
    noise = np.sqrt(np.finfo(dtype).eps) * abs(previous)
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

    With the label store's latest buffer (``n_iter % 2``), this is what a
    checkpoint saves: continuing from it gives bitwise the same result as
    never stopping.
    """

    centers: np.ndarray  # (k, d), dtype of X: the centers the next pass assigns to
    n_iter: int = 0  # Lloyd iterations completed
    history: list[dict] = field(default_factory=list)
    tol_abs: float = 0.0  # tol x mean feature variance (known after the first pass)
    stop_reason: str | None = None  # set once the loop has stopped
    exact_final: bool = False  # did the last update leave the centers unchanged?

    @property
    def last_objective(self) -> float:
        return self.history[-1]["objective"] if self.history else np.inf


def lloyd(
    X: da.Array,
    init_centers: np.ndarray | None = None,
    *,
    store: LabelStore,
    weights: da.Array | None = None,
    max_iter: int = 300,
    tol: float = 1e-4,
    split_every: int = 8,
    on_iteration: Callable[[dict], None] | None = None,
    state: LloydState | None = None,
    on_state: Callable[[LloydState], None] | None = None,
) -> LloydResult:
    """Run Lloyd's algorithm from given centers, or continue a saved run.

    Parameters
    ----------
    X : dask.array.Array of shape (n, d)
        Float data, one chunk along columns.
    init_centers : ndarray of shape (k, d), optional
        Starting centers (when not continuing from ``state``).
    store : LabelStore
        Where labels are kept between passes (and read from afterwards).
        When continuing, it must hold the labels of ``state.n_iter`` passes.
    weights : dask.array.Array of shape (n,), optional
        Sample weights, chunked like X's rows.
    max_iter : int
        Largest number of Lloyd iterations.
    tol : float
        Stop when the total squared center shift is at most ``tol`` times
        the mean variance of the features.
    split_every : int
        Fan-in of the reduction tree.
    on_iteration : callable, optional
        Called with each iteration's history record as soon as it is known.
    state : LloydState, optional
        A saved run to continue instead of starting from ``init_centers``.
    on_state : callable, optional
        Called with the state after the initial centers are set, after every
        iteration, and when the loop stops (for checkpoints).

    Returns
    -------
    LloydResult
    """
    if state is None:
        if init_centers is None:
            raise ValueError("lloyd needs init_centers or a state to continue")
        state = LloydState(centers=np.asarray(init_centers, dtype=X.dtype))
        if on_state is not None:
            on_state(state)
    # Dask runs one block per thread; BLAS threads inside would oversubscribe
    # the cores. (Distributed workers already start with one BLAS thread.)
    with threadpool_limits(limits=1, user_api="blas"):
        while state.stop_reason is None and state.n_iter < max_iter:
            iteration = state.n_iter
            start = time.perf_counter()
            totals = lloyd_pass(
                X,
                state.centers,
                store=store,
                iteration=iteration,
                weights=weights,
                split_every=split_every,
                first_pass=iteration == 0,
            )
            if iteration == 0 and tol > 0:
                state.tol_abs = tol * float(np.mean(totals.moments.variance))
            new_centers, n_reseeded = update_centers(totals, state.centers)
            shift = float(np.sum((new_centers.astype(np.float64) - state.centers) ** 2))
            record = {
                "iteration": iteration + 1,
                "objective": totals.objective,
                "labels_changed": totals.changed,
                "center_shift": shift,
                "reseeded": n_reseeded,
                "seconds": time.perf_counter() - start,
            }
            check_objective(state.last_objective, totals.objective, X.dtype, iteration + 1)
            state.history.append(record)
            state.n_iter = iteration + 1
            state.exact_final = bool(np.array_equal(new_centers, state.centers))
            state.centers = new_centers
            if totals.changed == 0:
                state.stop_reason = FIXED_POINT
            elif shift <= state.tol_abs:
                state.stop_reason = TOL
            elif state.n_iter >= max_iter:
                state.stop_reason = MAX_ITER
            if on_state is not None:
                on_state(state)
            if on_iteration is not None:
                on_iteration(record)
        if state.stop_reason is None:  # continued with a max_iter already reached
            state.stop_reason = MAX_ITER

        if state.stop_reason == FIXED_POINT and state.exact_final:
            inertia = state.last_objective
        else:  # make the labels match the final centers (an assignment-only pass)
            totals = lloyd_pass(
                X,
                state.centers,
                store=store,
                iteration=state.n_iter,
                weights=weights,
                split_every=split_every,
            )
            inertia = totals.objective
            check_objective(state.last_objective, inertia, X.dtype, state.n_iter)
        return LloydResult(
            centers=state.centers,
            inertia=float(inertia),
            n_iter=state.n_iter,
            stop_reason=state.stop_reason,
            history=state.history,
        )
