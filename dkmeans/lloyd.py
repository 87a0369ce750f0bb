"""Lloyd's algorithm: the iteration loop, one pass over the data per iteration.

One pass (:func:`lloyd_pass`):

1. map :func:`dkmeans.kernel.block_stats` over the row blocks of X
   (``da.blockwise``), each task reading its block once and returning the
   block's :class:`~dkmeans.reduce.ChunkStats` plus its new labels (or
   writing them to the Zarr label store);
2. tree-reduce the stats with a fixed fan-in (:func:`dkmeans.reduce.tree_reduce`);
3. on the client, form the new means, re-seed empty clusters with the
   farthest points found in the same pass, and test convergence.

With Dask's threaded or synchronous scheduler and blocks already in memory
(NumPy input), steps 1-2 run here without building a graph
(:func:`_pass_in_process`): the same task per block, the same tree, bitwise
the same result, without the few milliseconds of a graph per pass.

The loop (:func:`lloyd`) stops at an exact fixed point (no label changed), when
the total squared center shift is at most ``tol`` times the mean feature
variance (scikit-learn's meaning of ``tol``), or after ``max_iter`` passes.
After a stop that is not a fixed point, one more assignment pass makes the
labels consistent with the final centers, as scikit-learn does.

Restarts (``n_init``) run together (:func:`lloyd_runs`): each task reads its
block once and runs the kernel for every run still going, and each run's
statistics are reduced in the same tree, so R runs cost one read of X per
pass and each ends bitwise as it would alone.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial

import dask.array as da
import numpy as np
from dask.layers import ArrayBlockIdDep, ArraySliceDep
from threadpoolctl import threadpool_limits

from dkmeans import io, kernel, progress, scheduling, validation
from dkmeans.labels import LabelStore, ZarrBlockIO, as_dask_array
from dkmeans.reduce import ChunkStats, tree_reduce, tree_reduce_in_process

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


def _on_row_block(
    x: np.ndarray,
    block_id: tuple[int, int],
    where: tuple[slice, slice],
    *row_blocks: np.ndarray | None,
    task: Callable,
    **kwargs,
) -> np.ndarray:
    """Call ``task`` on one row block; its result as the single element of a (1, 1) array."""
    out = np.empty((1, 1), dtype=object)
    out[0, 0] = task(x, int(block_id[0]), int(where[0].start), *row_blocks, **kwargs)
    return out


def map_row_blocks(
    func: Callable, X: da.Array, *row_arrays: da.Array | None, **kwargs
) -> da.Array:
    """Map ``func`` over the row blocks of X: one task per block, one object result each.

    ``func(x, block, row_offset, *row_blocks, **kwargs)`` gets X's block, the
    block's index and first row, then the matching block of each of
    ``row_arrays`` (1-D, chunked like X's rows; None stays None), and returns
    any object. The result is an (n_blocks, 1) object dask array with one
    element per block, ready for :func:`dkmeans.reduce.reduce_blocks`.

    X's single column chunk is an axis of the output (not contracted), so
    that Dask fuses the read of each block (a Zarr chunk, a dask task) into
    the task that uses it: a block is read where it is used, never stored or
    moved between workers on its own. The block's index and first row are
    constants of its task, not tasks of their own.
    """
    if X.numblocks[1] != 1:
        raise ValueError("map_row_blocks needs X in one chunk along columns")
    row_args = []
    for array in row_arrays:
        row_args += [array, None if array is None else "i"]
    return da.blockwise(
        _on_row_block,
        "ij",
        X,
        "ij",
        ArrayBlockIdDep(X.chunks),  # the block's index ...
        "ij",
        ArraySliceDep(X.chunks),  # ... and its rows: constants in its task, not tasks
        "ij",
        *row_args,
        adjust_chunks={"i": 1, "j": 1},
        align_arrays=False,  # aligned by block index: each input has one block per row block
        dtype=object,
        meta=np.empty((0, 0), dtype=object),
        task=func,
        **kwargs,
    )


def _pass_task(
    x: np.ndarray,
    block: int,
    row_offset: int,
    weights: np.ndarray | None,
    *prev_labels: np.ndarray | None,
    centers: list[np.ndarray],
    block_ios: list[ZarrBlockIO | None],
    label_dtype: np.dtype,
    first_pass: bool,
) -> list[tuple[ChunkStats, np.ndarray | None]]:
    """One block of one pass for every run: a (stats, labels) pair per run.

    The block is read once and assigned to each run's centers in turn.
    """
    if first_pass:  # the data do not change: checking them once is enough
        validation.check_finite_block(x, block, row_offset)
        if weights is not None:
            validation.check_weights_block(weights, block, row_offset)
    results = []
    for run, (run_centers, prev, block_io) in enumerate(
        zip(centers, prev_labels, block_ios, strict=True)
    ):
        if block_io is not None:
            prev = block_io.read(block, len(x))
        stats, labels = kernel.block_stats(
            x,
            run_centers,
            prev_labels=prev,
            weights=weights,
            row_offset=row_offset,
            with_moments=first_pass and run == 0,  # the same for every run
            label_dtype=label_dtype,
        )
        if not first_pass and not np.isfinite(stats.objective):
            # The block was finite in the first pass: this read returned other
            # data (storage fault). Name the block and row rather than go on.
            validation.check_finite_block(x, block, row_offset)
        if block_io is not None:
            block_io.write(block, labels)
            labels = None
        results.append((stats, labels))
    return results


def _labels_of(block: np.ndarray, run: int) -> np.ndarray:
    return block.item()[run][1]


def lloyd_pass(
    X: da.Array,
    centers: list[np.ndarray],
    *,
    stores: list[LabelStore],
    iteration: int,
    weights: da.Array | None = None,
    split_every: int = 8,
    first_pass: bool = False,
    retries: int = 0,
) -> list[ChunkStats]:
    """Run one pass over X for one or more runs: assign every row, reduce the statistics.

    Each block is read once whatever the number of runs; every run gets its
    own labels and statistics, bitwise the same as if it ran alone.

    Parameters
    ----------
    X : dask.array.Array of shape (n, d)
        Float data, one chunk along columns.
    centers : list of ndarray of shape (k, d)
        Each run's centers, in X's dtype.
    stores : list of LabelStore
        Each run's label store: reads its previous labels, receives the new ones.
    iteration : int
        Index of this pass (selects the label buffers); the same for every run.
    weights : dask.array.Array of shape (n,), optional
        Sample weights chunked like X's rows.
    split_every : int
        Fan-in of the reduction tree.
    first_pass : bool
        Check the data for NaN/inf (and weights for sign) and compute the
        column moments (reported with the first run's totals).
    retries : int
        Times a failed pass (or task, under dask.distributed) is run again;
        see :mod:`dkmeans.scheduling`.

    Returns
    -------
    list of ChunkStats
        Each run's totals over all of X.
    """
    inputs = [store.pass_inputs(iteration) for store in stores]
    threads = scheduling.in_process_threads()
    in_memory = None if threads is None else _in_memory(X, weights, [prev for prev, _ in inputs])
    if in_memory is not None:  # no graph: the same pass, run here (scheduling.py)
        run_pass = partial(
            _pass_in_process,
            *in_memory,
            row_chunks=X.chunks[0],
            centers=centers,
            stores=stores,
            block_ios=[block_io for _, block_io in inputs],
            iteration=iteration,
            split_every=split_every,
            first_pass=first_pass,
            threads=threads,
        )
        return scheduling.retry_io_errors(run_pass, retries)  # label store writes may fail
    parts = map_row_blocks(
        _pass_task,
        X,
        weights,
        *(as_dask_array(prev) for prev, _ in inputs),
        centers=centers,
        block_ios=[block_io for _, block_io in inputs],
        label_dtype=stores[0].dtype,
        first_pass=first_pass,
    )
    totals = tree_reduce(parts, split_every=split_every, n_farthest=len(centers[0]))
    labels = [
        parts.map_blocks(
            _labels_of,
            run=run,
            chunks=(X.chunks[0],),
            drop_axis=1,
            dtype=store.dtype,
            meta=np.empty((0,), store.dtype),
        )
        if store.returns_labels
        else None
        for run, store in enumerate(stores)
    ]
    # One graph run: labels stay persisted where they were computed.
    labels, totals = scheduling.persist(labels, totals, retries=retries)
    progress.watch(totals)  # a progress bar under dask.distributed, when asked for
    totals = totals.compute().runs
    for store, run_labels in zip(stores, labels, strict=True):
        store.finish_pass(iteration, run_labels)
    return totals


def _pass_in_process(
    x_blocks: list[np.ndarray],
    weight_blocks: list[np.ndarray] | None,
    prev_blocks: list[list[np.ndarray] | None],
    *,
    row_chunks: tuple[int, ...],
    centers: list[np.ndarray],
    stores: list[LabelStore],
    block_ios: list[ZarrBlockIO | None],
    iteration: int,
    split_every: int,
    first_pass: bool,
    threads: int,
) -> list[ChunkStats]:
    """:func:`lloyd_pass` on blocks already in memory, run here on ``threads`` threads.

    The same task per block and the same reduction tree as the Dask graph,
    so bitwise the same result, without the graph's fixed cost.
    """
    starts = np.concatenate([[0], np.cumsum(row_chunks[:-1])]).astype(np.int64)

    def run_block(block: int) -> list[tuple]:
        return _pass_task(
            x_blocks[block],
            block,
            int(starts[block]),
            None if weight_blocks is None else weight_blocks[block],
            *(None if blocks is None else blocks[block] for blocks in prev_blocks),
            centers=centers,
            block_ios=block_ios,
            label_dtype=stores[0].dtype,
            first_pass=first_pass,
        )

    elements = scheduling.map_in_process(run_block, range(len(x_blocks)), threads)
    totals = tree_reduce_in_process(elements, split_every=split_every, n_farthest=len(centers[0]))
    for run, store in enumerate(stores):
        labels = [element[run][1] for element in elements] if store.returns_labels else None
        store.finish_pass(iteration, labels)
    return totals.runs


def _in_memory(
    X: da.Array,
    weights: da.Array | None,
    previous_labels: list[da.Array | list[np.ndarray] | None],
) -> tuple[list, list | None, list] | None:
    """The blocks of X, weights and each run's previous labels, if all are in memory.

    Then a pass can run here without a graph (see :mod:`dkmeans.scheduling`).
    Previous labels may already be a list of NumPy blocks (left by such a pass).
    """
    inputs = [X, weights, *previous_labels]
    blocks = [
        array if array is None or isinstance(array, list) else io.in_memory_blocks(array)
        for array in inputs
    ]
    if any(got is None and array is not None for got, array in zip(blocks, inputs, strict=True)):
        return None
    return blocks[0], blocks[1], blocks[2:]


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

    @property
    def label_passes(self) -> int:
        """Passes whose labels the run's label store has received."""
        return self.n_iter + int(self.final_pass)

    @property
    def last_objective(self) -> float:
        return self.history[-1]["objective"] if self.history else np.inf


class _OneBlasThread:
    """One BLAS thread while fits run in this process; the user's setting restored after.

    Dask runs one block per thread, and BLAS threads inside each would
    oversubscribe the cores (distributed workers already start with one).
    Fits running at once from several threads share the limit: the first to
    start sets it, the last to finish restores the original setting.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fits = 0
        self._limits: threadpool_limits | None = None

    @contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if self._fits == 0:
                self._limits = threadpool_limits(limits=1, user_api="blas")
            self._fits += 1
        try:
            yield
        finally:
            with self._lock:
                self._fits -= 1
                if self._fits == 0:
                    self._limits.restore_original_limits()


one_blas_thread = _OneBlasThread()


def lloyd(
    X: da.Array,
    init_centers: np.ndarray,
    *,
    store: LabelStore,
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
    store : LabelStore
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
    stores: list[LabelStore],
    weights: da.Array | None = None,
    max_iter: int = 300,
    tol: float = 1e-4,
    split_every: int = 8,
    on_iteration: Callable[[int, dict], None] | None = None,
    states: list[LloydState] | None = None,
    on_pass: Callable[[list[LloydState]], None] | None = None,
    retries: int = 0,
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
    stores : list of LabelStore
        Each run's label store. When continuing, run r's store must hold the
        labels of ``states[r].label_passes`` passes.
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
        Called with (run index, history record) as soon as a run's iteration
        is known.
    states : list of LloydState, optional
        Saved runs to continue instead of starting from ``init_centers``.
    on_pass : callable, optional
        Called with every run's state once the initial centers are set and
        after every pass (for checkpoints: continuing from the states it
        saw ends bitwise as if never stopped).
    retries : int
        Times a failed pass (or task, under dask.distributed) is run again;
        see :mod:`dkmeans.scheduling`.

    Returns
    -------
    list of LloydResult, one per run
    """
    if states is None:
        if init_centers is None:
            raise ValueError("lloyd_runs needs init_centers or states to continue")
        states = [LloydState(centers=np.asarray(c, dtype=X.dtype)) for c in init_centers]
        if on_pass is not None:
            on_pass(states)
    if len(stores) != len(states):
        raise ValueError(f"lloyd_runs got {len(states)} runs but {len(stores)} label stores")
    for state in states:
        if state.stop_reason is None and state.n_iter >= max_iter:
            state.stop_reason = MAX_ITER  # continued with a max_iter already reached
        if state.inertia is None and state.stop_reason == FIXED_POINT and state.exact_final:
            state.inertia = state.last_objective  # the last pass's labels are final

    with one_blas_thread():
        while active := [run for run, state in enumerate(states) if state.inertia is None]:
            iteration = states[active[0]].n_iter
            if any(states[run].n_iter != iteration for run in active):
                raise ValueError("the runs to continue are not all at the same iteration")
            start = time.perf_counter()
            totals = lloyd_pass(
                X,
                [states[run].centers for run in active],
                stores=[stores[run] for run in active],
                iteration=iteration,
                weights=weights,
                split_every=split_every,
                first_pass=iteration == 0,
                retries=retries,
            )
            seconds = time.perf_counter() - start
            if iteration == 0 and tol > 0:
                tol_abs = tol * float(np.mean(totals[0].moments.variance))
                for run in active:
                    states[run].tol_abs = tol_abs
            records = {}
            for run, run_totals in zip(active, totals, strict=True):
                state = states[run]
                if state.stop_reason is None:
                    records[run] = _iterate(state, run_totals, max_iter=max_iter, dtype=X.dtype)
                    records[run]["seconds"] = seconds
                else:
                    # Stopped short of an exact fixed point: this pass made the
                    # labels match the final centers (as scikit-learn does).
                    state.inertia = run_totals.objective
                    state.final_pass = True
                    check_objective(state.last_objective, state.inertia, X.dtype, iteration)
            if on_pass is not None:
                on_pass(states)
            if on_iteration is not None:
                for run, record in records.items():
                    on_iteration(run, record)
    return [
        LloydResult(
            centers=state.centers,
            inertia=float(state.inertia),
            n_iter=state.n_iter,
            stop_reason=state.stop_reason,
            history=state.history,
        )
        for state in states
    ]


def _iterate(state: LloydState, totals: ChunkStats, *, max_iter: int, dtype: np.dtype) -> dict:
    """Move one run's centers to the means of a pass's totals; test for a stop.

    Updates ``state`` and returns the iteration's history record.
    """
    iteration = state.n_iter
    new_centers, n_reseeded = update_centers(totals, state.centers)
    shift = float(np.sum((new_centers.astype(np.float64) - state.centers) ** 2))
    record = {
        "iteration": iteration + 1,
        "objective": totals.objective,
        "labels_changed": totals.changed,
        "center_shift": shift,
        "reseeded": n_reseeded,
    }
    check_objective(state.last_objective, totals.objective, dtype, iteration + 1)
    state.history.append(record)
    state.n_iter = iteration + 1
    state.exact_final = bool(np.array_equal(new_centers, state.centers))
    state.centers = new_centers
    if totals.changed == 0:
        state.stop_reason = FIXED_POINT
        if state.exact_final:
            state.inertia = totals.objective  # these labels are final
    elif shift <= state.tol_abs:
        state.stop_reason = TOL
    elif state.n_iter >= max_iter:
        state.stop_reason = MAX_ITER
    return record
